"""The distributed topology itself (CREBITO_CITUS_WORKERS=2): where the shards
live, that each call runs on the node that owns its client, that no node
takes a connection over TCP without the password, and that losing a worker
costs only its own clients, and nothing acknowledged."""

import json
import os
import pwd
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict

import psycopg
import pytest
from conftest import RAIZ, esperar
from test_seguranca_host import arvore, uids

sys.path.insert(0, os.path.join(RAIZ, "stack"))
import launcher  # noqa: E402
from topologia import SHARDS_POR_WORKER  # noqa: E402

pytestmark = pytest.mark.parametrize("topologia", ["citus"], indirect=True, scope="session")

CLIENTES = range(1, 6)


def donos(stack, db, clientes=CLIENTES):
    """{cliente: name of the worker holding its shards}."""
    porta_nome = {n["porta"]: n["nome"] for n in stack.nos}
    return {
        c: porta_nome[
            db.execute(
                "select nodeport from citus_shards where table_name = 'crebito.cliente'::regclass"
                " and shardid = get_shard_id_for_distribution_column('crebito.cliente', %s)",
                [c],
            ).fetchone()[0]
        ]
        for c in clientes
    }


def test_shards_so_nos_workers_e_colocados(stack, db):
    nos = {n["nome"]: n for n in stack.nos}
    assert sorted(nos) == ["coordenador", "worker1", "worker2"]
    ativos = db.execute("select nodeport, shouldhaveshards from pg_dist_node order by nodeport").fetchall()
    assert {p for p, _ in ativos} == {n["porta"] for n in nos.values()}
    onde = db.execute(
        "select table_name::text, nodeport, count(*) from citus_shards group by table_name, nodeport"
    ).fetchall()
    # Every table on both workers, none on the coordinator, loaded after the workers joined.
    assert {(t, p) for t, p, _ in onde} == {
        (t, nos[w]["porta"])
        for t in ("crebito.cliente", "crebito.transacao", "crebito.idempotencia")
        for w in ("worker1", "worker2")
    }
    # Each table in as many shards per worker as the cluster was created for.
    assert {n for _, _, n in onde} == {SHARDS_POR_WORKER}
    colocacoes = db.execute(
        "select count(distinct colocation_id) from citus_tables where table_name::text like 'crebito.%'"
    ).fetchone()
    assert colocacoes == (1,)
    # The five contract clients are spread over both workers.
    assert set(donos(stack, db).values()) == {"worker1", "worker2"}


def test_cada_chamada_roda_no_no_do_seu_cliente(stack, db):
    """Asked of a worker that does not hold the client, each call is one task
    sent whole to the worker that does; asked of that worker, it runs there
    with no distributed step at all."""
    dono = donos(stack, db)
    portas = {n["nome"]: n["porta"] for n in stack.nos}
    chamadas = [
        "select status, resposta from api.transacao(%s, '{}', null)",
        "select status, resposta from api.extrato(%s)",
    ]
    for no in ("worker1", "worker2"):
        with psycopg.connect(stack.dsn("crebito_api", no=no), autocommit=True) as conn:
            for c in CLIENTES:
                for sql in chamadas:
                    plano = "\n".join(r[0] for r in conn.execute("explain " + sql, [c]))
                    if dono[c] == no:
                        assert plano.startswith("Function Scan on"), plano
                    else:
                        assert "Task Count: 1" in plano, plano
                        assert f"Node: host=127.0.0.1 port={portas[dono[c]]} dbname=crebito" in plano, plano


def test_cada_api_fala_com_o_seu_worker(stack, db):
    """Each instance names both workers (api01 from worker 1, api02 from
    worker 2: the first asked for the shard map), over TCP with the API's
    password file, and holds sessions on both (it routes each call)."""
    portas = {n["nome"]: n["porta"] for n in stack.nos}
    for nome, primeiro, segundo in (("api01", "worker1", "worker2"), ("api02", "worker2", "worker1")):
        with open(f"/proc/{stack.pid(nome)}/environ", "rb") as f:
            env = dict(v.split(b"=", 1) for v in f.read().split(b"\0") if b"=" in v)
        dsn = dict(p.split("=", 1) for p in env[b"DATABASE_URL"].decode().split())
        assert dsn["port"] == f"{portas[primeiro]},{portas[segundo]}"
        assert dsn["user"] == "crebito_api"
        assert dsn["passfile"] == os.path.join(stack.var, "segredos", "pgpass-api")
    stack.extrato(1)
    stack.extrato(2)
    for no in ("worker1", "worker2"):
        with psycopg.connect(stack.dsn(no=no), autocommit=True) as conn:
            sessoes = conn.execute(
                "select count(*) from pg_stat_activity where usename = 'crebito_api' and application_name = 'crebito'"
            ).fetchone()[0]
        assert sessoes >= 1, no


def test_sessao_nao_cresce_a_cada_chamada(stack, db):
    """An API session lives as long as its worker process, so a call must
    leave nothing behind in it. Citus 13.2.2 keeps one more shard plan per
    execution of a generic plan (70 kB a call, gigabytes over a load test);
    the functions ask for custom plans (db/schema.sql)."""
    dono = donos(stack, db)[1]
    with psycopg.connect(stack.dsn(no=dono), autocommit=True) as conn:

        def planos():
            sql = "select coalesce(sum(total_bytes), 0) from pg_backend_memory_contexts where name = 'CachedPlan'"
            return conn.execute(sql).fetchone()[0]

        corpos = [json.dumps({"valor": 1, "tipo": t, "descricao": "vai e vem"}) for t in "cd"]

        def chamadas(quantas):
            for _ in range(quantas):
                for corpo in corpos:
                    assert conn.execute("select status from api.transacao(1, %s)", [corpo]).fetchone() == (200,)
                assert conn.execute("select status from api.extrato(1)").fetchone() == (200,)

        chamadas(10)  # past PL/pgSQL's five custom plans and psycopg's preparing
        antes = planos()
        chamadas(150)
        assert planos() - antes < 2**20, (antes, planos())
    assert db.execute("select saldo from crebito.cliente where id = 1").fetchone() == (0,)


def recusa_sem_senha(porta, papel, senha=None):
    dsn = f"host=127.0.0.1 port={porta} dbname=crebito user={papel} passfile=/dev/null connect_timeout=5"
    if senha is not None:
        dsn += f" password={senha}"
    with pytest.raises(psycopg.OperationalError) as e:
        psycopg.connect(dsn).close()
    return str(e.value)


def test_tcp_sem_senha_e_recusado_em_todo_no(stack):
    for no in stack.nos:
        for papel in ("postgres", "crebito", "crebito_api"):
            assert "no password supplied" in recusa_sem_senha(no["porta"], papel)
            assert "password authentication failed" in recusa_sem_senha(no["porta"], papel, "errada")
        with open(os.path.join(no["pgdata"], "pg_hba.conf")) as f:
            regras = [linha.split() for linha in f if linha.strip() and not linha.startswith("#")]
        tcp = [r for r in regras if r[0].startswith("host")]
        assert tcp and all(r[-1] == "scram-sha-256" for r in tcp), tcp


def test_senhas_guardadas_so_para_o_dono(stack):
    pasta = os.path.join(stack.var, "segredos")
    for nome in ("pgpass", "pgpass-api"):
        modo = stat.S_IMODE(os.stat(os.path.join(pasta, nome)).st_mode)
        assert modo == 0o600, oct(modo)
    with open(os.path.join(pasta, "pgpass-api")) as f:
        linhas = f.read().splitlines()
    # The API's file holds its own password only, and it works over TCP.
    assert [linha.split(":")[3] for linha in linhas] == ["crebito_api"]
    porta = stack.nos[1]["porta"]
    dsn = f"host=127.0.0.1 port={porta} dbname=crebito user=crebito_api passfile={pasta}/pgpass-api"
    with psycopg.connect(dsn) as conn:
        assert conn.execute("select status from api.extrato(1)").fetchone() == (200,)


@pytest.mark.skipif(os.geteuid() != 0, reason="switching OS users needs root (CI runs as root)")
def test_outro_usuario_nao_entra_em_no_algum(stack):
    for no in stack.nos:
        for papel in ("postgres", "crebito", "crebito_api"):
            r = subprocess.run(
                ["runuser", "-u", "nobody", "--", f"{launcher.pg_bin()}/psql", "-X", "-A", "-t", "-w"]
                + ["-h", no["pgrun"], "-p", str(no["porta"]), "-U", papel, "-d", "crebito", "-c", "select 1"],
                capture_output=True,
                text=True,
                timeout=30,
                cwd="/",
            )
            assert r.returncode != 0, (no["nome"], papel)


@pytest.mark.skipif(os.geteuid() != 0, reason="switching OS users needs root (CI runs as root)")
def test_nenhum_processo_do_cluster_roda_como_root(stack):
    usuarios = {n["nome"]: "postgres" for n in stack.nos}
    usuarios.update(api01=launcher.USUARIO_API, api02=launcher.USUARIO_API, haproxy=launcher.USUARIO_HAPROXY)
    for componente, usuario in usuarios.items():
        for pid in arvore(stack.pid(componente)):
            assert uids(pid) == {pwd.getpwnam(usuario).pw_uid}, (componente, pid)


# -- losing a worker under load ---------------------------------------------


class Cliente(threading.Thread):
    """Credits one client one request at a time, each with its own
    Idempotency-Key, retried with the same key until it gets a final answer;
    each 200 must carry exactly the sum of the credits acknowledged so far."""

    def __init__(self, stack, cliente, fase):
        super().__init__(daemon=True)
        self.stack, self.cliente, self.fase = stack, cliente, fase
        self.parar = threading.Event()
        self.aceitas = {}  # chave -> valor
        self.respostas = defaultdict(list)  # fase -> [status]
        self.erros = []

    def run(self):
        n, saldo = 0, 0
        while not self.parar.is_set():
            n += 1
            chave, valor = f"c{self.cliente}-{n}", 1 + n % 7
            while not self.parar.is_set():
                fase = self.fase[0]
                try:
                    r = self.stack.transacao(self.cliente, valor, "c", "carga", headers={"Idempotency-Key": chave})
                    status = r.status
                except OSError:
                    status = None
                if fase == self.fase[0]:
                    self.respostas[fase].append(status)
                if status == 200:
                    saldo += valor
                    self.aceitas[chave] = valor
                    if r.json["saldo"] != saldo:
                        self.erros.append((chave, r.json, saldo))
                    break
                if status not in (503, None):
                    self.erros.append((chave, status, r.corpo))
                    break
                time.sleep(0.01)


def processos_em(pasta):
    """Pids of the processes working in `pasta` (a PostgreSQL node's backends)."""
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.readlink(f"/proc/{pid}/cwd") == pasta:
                pids.append(pid)
        except OSError:
            pass
    return pids


def recusa_conexao(porta):
    with socket.socket() as s:
        try:
            s.connect(("127.0.0.1", porta))
            return False
        except ConnectionRefusedError:
            return True


def test_kill_9_de_um_worker_so_afeta_os_seus_clientes(stack, db, capsys):
    dono = donos(stack, db)
    vitima = "worker2"
    porta, pgdata = next((n["porta"], n["pgdata"]) for n in stack.nos if n["nome"] == vitima)
    fase = ["antes"]
    clientes = [Cliente(stack, c, fase) for c in CLIENTES]
    for c in clientes:
        c.start()
    launcher = stack.launcher.pid
    try:
        assert esperar(lambda: all(len(c.aceitas) >= 5 for c in clientes), 30), "no traffic before the kill"
        # The launcher held still, so the worker stays down while we look.
        os.kill(launcher, signal.SIGSTOP)
        os.kill(stack.pid(vitima), signal.SIGKILL)
        assert esperar(lambda: recusa_conexao(porta), 30), "the killed worker still listens"
        # Its backends outlive it by a moment, and a request already on its way
        # to one may still get 503 whatever its client; from here on, no
        # connection leads to the dead worker.
        assert esperar(lambda: not processos_em(pgdata), 30), "the killed worker's backends did not exit"
        fase[0] = "fora"
        assert esperar(lambda: all(len(c.respostas["fora"]) >= 10 for c in clientes), 60), (
            "too few answers while the worker is down"
        )
        fase[0] = "depois"
        os.kill(launcher, signal.SIGCONT)
        assert esperar(lambda: all(sum(s == 200 for s in c.respostas["depois"]) >= 5 for c in clientes), 90), (
            "not every client was served again after the restart"
        )
    finally:
        os.kill(launcher, signal.SIGCONT)
        for c in clientes:
            c.parar.set()
        for c in clientes:
            c.join(timeout=30)

    with capsys.disabled():
        print(f"\n-- kill -9 {vitima} --")
        for c in clientes:
            resumo = {f: dict(Counter(v)) for f, v in c.respostas.items()}
            print(f"cliente {c.cliente} ({dono[c.cliente]}): {len(c.aceitas)} aceitas; {resumo}")
    for c in clientes:
        assert c.erros == [], c.erros
        fora = c.respostas["fora"]
        if dono[c.cliente] == vitima:
            assert set(fora) == {503}, (c.cliente, fora)
        else:
            assert set(fora) == {200}, (c.cliente, fora)

    # Nothing acknowledged missing or doubled: the ledger holds exactly the
    # acknowledged credits, each under its key.
    for c in clientes:
        linhas = db.execute(
            "select i.chave, t.valor from crebito.idempotencia as i"
            " inner join crebito.transacao as t on t.cliente_id = i.cliente_id and t.lancamento = i.lancamento"
            " where i.cliente_id = %s",
            [c.cliente],
        ).fetchall()
        assert dict(linhas) == c.aceitas
        n, saldo = db.execute(
            "select (select count(*) from crebito.transacao where cliente_id = %s), saldo from crebito.cliente"
            " where id = %s",
            [c.cliente, c.cliente],
        ).fetchone()
        assert (n, saldo) == (len(c.aceitas), sum(c.aceitas.values()))
    assert db.execute("select * from api.auditoria()").fetchall() == []
