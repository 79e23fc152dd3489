"""Least privilege: the API's database role can do nothing but EXECUTE the
functions of schema `api`, and a failure never shows SQL or Python internals
to a client, while the server side still records it."""

import json
import os
import socket
import threading
import time

import psycopg
import pytest
from conftest import esperar, sessoes_da_api
from psycopg import errors

TABELAS = {
    "cliente": {
        "select": "select * from crebito.cliente",
        "insert": "insert into crebito.cliente (id, limite) values (9, 1)",
        "update": "update crebito.cliente set saldo = 1",
        "delete": "delete from crebito.cliente",
        "truncate": "truncate crebito.cliente cascade",
    },
    "transacao": {
        "select": "select * from crebito.transacao",
        "insert": "insert into crebito.transacao (cliente_id, valor, tipo, descricao) values (1, 1, 'c', 'x')",
        "update": "update crebito.transacao set valor = 1",
        "delete": "delete from crebito.transacao",
        "truncate": "truncate crebito.transacao cascade",
    },
    "idempotencia": {
        "select": "select * from crebito.idempotencia",
        "insert": "insert into crebito.idempotencia (cliente_id, chave, pedido, status, resposta)"
        " values (1, 'k', '{}', 200, '{}')",
        "update": "update crebito.idempotencia set status = 200",
        "delete": "delete from crebito.idempotencia",
        "truncate": "truncate crebito.idempotencia",
    },
}

CRIACOES = {
    "tabela em api": "create table api.intrusa (i int)",
    "funcao em api": "create function api.intrusa() returns int language sql return 1",
    "view em api": "create view api.intrusa as select 1",
    "tabela em crebito": "create table crebito.intrusa (i int)",
    "funcao em crebito": "create function crebito.intrusa() returns int language sql return 1",
    "tabela em public": "create table public.intrusa (i int)",
    "schema": "create schema intruso",
}

# Things that must never reach a client: SQL error text, plpgsql context, Python tracebacks.
VAZAMENTOS = ["ERROR", "FATAL", "SQLSTATE", "CONTEXT", "plpgsql", "Traceback", "psycopg", "crebito.", "api.", "line "]


def tentar(conn, sql):
    with pytest.raises(errors.InsufficientPrivilege):
        conn.execute(sql)


@pytest.mark.parametrize("tabela,operacao", [(t, o) for t, ops in TABELAS.items() for o in ops])
def test_api_nao_toca_tabelas(api_db, db, tabela, operacao):
    tentar(api_db, TABELAS[tabela][operacao])
    assert db.execute("select count(*), sum(saldo) from crebito.cliente").fetchone() == (5, 0)


@pytest.mark.parametrize("sql", list(CRIACOES.values()), ids=list(CRIACOES))
def test_api_nao_cria_objetos(api_db, sql):
    tentar(api_db, sql)


@pytest.mark.parametrize("chamada", ["select crebito.json_ou_nulo('{}')", "select crebito.erro('x')"])
def test_api_nao_executa_internas(api_db, chamada):
    tentar(api_db, chamada)


def test_api_executa_so_as_funcoes_de_api(api_db, db):
    funcoes = db.execute(
        "select n.nspname, p.proname, has_function_privilege('crebito_api', p.oid, 'execute')"
        " from pg_proc as p join pg_namespace as n on n.oid = p.pronamespace"
        " where n.nspname in ('api', 'crebito')"
    ).fetchall()
    assert {(s, f) for s, f, _ in funcoes} >= {
        ("api", "transacao"),
        ("api", "extrato"),
        ("api", "confirmar"),
        ("api", "auditoria"),
        ("crebito", "json_ou_nulo"),
        ("crebito", "erro"),
    }
    for schema, funcao, pode in funcoes:
        assert pode == (schema == "api"), (schema, funcao)
    # And those it may execute work.
    assert api_db.execute("select status from api.extrato(1)").fetchone() == (200,)
    corpo = '{"valor": 1, "tipo": "c", "descricao": "priv"}'
    assert api_db.execute("select status from api.transacao(1, %s)", [corpo]).fetchone() == (200,)
    assert api_db.execute("select count(*) from api.auditoria()").fetchone() == (0,)
    assert api_db.execute("select count(*) from api.confirmar(1)").fetchone() == (1,)


def test_papel_da_api_nao_tem_poderes(db):
    papel = db.execute(
        "select rolsuper, rolcreaterole, rolcreatedb, rolreplication, rolbypassrls from pg_roles"
        " where rolname = 'crebito_api'"
    ).fetchone()
    assert papel == (False, False, False, False, False)
    assert db.execute(
        "select count(*) from pg_auth_members as m join pg_roles as r on r.oid = m.member"
        " where r.rolname = 'crebito_api'"
    ).fetchone() == (0,)
    # A stuck request cannot hold a worker forever.
    assert (
        "statement_timeout=5s"
        in db.execute(
            "select array_to_string(setconfig, ',') from pg_db_role_setting as s"
            " join pg_roles as r on r.oid = s.setrole where r.rolname = 'crebito_api'"
        ).fetchone()[0]
    )


def test_funcoes_criadas_depois_seguem_a_mesma_regra(db):
    """Default privileges: a function crebito adds to `api` later is executable
    by the API role, one added to `crebito` is not, and PUBLIC gets neither."""
    with db.transaction(force_rollback=True):
        db.execute("set local role crebito")
        db.execute("create function api.nova() returns int language sql return 1")
        db.execute("create function crebito.nova() returns int language sql return 1")
        privilegios = db.execute(
            "select has_function_privilege('crebito_api', 'api.nova()', 'execute'),"
            " has_function_privilege('crebito_api', 'crebito.nova()', 'execute'),"
            " has_function_privilege('public', 'api.nova()', 'execute'),"
            " has_function_privilege('public', 'crebito.nova()', 'execute')"
        ).fetchone()
    assert privilegios == (True, False, False, False)


def test_funcoes_security_definer_nao_sao_do_superusuario(db):
    """A SECURITY DEFINER function runs with its owner's rights, so a flaw in
    one must not hand out a superuser's: the owner is a role without login
    and without superuser, which owns the schemas and tables it works on."""
    donos = db.execute(
        "select p.proname, r.rolname, r.rolsuper, r.rolcanlogin, p.prosecdef, p.proconfig"
        " from pg_proc as p join pg_namespace as n on n.oid = p.pronamespace"
        " join pg_roles as r on r.oid = p.proowner where n.nspname in ('api', 'crebito')"
    ).fetchall()
    assert donos
    for funcao, dono, superusuario, login, definer, config in donos:
        assert not superusuario, (funcao, dono)
        assert not login, (funcao, dono)
        if definer:
            # A definer function must not resolve names through the caller's search_path.
            assert config and 'search_path=""' in config, (funcao, config)
    tabelas = db.execute(
        "select c.relname, r.rolsuper from pg_class as c join pg_namespace as n on n.oid = c.relnamespace"
        " join pg_roles as r on r.oid = c.relowner where n.nspname = 'crebito' and c.relkind = 'r'"
    ).fetchall()
    assert {t for t, _ in tabelas} == {"cliente", "transacao", "idempotencia"}
    assert not any(s for _, s in tabelas)


def pedido_cru(stack, dados, timeout=5):
    """Bytes straight onto the socket, for requests http.client refuses to build."""
    with socket.create_connection(("127.0.0.1", stack.porta), timeout=timeout) as s:
        s.sendall(dados)
        resposta = b""
        while True:
            parte = s.recv(65536)
            if not parte:
                break
            resposta += parte
    cabeca, _, corpo = resposta.partition(b"\r\n\r\n")
    return int(cabeca.split()[1]), corpo


def post_cru(stack, corpo, extra=b""):
    return pedido_cru(
        stack,
        b"POST /clientes/1/transacoes HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nConnection: close\r\n"
        + extra
        + b"Content-Length: "
        + str(len(corpo)).encode()
        + b"\r\n\r\n"
        + corpo,
    )


CORPOS_QUE_FAZEM_O_BANCO_FALHAR = {
    "utf8 invalido": b'{"valor": 1, "tipo": "c", "descricao": "\xff\xfe"}',
    "utf8 truncado": b'{"valor": 1, "tipo": "c", "descricao": "\xc3"}',
    "byte nulo": b'{"valor": 1, "tipo": "c", "descricao": "a\x00b"}',
    "so byte nulo": b"\x00",
    "escape nulo": b'{"valor": 1, "tipo": "c", "descricao": "a\\u0000b"}',
    "surrogate solto": b'{"valor": 1, "tipo": "c", "descricao": "\\ud800"}',
    "numero enorme": b'{"valor": 1e400000, "tipo": "c", "descricao": "x"}',
    "aninhado demais": b"[" * 4000 + b"]" * 4000,
    "valor como texto": b'{"valor": "1; drop table crebito.cliente", "tipo": "c", "descricao": "x"}',
}


def assert_erro_json(status, corpo, esperados):
    assert status in esperados, (status, corpo)
    assert json.loads(corpo).keys() == {"erro"}, corpo
    texto = corpo.decode()
    for v in VAZAMENTOS:
        assert v not in texto, (v, texto)


@pytest.mark.parametrize(
    "corpo", list(CORPOS_QUE_FAZEM_O_BANCO_FALHAR.values()), ids=list(CORPOS_QUE_FAZEM_O_BANCO_FALHAR)
)
def test_corpo_que_faz_o_banco_falhar_da_erro_json(http, db, corpo):
    status, resposta = post_cru(http, corpo)
    assert_erro_json(status, resposta, {400, 413, 422})
    assert db.execute("select count(*) from crebito.transacao").fetchone() == (0,)
    assert db.execute("select count(*) from crebito.cliente").fetchone() == (5,)


@pytest.mark.parametrize(
    "chave", [b"\xff\xfe", b"\xc3\xa9" * 40, b"a'; drop table crebito.cliente; --"], ids=["latin1", "longa", "aspas"]
)
def test_chave_estranha_da_erro_json(http, db, chave):
    status, resposta = post_cru(
        http, b'{"valor": 1, "tipo": "c", "descricao": "x"}', b"Idempotency-Key: " + chave + b"\r\n"
    )
    assert_erro_json(status, resposta, {400, 422})
    assert db.execute("select count(*) from crebito.transacao").fetchone() == (0,)


@pytest.mark.parametrize(
    "caminho",
    ["/clientes/99999999999/extrato", "/clientes/-1/extrato", "/clientes/1'/extrato", "/clientes/%00/extrato", "/x"],
)
def test_caminho_estranho_da_erro_json(http, caminho):
    r = http.pedir("GET", caminho)
    assert_erro_json(r.status, r.corpo, {400, 404})


def ler_log(stack):
    with open(os.path.join(stack.var, "stack.log"), errors="replace") as f:
        return f.read()


def test_erros_do_banco_ficam_no_log(http):
    status, resposta = post_cru(http, b'{"valor": 1, "tipo": "c", "descricao": "\xff registro"}')
    assert_erro_json(status, resposta, {422})
    # PostgreSQL writes the rejected statement's error to the stack's log.
    assert "invalid byte sequence for encoding" in esperar_no_log(http, "invalid byte sequence for encoding")


def esperar_no_log(stack, texto, limite=5):
    fim = time.monotonic() + limite
    while time.monotonic() < fim:
        conteudo = ler_log(stack)
        if texto in conteudo:
            return conteudo
        time.sleep(0.05)
    return ler_log(stack)


def test_sessao_encerrada_ociosa_nao_custa_503(http, db):
    """The server ends every worker's idle session (as a restart or an
    operator would): the next POSTs, which no session ever received, must be
    applied on a fresh session instead of answering 503 for nothing."""
    workers = 2 * http.workers
    db.execute(
        "select pg_terminate_backend(pid) from pg_stat_activity"
        " where usename = 'crebito_api' and application_name = 'crebito'"
    )
    assert esperar(lambda: sessoes_da_api(db) == [])
    for i in range(2 * workers):
        r = http.transacao(1, 1, "c", "derrubada", headers={"Idempotency-Key": f"derrubada-{i}"})
        assert r.status == 200, r.corpo
    assert db.execute("select count(*) from crebito.transacao").fetchone() == (2 * workers,)
    assert db.execute("select * from api.auditoria()").fetchall() == []


def post_bloqueado(http, db, chave, acao):
    """A POST for client 1 while the superuser holds client 1's row lock, so its
    statement is in flight when `acao` runs; returns the POST's answer."""
    resposta = []
    with psycopg.connect(http.dsn()) as trava:
        trava.execute("select from crebito.cliente where id = 1 for update")
        t = threading.Thread(
            target=lambda: resposta.append(http.transacao(1, 5, "c", "travada", headers={"Idempotency-Key": chave}))
        )
        t.start()
        assert esperar(lambda: sessoes_da_api(db, " and wait_event_type = 'Lock'"))
        acao(sessoes_da_api(db, " and wait_event_type = 'Lock'")[0][0])
        t.join(timeout=15)
        trava.rollback()
    assert len(resposta) == 1
    return resposta[0]


def test_transacao_interrompida_da_503_json_e_fica_no_log(http, db):
    r = post_bloqueado(http, db, "interrompida", lambda pid: db.execute("select pg_terminate_backend(%s)", [pid]))
    assert_erro_json(r.status, r.corpo, {503})
    log = esperar_no_log(http, "terminating connection due to administrator command")
    assert "transacao falhou" in log
    assert "terminating connection due to administrator command" in log
    # Not applied; a retry with the same key applies it exactly once.
    assert db.execute("select count(*) from crebito.transacao").fetchone() == (0,)
    assert http.transacao(1, 5, "c", "travada", headers={"Idempotency-Key": "interrompida"}).status == 200
    assert http.transacao(1, 5, "c", "travada", headers={"Idempotency-Key": "interrompida"}).json["saldo"] == 5
    assert db.execute("select count(*), sum(valor) from crebito.transacao").fetchone() == (1, 5)


def test_transacao_presa_estoura_o_statement_timeout(http, db):
    # The API role's statement_timeout (5s) ends the wait; HAProxy waits 6s.
    r = post_bloqueado(http, db, "presa", lambda pid: time.sleep(6))
    assert_erro_json(r.status, r.corpo, {503})
    log = esperar_no_log(http, "canceling statement due to statement timeout")
    assert "canceling statement due to statement timeout" in log
    assert db.execute("select count(*) from crebito.transacao").fetchone() == (0,)


def test_dsn_da_api_nao_entra_como_superusuario(stack):
    with psycopg.connect(stack.dsn("crebito_api")) as conn:
        assert conn.execute("select current_user, session_user").fetchone() == ("crebito_api", "crebito_api")
