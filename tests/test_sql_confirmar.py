"""Early lock release, in SQL: api.transacao commits without waiting for the
WAL flush, and api.confirmar, which the API calls before it answers, makes the
WAL durable past every earlier commit. Each test counts what reached the disk
(pg_stat_wal.wal_sync, the WAL positions), not only what the calls return."""

import json
import time

import psycopg
import pytest

N = 40
CORPO = json.dumps({"valor": 1, "tipo": "c", "descricao": "confirmar"})


def wal_sync(db):
    return db.execute("select wal_sync from pg_stat_wal").fetchone()[0]


def sessao_da_api(stack, db, chamadas):
    """Runs `chamadas(conn)` in a new session of the API role, then closes it
    and waits for its backend to exit, which reports its WAL statistics.
    Returns how many WAL syncs the cluster made meanwhile."""
    antes = wal_sync(db)
    with psycopg.connect(stack.dsn("crebito_api"), autocommit=True) as conn:
        pid = conn.info.backend_pid
        chamadas(conn)
    fim = time.monotonic() + 10
    while db.execute("select count(*) from pg_stat_activity where pid = %s", [pid]).fetchone()[0]:
        assert time.monotonic() < fim, "the backend did not exit"
        time.sleep(0.01)
    return wal_sync(db) - antes


def lsn(db, funcao):
    return db.execute(f"select pg_{funcao}_lsn() - '0/0'::pg_lsn").fetchone()[0]


def test_transacao_desliga_a_espera_so_ate_o_seu_commit(api_db):
    """set_config in the body (not a SET clause, undone when the function
    returns) keeps synchronous_commit off until this transaction commits."""
    with api_db.transaction():
        assert api_db.execute("select status from api.transacao(1, %s)", [CORPO]).fetchone() == (200,)
        assert api_db.execute("select current_setting('synchronous_commit')").fetchone() == ("off",)
    assert api_db.execute("select current_setting('synchronous_commit')").fetchone() == ("on",)
    with api_db.transaction():
        api_db.execute("select status from api.extrato(1)")
        api_db.execute("select descarregou from api.confirmar(1)")
        assert api_db.execute("select current_setting('synchronous_commit')").fetchone() == ("on",)


def test_cada_transacao_seguida_de_confirmar_espera_o_disco(stack, db):
    """One session writing N times in a row, confirming each: N syncs, one per
    write (none of them shared: nothing else writes). Without api.confirmar
    the same writes wait for no sync: their commits released the lock first."""

    def com_confirmar(conn):
        for _ in range(N):
            assert conn.execute("select status from api.transacao(2, %s)", [CORPO]).fetchone() == (200,)
            assert conn.execute("select descarregou from api.confirmar(2)").fetchone() == (True,)

    def sem_confirmar(conn):
        for _ in range(N):
            assert conn.execute("select status from api.transacao(2, %s)", [CORPO]).fetchone() == (200,)

    assert sessao_da_api(stack, db, com_confirmar) >= N
    # Only the WAL writer's periodic flushes (every wal_writer_delay).
    assert sessao_da_api(stack, db, sem_confirmar) < N // 2
    assert db.execute("select saldo from crebito.cliente where id = 2").fetchone() == (2 * N,)


def test_confirmar_descarrega_tudo_o_que_veio_antes(api_db, db):
    api_db.execute("select status from api.transacao(3, %s)", [CORPO])
    inserido = lsn(db, "current_wal_insert")
    api_db.execute("select descarregou from api.confirmar(3)")
    assert lsn(db, "current_wal_flush") >= inserido


def test_confirmar_sem_nada_pendente_nao_escreve(api_db, db):
    """Cheap when idle: with the WAL already flushed it takes no xid, writes
    no WAL and makes no sync."""
    api_db.execute("select descarregou from api.confirmar(1)")
    proximo_xid = "select pg_snapshot_xmax(pg_current_snapshot())::text"
    antes = (db.execute(proximo_xid).fetchone()[0], lsn(db, "current_wal_insert"))
    assert api_db.execute("select descarregou from api.confirmar(1)").fetchone() == (False,)
    assert (db.execute(proximo_xid).fetchone()[0], lsn(db, "current_wal_insert")) == antes


@pytest.mark.parametrize("cliente", [1, 6, -1])
def test_confirmar_aceita_qualquer_cliente(api_db, cliente):
    """The client only says which node to run on; any id is accepted."""
    assert api_db.execute("select descarregou from api.confirmar(%s)", [cliente]).fetchone()[0] in (True, False)
