"""Early lock release over HTTP: every answer leaves only after the WAL is
flushed past what it reports, whether the call's own commit waited for it or
the API then called api.confirmar. Counted with pg_stat_wal.wal_sync, which each
backend reports when it exits: the API's sessions are ended around the
requests (the workers reconnect before their next statement)."""

import psycopg
from conftest import esperar, sessoes_da_api

N = 30


def encerrar_sessoes_da_api(db):
    pids = [pid for pid, _, _ in sessoes_da_api(db)]
    for pid in pids:
        db.execute("select pg_terminate_backend(%s)", [pid])
    assert esperar(
        lambda: not db.execute("select count(*) from pg_stat_activity where pid = any(%s)", [pids]).fetchone()[0],
        passo=0.01,
    ), "the API's sessions did not exit"


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


def test_com_outro_escritor_em_voo_cada_200_esperou_a_confirmacao(http, db):
    """While another writer of client 1 is in flight (held here as
    api.transacao marks one), each write commits without waiting for the
    disk; the API must then call api.confirmar before it answers."""

    def escrever():
        for i in range(N):
            r = http.transacao(1, 1, "c", f"fila{i}")
            assert r.status == 200, r.corpo
            assert r.json["saldo"] == i + 1

    with psycopg.connect(http.dsn(), autocommit=True) as outro, outro.transaction():
        outro.execute("select pg_advisory_xact_lock_shared(1, 1)")
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
    """A change committed without waiting (marked as api.transacao marks one,
    here with no confirmation after it) is flushed before any answer that
    could show it."""
    db.execute("select pg_catalog.set_config('synchronous_commit', 'off', false)")

    def ler_apos_commit_assincrono():
        for i in range(N):
            db.execute("update crebito.cliente set assincrono = true where id = 2")
            if i % 2:
                assert http.extrato(2).status == 200
            else:
                assert http.transacao(2, 10**9, "d", "grande").status == 422

    assert syncs_durante(db, ler_apos_commit_assincrono) >= N
