"""Early lock release, in SQL. api.transacao commits without waiting for the
WAL flush only when another writer of the same client is waiting for its row
lock, and then says so (`duravel` false): api.confirmar, which the API calls
before it answers such a call, makes the WAL durable past every earlier
commit. Every other call's commit waits for the flush past what it saw. Each
test counts what reached the disk (pg_stat_wal.wal_sync, the WAL positions),
not only what the calls return."""

import json
import threading

import psycopg
import pytest
from conftest import esperar

N = 40
CORPO = json.dumps({"valor": 1, "tipo": "c", "descricao": "confirmar"})
# What each writer of a client holds while in flight (api.transacao's em_voo).
EM_VOO = "select pg_advisory_xact_lock_shared(1, %s)"


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
    assert esperar(
        lambda: not db.execute("select count(*) from pg_stat_activity where pid = %s", [pid]).fetchone()[0],
        passo=0.01,
    ), "the backend did not exit"
    return wal_sync(db) - antes


def lsn(db, funcao):
    return db.execute(f"select pg_{funcao}_lsn() - '0/0'::pg_lsn").fetchone()[0]


def escrever(conn, cliente):
    return conn.execute("select status, duravel from api.transacao(%s, %s)", [cliente, CORPO]).fetchone()


@pytest.fixture
def outro_escritor_em_voo(stack):
    """Another writer of client 2 in flight, as api.transacao marks one."""
    with psycopg.connect(stack.dsn(), autocommit=True) as conn:
        with conn.transaction():
            conn.execute(EM_VOO, [2])
            yield


def test_sozinha_a_escrita_espera_o_seu_flush(stack, db):
    """With no other writer of the client in flight, each write's own commit
    waits for the disk: N syncs for N writes, and no confirmation needed."""

    def sozinha(conn):
        for _ in range(N):
            assert escrever(conn, 2) == (200, True)

    assert sessao_da_api(stack, db, sozinha) >= N
    assert db.execute("select saldo from crebito.cliente where id = 2").fetchone() == (N,)


def test_com_outro_na_fila_o_commit_nao_espera_o_disco(stack, db, outro_escritor_em_voo):
    """With another writer in flight, the commit releases the row lock without
    waiting for the disk, and says so; api.confirmar then waits for it."""

    def sem_confirmar(conn):
        for _ in range(N):
            assert escrever(conn, 2) == (200, False)

    def com_confirmar(conn):
        for _ in range(N):
            assert escrever(conn, 2) == (200, False)
            assert conn.execute("select descarregou from api.confirmar(2)").fetchone() == (True,)

    # Only the WAL writer's periodic flushes (every wal_writer_delay).
    assert sessao_da_api(stack, db, sem_confirmar) < N // 2
    assert sessao_da_api(stack, db, com_confirmar) >= N
    assert db.execute("select saldo from crebito.cliente where id = 2").fetchone() == (2 * N,)


def test_o_ajuste_dura_so_ate_o_commit(api_db, outro_escritor_em_voo):
    """set_config in the body (not a SET clause, undone when the function
    returns) keeps the choice until this transaction commits, and no longer."""
    with api_db.transaction():
        assert escrever(api_db, 2) == (200, False)
        assert api_db.execute("select current_setting('synchronous_commit')").fetchone() == ("off",)
    assert api_db.execute("select current_setting('synchronous_commit')").fetchone() == ("on",)
    with api_db.transaction():
        assert escrever(api_db, 1) == (200, True)
        assert api_db.execute("select current_setting('synchronous_commit')").fetchone() == ("on",)


def test_escritores_concorrentes_de_um_cliente(stack, db):
    """Real contention: writers of one client queue on its row lock. Those that
    found another in flight committed without waiting for the disk, those
    that found none waited for it. Every balance answered is one of a single
    chain."""
    threads, escritas = 8, 40
    duraveis = []
    saldos = []

    def escritor():
        with psycopg.connect(stack.dsn("crebito_api"), autocommit=True) as conn:
            for _ in range(escritas):
                status, resposta, duravel = conn.execute(
                    "select status, resposta, duravel from api.transacao(1, %s)", [CORPO]
                ).fetchone()
                assert status == 200
                if not duravel:
                    conn.execute("select api.confirmar(1)")
                duraveis.append(duravel)
                saldos.append(json.loads(resposta)["saldo"])

    todos = [threading.Thread(target=escritor) for _ in range(threads)]
    for t in todos:
        t.start()
    for t in todos:
        t.join()
    assert sorted(saldos) == list(range(1, threads * escritas + 1))
    assert True in duraveis and False in duraveis


DEBITO_GRANDE = json.dumps({"valor": 10**6, "tipo": "d", "descricao": "grande"})
# Calls that answer from what they read and write nothing: status, SQL, parameters.
LEITURAS = {
    "extrato": (200, "select status, duravel from api.extrato(2)", []),
    "cliente inexistente": (404, "select status, duravel from api.extrato(6)", []),
    "debito recusado": (422, "select status, duravel from api.transacao(2, %s)", [DEBITO_GRANDE]),
    "corpo invalido": (422, "select status, duravel from api.transacao(2, '{}')", []),
}
# A repeated key answers from what it read too, but under the row lock, which
# writes a lock record: its commit then waits for the flush by itself.
REPETIDA = (200, "select status, duravel from api.transacao(2, %s, 'k1')", [CORPO])


def commit_sem_espera(db, cliente):
    """A change to the client committed without waiting for the disk, marked
    as api.transacao marks one."""
    db.execute("set synchronous_commit = off")
    db.execute("update crebito.cliente set assincrono = true where id = %s", [cliente])
    db.execute("reset synchronous_commit")


DO_CLIENTE_2 = {nome: chamada for nome, chamada in LEITURAS.items() if nome != "cliente inexistente"}


@pytest.mark.parametrize("chamada", [*DO_CLIENTE_2.values(), REPETIDA], ids=[*DO_CLIENTE_2, "chave repetida"])
def test_leitura_apos_commit_sem_espera_descarrega(api_db, db, chamada):
    """A call that shows a change committed without waiting for the disk
    commits only after the WAL is flushed past it."""
    status, sql, params = chamada
    assert api_db.execute(REPETIDA[1], REPETIDA[2]).fetchone() == (200, True)
    commit_sem_espera(db, 2)
    inserido = lsn(db, "current_wal_insert")
    assert api_db.execute(sql, params).fetchone() == (status, True)
    assert lsn(db, "current_wal_flush") >= inserido


def test_leitura_de_outro_cliente_nao_espera_o_disco(stack, db):
    """Only the client's own row tells a read to wait: a change to another
    client, committed without waiting, makes the read write nothing."""

    def ler(conn):
        for _ in range(N):
            commit_sem_espera(db, 3)
            for _, sql, params in LEITURAS.values():
                assert conn.execute(sql, params).fetchone()[1] is True

    # Only the WAL writer's periodic flushes (every wal_writer_delay).
    assert sessao_da_api(stack, db, ler) < N // 2


@pytest.mark.parametrize("chamada", LEITURAS.values(), ids=list(LEITURAS))
def test_leitura_de_mudanca_ja_duravel_nao_escreve(api_db, db, chamada):
    """A call that writes nothing and shows only changes whose commits waited
    for the disk takes no xid: its commit has nothing to flush. (Reading a
    page may still prune it, which writes WAL that no commit waits for.)"""
    status, sql, params = chamada
    proximo_xid = "select pg_snapshot_xmax(pg_current_snapshot())::text"
    antes = db.execute(proximo_xid).fetchone()[0]
    assert api_db.execute(sql, params).fetchone() == (status, True)
    assert db.execute(proximo_xid).fetchone()[0] == antes


def test_confirmar_descarrega_tudo_o_que_veio_antes(api_db, db, outro_escritor_em_voo):
    assert escrever(api_db, 2) == (200, False)
    inserido = lsn(db, "current_wal_insert")
    assert api_db.execute("select descarregou from api.confirmar(2)").fetchone() == (True,)
    assert lsn(db, "current_wal_flush") >= inserido


def test_confirmar_sem_nada_pendente_nao_escreve(api_db, db):
    api_db.execute("select descarregou from api.confirmar(1)")
    proximo_xid = "select pg_snapshot_xmax(pg_current_snapshot())::text"
    antes = (db.execute(proximo_xid).fetchone()[0], lsn(db, "current_wal_insert"))
    assert api_db.execute("select descarregou from api.confirmar(1)").fetchone() == (False,)
    assert (db.execute(proximo_xid).fetchone()[0], lsn(db, "current_wal_insert")) == antes


@pytest.mark.parametrize("cliente", [1, 6, -1])
def test_confirmar_aceita_qualquer_cliente(api_db, cliente):
    """The client only says which node to run on; any id is accepted."""
    assert api_db.execute("select descarregou from api.confirmar(%s)", [cliente]).fetchone()[0] in (True, False)
