"""Early lock release over HTTP: every answer leaves only after the WAL is
flushed past what it reports. Counted with pg_stat_wal.wal_sync, which each
backend reports when it exits: the API's sessions are ended around the
requests (the workers reconnect before their next statement)."""

import time

N = 30


def encerrar_sessoes_da_api(db):
    pids = [
        pid
        for (pid,) in db.execute(
            "select pid from pg_stat_activity where usename = 'crebito_api' and application_name = 'crebito'"
        )
    ]
    for pid in pids:
        db.execute("select pg_terminate_backend(%s)", [pid])
    fim = time.monotonic() + 10
    while db.execute("select count(*) from pg_stat_activity where pid = any(%s)", [pids]).fetchone()[0]:
        assert time.monotonic() < fim, "the API's sessions did not exit"
        time.sleep(0.01)


def syncs_durante(db, pedidos):
    encerrar_sessoes_da_api(db)
    antes = db.execute("select wal_sync from pg_stat_wal").fetchone()[0]
    pedidos()
    encerrar_sessoes_da_api(db)
    return db.execute("select wal_sync from pg_stat_wal").fetchone()[0] - antes


def test_cada_200_esperou_o_seu_flush(http, db):
    """One client writing N times in a row: each answer waited for a sync of
    the WAL (a bare xid in the confirming transaction would make none)."""

    def escrever():
        for i in range(N):
            r = http.transacao(1, 1, "c", f"seq{i}")
            assert r.status == 200, r.corpo
            assert r.json["saldo"] == i + 1

    assert syncs_durante(db, escrever) >= N


def test_extrato_sem_nada_pendente_nao_espera_o_disco(http, db):
    http.transacao(1, 1, "c", "antes")

    def ler():
        for _ in range(N):
            assert http.extrato(1).json["saldo"]["total"] == 1

    # Nothing to flush: the confirmation writes nothing (at most a stray
    # flush of background WAL, e.g. autovacuum's).
    assert syncs_durante(db, ler) < N // 3


def test_422_e_extrato_depois_de_escrita_nao_confirmada_esperam_o_disco(http, db):
    """A commit made without waiting (as api.transacao makes them, here with no
    confirmation after it) is flushed before any answer that could show it."""
    db.execute("select pg_catalog.set_config('synchronous_commit', 'off', false)")

    def ler_apos_commit_assincrono():
        for i in range(N):
            db.execute("update crebito.cliente set saldo = saldo where id = 2")
            if i % 2:
                assert http.extrato(2).status == 200
            else:
                assert http.transacao(2, 10**9, "d", "grande").status == 422

    assert syncs_durante(db, ler_apos_commit_assincrono) >= N
