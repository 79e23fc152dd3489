"""Owner routing on Citus (server.py's Roteador, roteamento.py): the API sends
each call to the worker that holds its client's shard, by a map it reads
through api.shards(), and follows a shard that moves.

The stack here is its own Citus cluster with pg_stat_statements loaded, so
each node tells which calls it was sent: the API's statement counted on a
node is a call the API sent there, and a call Citus forwarded from another
node shows there under Citus's own text."""

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from http.client import HTTPConnection

import psycopg
import pytest
from conftest import RAIZ, esperar, porta_livre, relatar, sinalizar, stack_temporaria, zerar
from test_citus import donos
from test_falhas import ClienteDoBanco, filhos
from test_metricas import endereco, soma

sys.path.insert(0, RAIZ)
import roteamento  # noqa: E402
import server  # noqa: E402

CLIENTES = (1, 2, 3, 4, 5)
# The API's own statements (server.py STATEMENTS_CITUS), as pg_stat_statements shows them.
DA_API = {sql.decode() for sql, _, _ in server.STATEMENTS_CITUS.values()}
TRANSACAO, EXTRATO = (server.STATEMENTS_CITUS[n][0].decode() for n in (b"transacao", b"extrato"))


@pytest.fixture(scope="module")
def pilha():
    conf = os.path.join(RAIZ, "bench", "pg_stat_statements.conf")
    with stack_temporaria(2, prefixo="crebito-rota-", citus_workers=2, pg_conf=conf) as s:
        # On the coordinator, which creates it on every worker.
        with conectar(s) as db:
            db.execute("create extension pg_stat_statements")
        yield s


def conectar(pilha, no=None, user="postgres"):
    return psycopg.connect(pilha.dsn(user, no=no), autocommit=True)


def workers(pilha):
    return {n["nome"]: n["porta"] for n in pilha.nos if n["papel"] == "worker"}


def _donos(pilha):
    """test_citus.donos, through a connection to the coordinator."""
    with conectar(pilha) as db:
        return donos(pilha, db)


def zerar_estatisticas(pilha):
    for no in workers(pilha):
        with conectar(pilha, no) as db:
            db.execute("select pg_stat_statements_reset()")


def chamadas_por_no(pilha):
    """{worker: Counter of statement -> calls} of the API's calls since the reset:
    the API's own statements, and under 'repassada' every call of an api
    function that reached the node in another text (forwarded by Citus)."""
    resultado = {}
    for no in workers(pilha):
        with conectar(pilha, no) as db:
            linhas = db.execute(
                "select query, calls from pg_stat_statements where toplevel"
                " and query ~ 'api\\.(transacao|transacao_local|extrato|extrato_local|confirmar)\\('"
            ).fetchall()
        contagem = Counter()
        for query, calls in linhas:
            contagem[query if query in DA_API else "repassada"] += calls
        resultado[no] = contagem
    return resultado


def test_hashint4_em_python_igual_ao_do_servidor(pilha):
    bordas = [0, 1, -1, 2, 5, 2**31 - 1, -(2**31), 2**30, -(2**30), 12345, 65535, 65536]
    rng = random.Random(4)
    valores = bordas + [rng.randint(-(2**31), 2**31 - 1) for _ in range(100_000)]
    with conectar(pilha) as db:
        servidor = db.execute(
            "select array_agg(hashint4(v) order by i) from unnest(%s::int[]) with ordinality as u(v, i)", [valores]
        ).fetchone()[0]
    assert [roteamento.hashint4(v) for v in valores] == servidor


@pytest.fixture
def haproxy_lua(tmp_path):
    """HAProxy with roteamento.lua alone, answering each request itself with
    the client's hash and the backend it would pick: (its port, the map file)."""
    mapa = tmp_path / "mapa"
    cfg = tmp_path / "haproxy.cfg"
    porta = porta_livre()
    cfg.write_text(
        f'global\n    lua-load "{RAIZ}/roteamento.lua"\n'
        "defaults\n    mode http\n    timeout client 5s\n    timeout server 5s\n    timeout connect 1s\n"
        f"frontend f\n    bind 127.0.0.1:{porta}\n"
        '    http-request return status 200 content-type text/plain lf-string "%[lua.crebito_hash] %[lua.crebito_no]"\n'
    )
    proc = subprocess.Popen(["haproxy", "-db", "-f", str(cfg)], env=dict(os.environ, CREBITO_MAPA=str(mapa)))
    try:

        def escuta():
            try:
                HTTPConnection("127.0.0.1", porta, timeout=1).connect()
                return True
            except OSError:
                return proc.poll() is not None

        assert esperar(escuta, 10) and proc.poll() is None
        yield porta, mapa
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_roteamento_lua_igual_ao_python(haproxy_lua):
    """roteamento.lua's hashint4 equals roteamento.py's (itself tested against
    the server's above) and it picks the node backend of the map server.py
    writes, read again when it changes; what is not a client goes to `api`."""
    porta, arquivo = haproxy_lua
    conn = HTTPConnection("127.0.0.1", porta, timeout=10)

    def pedir(caminho):
        conn.request("GET", caminho)
        return conn.getresponse().read().decode().split(" ")

    linhas = [(-(2**31), -(2**30) - 1, "", 7001), (-(2**30), -1, "", 7002), (0, 2**31 - 1, "", 7003)]
    arquivo.write_text("".join(f"{m} {x} {p}\n" for m, x, _, p in linhas))
    rng = random.Random(5)
    clientes = [1, 2, 5, 9, 10, 65535, 65536, 99999, 2**30, 2**31 - 2, 2**31 - 1]
    clientes += [rng.randint(1, 2**31 - 1) for _ in range(20_000)]
    mapa = roteamento.Mapa(linhas)
    assert esperar(lambda: pedir("/clientes/1/extrato")[1] != "api", 5), "the map was not read"
    for c in clientes:
        assert pedir(f"/clientes/{c}/transacoes") == [str(roteamento.hashint4(c)), f"no_{mapa.no(c)[1]}"], c
    for caminho in (
        "/clientes/0/extrato",
        "/clientes/2147483648/extrato",
        "/clientes/01/extrato",
        "/clientes/x/extrato",
        "/clientes/1",
        "/metrics",
    ):
        assert pedir(caminho)[1] == "api", caminho
    # A shard moved: the new map is read within a second or so.
    arquivo.write_text("".join(f"{m} {x} 7004\n" for m, x, _, _ in linhas))
    assert esperar(lambda: pedir("/clientes/1/extrato")[1] == "no_7004", 5)


def test_mapa_da_api_igual_a_citus_shards(pilha):
    with conectar(pilha) as db:
        esperado = db.execute(
            "select s.shardminvalue::int, s.shardmaxvalue::int, c.nodename, c.nodeport from citus_shards as c"
            " inner join pg_dist_shard as s using (shardid) where c.table_name = 'crebito.cliente'::regclass"
            " order by 1"
        ).fetchall()
    # As the API reads it: its own role, on each worker.
    for no in workers(pilha):
        with conectar(pilha, no, "crebito_api") as api:
            assert api.execute("select * from api.shards()").fetchall() == esperado, no
    mapa = roteamento.Mapa(esperado)
    porta = workers(pilha)
    assert {c: mapa.no(c)[1] for c in CLIENTES} == {c: porta[n] for c, n in _donos(pilha).items()}


def test_cada_chamada_vai_ao_dono_do_seu_cliente(pilha):
    zerar(pilha)
    zerar_estatisticas(pilha)
    dono = _donos(pilha)
    assert set(dono.values()) == set(workers(pilha)), "the contract's clients sit on both workers"
    vezes = 20
    for _ in range(vezes):
        for c in CLIENTES:
            assert pilha.transacao(c, 1, "c", "rota").status == 200
            assert pilha.extrato(c).status == 200
    chamadas = chamadas_por_no(pilha)
    for no, contagem in chamadas.items():
        meus = sum(1 for c in CLIENTES if dono[c] == no)
        assert contagem["repassada"] == 0, (no, contagem)
        assert (contagem[TRANSACAO], contagem[EXTRATO]) == (vezes * meus, vezes * meus), (no, contagem)


def pedidos_por_backend(pilha):
    """{HAProxy backend: requests it took}: `api` and each node's (no_<port>)."""
    haproxy = endereco(pilha, "haproxy")
    nomes = ["api"] + [f"no_{p}" for p in workers(pilha).values()]
    return {b: soma(haproxy, "haproxy_backend_http_requests_total", proxy=b) for b in nomes}


def test_haproxy_manda_cada_pedido_aos_workers_do_dono(pilha):
    """HAProxy (roteamento.lua) sends each request to the backend of the API
    workers whose home is its client's node, each a server there, a backup in
    the other node's."""
    dono = _donos(pilha)
    porta = workers(pilha)
    antes = pedidos_por_backend(pilha)
    for _ in range(10):
        for c in CLIENTES:
            assert pilha.extrato(c).status == 200
    depois = pedidos_por_backend(pilha)
    esperado = {b: 0 for b in antes} | Counter(f"no_{porta[dono[c]]}" for c in CLIENTES for _ in range(10))
    assert {b: depois[b] - antes[b] for b in antes} == esperado
    assert pilha.pedir("GET", "/clientes/x/extrato").status == 404
    assert pedidos_por_backend(pilha)["api"] == depois["api"] + 1
    # Each worker's home is one node; it stands by in the others' backends.
    haproxy = endereco(pilha, "haproxy")
    for p in porta.values():
        proxy = f"no_{p}"
        assert soma(haproxy, "haproxy_backend_active_servers", proxy=proxy) == pilha.workers
        assert soma(haproxy, "haproxy_backend_backup_servers", proxy=proxy) == pilha.workers


def corpo(valor, tipo):
    return json.dumps({"valor": valor, "tipo": tipo, "descricao": "local"})


def saldo(pilha, cliente):
    with conectar(pilha) as db:
        return db.execute("select saldo from crebito.cliente where id = %s", [cliente]).fetchone()[0]


def test_transacao_local_no_dono_e_fora_dele(pilha):
    """api.transacao_local answers as api.transacao on the client's node (its
    own prepared statement on the shard's tables for a plain write, and
    api.transacao for the rest), and nothing, doing nothing, on another."""
    zerar(pilha)
    dono = _donos(pilha)
    c = 1
    outro = next(n for n in workers(pilha) if n != dono[c])
    with conectar(pilha, outro, "crebito_api") as api:
        assert api.execute("select * from api.transacao_local(%s, %s)", [c, corpo(5, "c")]).fetchone() == (
            None,
            None,
            None,
        )
    assert saldo(pilha, c) == 0
    with conectar(pilha, dono[c], "crebito_api") as api:

        def chamar(pedido, chave=None):
            return api.execute(
                "select status, resposta from api.transacao_local(%s, %s, %s)", [c, pedido, chave]
            ).fetchone()

        for i in range(1, 11):
            assert chamar(corpo(7, "c")) == (200, f'{{"limite":100000,"saldo":{7 * i}}}')
        assert saldo(pilha, c) == 70
        # Each plain write ran the session's statement for the shard, kept as a generic plan.
        [(planos, genericos)] = api.execute(
            "select custom_plans + generic_plans, generic_plans from pg_prepared_statements where name = %s",
            [f"crebito_lancar_{shard_de(pilha, c)}"],
        ).fetchall()
        assert planos == 10 and genericos > 0
        assert chamar(corpo(100071, "d")) == (422, '{"erro" : "limite insuficiente"}')
        assert chamar(corpo(2**63 - 1, "c")) == (422, '{"erro" : "o saldo passaria do máximo representável"}')
        # The rest as api.transacao answers it, here.
        assert chamar('{"valor": 1.5, "tipo": "c", "descricao": "x"}') == (
            422,
            '{"erro" : "valor deve ser um inteiro positivo de até 64 bits"}',
        )
        assert chamar(corpo(3, "d"), "k1") == (200, '{"limite":100000,"saldo":67}')
        assert chamar(corpo(3, "d"), "k1") == (200, '{"limite":100000,"saldo":67}')
        assert saldo(pilha, c) == 67
        # An unknown client whose shard is here.
        with conectar(pilha) as db:
            ausente = next(x for x in range(6, 10_000) if donos(pilha, db, [x])[x] == dono[c])
        assert api.execute("select status from api.transacao_local(%s, %s)", [ausente, corpo(1, "d")]).fetchone() == (
            404,
        )
    with conectar(pilha) as db:
        assert db.execute("select * from api.auditoria()").fetchall() == []


def test_extrato_local_no_dono_e_fora_dele(pilha):
    """api.extrato_local answers as api.extrato on the client's node, from the
    shard's own tables, and nothing on another; server.py then sends it on
    through Citus."""
    zerar(pilha)
    dono = _donos(pilha)
    c = 4
    outro = next(n for n in workers(pilha) if n != dono[c])
    for valor, tipo in ((30, "c"), (7, "d"), (5, "c")):
        assert pilha.transacao(c, valor, tipo, "local").status == 200

    def sem_data(resposta):
        corpo = json.loads(resposta)
        assert corpo["saldo"].pop("data_extrato")
        return corpo

    with conectar(pilha, dono[c], "crebito_api") as api:
        local = api.execute("select status, resposta, duravel from api.extrato_local(%s)", [c]).fetchone()
        pela_citus = api.execute("select status, resposta, duravel from api.extrato(%s)", [c]).fetchone()
        assert local[0] == pela_citus[0] == 200 and local[2] is pela_citus[2] is True
        assert sem_data(local[1]) == sem_data(pela_citus[1])
        assert [t["valor"] for t in sem_data(local[1])["ultimas_transacoes"]] == [5, 7, 30]
        with conectar(pilha) as db:
            ausente = next(x for x in range(6, 10_000) if donos(pilha, db, [x])[x] == dono[c])
        assert api.execute("select status, resposta from api.extrato_local(%s)", [ausente]).fetchone() == (
            404,
            '{"erro" : "cliente não encontrado"}',
        )
    with conectar(pilha, outro, "crebito_api") as api:
        assert api.execute("select * from api.extrato_local(%s)", [c]).fetchone() == (None, None, None)
    avisos = []
    banco = server.BancoCitus(pilha.dsn("crebito_api", no=outro).encode(), None, lambda: avisos.append(1))
    try:
        status, _, resposta = banco.chamar(b"extrato", [str(c).encode()], True)
    finally:
        banco._descartar()
    assert status == "200 OK" and sem_data(resposta) == sem_data(local[1])
    assert avisos == [1]


def test_escrita_fora_do_dono_vai_pela_citus(pilha):
    """server.py on a node without the client (a map older than a move): the
    write is sent again as api.transacao, which Citus runs on the owner, once,
    and the router is told its map is stale."""
    zerar(pilha)
    c = 3
    outro = next(n for n in workers(pilha) if n != _donos(pilha)[c])
    avisos = []
    banco = server.BancoCitus(pilha.dsn("crebito_api", no=outro).encode(), None, lambda: avisos.append(1))
    try:
        status, _, resposta = banco.chamar(b"transacao", [str(c).encode(), corpo(11, "c").encode(), None], False)
    finally:
        banco._descartar()
    assert (status, resposta) == ("200 OK", b'{"limite":1000000,"saldo":11}')
    assert avisos == [1]
    assert saldo(pilha, c) == 11


def shard_de(pilha, cliente):
    with conectar(pilha) as db:
        return db.execute("select get_shard_id_for_distribution_column('crebito.cliente', %s)", [cliente]).fetchone()[0]


def test_transacao_local_espera_quem_move_o_shard(pilha):
    """A shard move holds its group's metadata lock exclusively on every node
    while it copies (block_writes, the mode a cluster without logical WAL
    has): a plain write through the shard's own tables waits for it, as
    Citus's own writes do, and an extrato does not, as Citus's own reads."""
    zerar(pilha)
    c = 2
    dono = _donos(pilha)[c]
    with conectar(pilha, dono) as mudanca, conectar(pilha, dono, "crebito_api") as api:
        mudanca.execute("begin")
        mudanca.execute("select lock_shard_metadata(7, array[%s::bigint])", [shard_de(pilha, c)])
        api.execute("set lock_timeout = '300ms'")
        with pytest.raises(psycopg.errors.LockNotAvailable):
            api.execute("select * from api.transacao_local(%s, %s)", [c, corpo(9, "c")])
        # A read does not wait: no write can pass the copy here meanwhile.
        assert api.execute("select status from api.extrato_local(%s)", [c]).fetchone() == (200,)
        mudanca.execute("rollback")
        assert api.execute("select status from api.transacao_local(%s, %s)", [c, corpo(9, "c")]).fetchone() == (200,)
    assert saldo(pilha, c) == 9


def test_shard_movido_sob_carga(pilha, pytestconfig):
    """Client 1's shard group moves to the other worker under load on every
    client, half of it keyed (api.transacao through Citus) and half not (the
    shard's own tables, api.transacao_local): no answer but 200/422 (and 503s,
    none expected), nothing lost or doubled, the audit empty, and within the
    map's period (server.py, Roteador.PERIODO) the calls for client 1 go to its
    new node."""
    zerar(pilha)
    dono = _donos(pilha)
    porta = workers(pilha)
    origem = dono[1]
    destino = next(n for n in porta if n != origem)
    parar = threading.Event()
    carga = [ClienteDoBanco(i, pilha, parar, CLIENTES, com_chave=i % 2 == 0) for i in range(4)]
    for t in carga:
        t.start()
    try:
        time.sleep(1)
        with conectar(pilha) as db:
            db.execute(
                "select citus_move_shard_placement(get_shard_id_for_distribution_column('crebito.cliente', 1),"
                " '127.0.0.1', %s, '127.0.0.1', %s, shard_transfer_mode => 'block_writes')",
                [porta[origem], porta[destino]],
            )
        movido = time.monotonic()
        assert _donos(pilha)[1] == destino
        time.sleep(1)
    finally:
        parar.set()
        for t in carga:
            t.join(timeout=60)
    status = sum((c.status for c in carga), Counter())
    assert set(status) <= {200, 422, 503}, status
    assert not any(c.inesperadas for c in carga)
    aceitas = {k for c in carga if c.com_chave for k in c.aceitas}
    with conectar(pilha) as db:
        assert db.execute("select * from api.auditoria()").fetchall() == []
        no_livro = Counter(
            db.execute(
                "select i.cliente_id, i.chave from crebito.idempotencia as i inner join crebito.transacao as t"
                " on (t.cliente_id, t.lancamento) = (i.cliente_id, i.lancamento)"
            ).fetchall()
        )
        sem_chave = Counter(
            db.execute(
                "select t.cliente_id, t.descricao from crebito.transacao as t where not exists"
                " (select from crebito.idempotencia as i"
                " where (i.cliente_id, i.lancamento) = (t.cliente_id, t.lancamento))"
            ).fetchall()
        )
    # Each acknowledged write once, and no ledger row without its key.
    assert all(no_livro[k] == 1 for k in aceitas), [k for k in aceitas if no_livro[k] != 1][:5]
    # Without keys, the description tells each request: every 200 once, every
    # 422 never, an unanswered one at most once, and nothing else.
    livres = [c for c in carga if not c.com_chave]
    assert all(sem_chave[k] == 1 for c in livres for k in c.aceitas)
    assert not any(sem_chave[k] for c in livres for k in c.recusadas)
    assert sum(sem_chave.values()) - sum(len(c.aceitas) for c in livres) <= sum(len(c.abandonadas) for c in livres)
    assert all(n == 1 for n in sem_chave.values())
    assert sum(len(c.aceitas) for c in livres) > 20

    # Back on its owner once the map is read again.
    def no_novo_dono():
        zerar_estatisticas(pilha)
        for _ in range(6):  # every API worker, whichever HAProxy picks
            pilha.extrato(1)
        return not chamadas_por_no(pilha)[origem]

    assert esperar(no_novo_dono, 3 * server.Roteador.PERIODO, passo=0.5)

    # And HAProxy sends them to the new owner's workers a second later at most.
    def no_backend_novo():
        antes = pedidos_por_backend(pilha)[f"no_{porta[destino]}"]
        pilha.extrato(1)
        return pedidos_por_backend(pilha)[f"no_{porta[destino]}"] == antes + 1

    assert esperar(no_backend_novo, 3, passo=0.2)
    relatar(
        pytestconfig,
        f"cliente 1 moved from {origem} to {destino}: its calls on the new owner {time.monotonic() - movido:.1f}s"
        f" after the move; answers under load {dict(status)}",
    )


def test_worker_congelado_so_prende_os_seus(pilha, pytestconfig):
    """A worker that hangs (SIGSTOP on its processes: a frozen machine) holds
    only the API workers whose home it is. Twice as many requests for its
    clients as the API has processes wait on it, and every other client is
    still served, for longer than the map's period (a process reads the map
    from the node of the call at hand first). With every process serving every
    node, those requests would hold them all."""
    zerar(pilha)
    dono = _donos(pilha)
    congelado = dono[1]
    presos = [c for c in CLIENTES if dono[c] == congelado]
    livres = [c for c in CLIENTES if dono[c] != congelado]
    pids = [pilha.pid(congelado), *filhos(pilha.pid(congelado))]
    retidos = Counter()

    def pedir_retido(c):
        try:
            retidos[pilha.extrato(c).status] += 1
        except OSError:
            retidos["sem resposta"] += 1

    servidos = Counter()
    sinalizar(pids, signal.SIGSTOP)
    try:
        espera = [threading.Thread(target=pedir_retido, args=(c,)) for c in (presos * 8)[: 4 * pilha.workers]]
        for t in espera:
            t.start()
        time.sleep(0.5)
        fim = time.monotonic() + server.Roteador.PERIODO + 1
        with ThreadPoolExecutor(2) as dois:
            while time.monotonic() < fim:
                servidos.update(dois.map(lambda c: pilha.extrato(c).status, [livres[0], livres[-1]]))
                time.sleep(0.2)
        ainda_esperando = sum(t.is_alive() for t in espera)
    finally:
        sinalizar(pids, signal.SIGCONT)
    for t in espera:
        t.join(timeout=30)
    assert set(servidos) == {200}, servidos
    assert ainda_esperando or set(retidos) <= {503, 504}, retidos
    assert esperar(lambda: all(pilha.extrato(c).status == 200 for c in CLIENTES), 30)
    relatar(
        pytestconfig,
        f"{congelado} frozen {server.Roteador.PERIODO + 1.5:.1f}s: the other worker's clients {dict(servidos)};"
        f" its own {dict(retidos)}",
    )
