"""Fixtures: one real native stack (PostgreSQL, two bjoern instances, HAProxy)
per test session, in a temporary data directory on a free port, started by
the same launcher as `make run`. Each test starts from the five initial
clients with balance 0.

A module marked `citus` runs its tests on both topologies: the single-node
stack and a Citus stack (coordinator and two workers, CREBITO_CITUS_WORKERS=2);
a test in it marked `unico` runs on the single-node one only."""

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from http.client import HTTPConnection

import psycopg
import pytest

RAIZ = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(RAIZ, "stack"))
from cluster import sql_de_zerar  # noqa: E402  (test_docker takes it from here too)

LIMITES = {1: 100000, 2: 80000, 3: 1000000, 4: 10000000, 5: 500000}


def esperar(condicao, limite=10, passo=0.02):
    """Polls `condicao` until it returns something true or `limite` seconds
    pass; returns its last value, so `assert esperar(...)` fails on timeout."""
    fim = time.monotonic() + limite
    while time.monotonic() < fim:
        valor = condicao()
        if valor:
            return valor
        time.sleep(passo)
    return condicao()


def sinalizar(pids, sinal):
    """Sends sinal to each of pids; one that has ended meanwhile (a child the
    parent reaped once it was let go on) is skipped."""
    for pid in pids:
        try:
            os.kill(pid, sinal)
        except ProcessLookupError:
            pass


def relatar(config, msg):
    """Figures worth seeing in every run (not asserted: the machine is shared)."""
    captura = config.pluginmanager.get_plugin("capturemanager")
    with captura.global_and_fixture_disabled():
        print(f"\n{msg}", flush=True)


def sessoes_da_api(db, onde=""):
    """The API workers' sessions (pid, state, query), narrowed by `onde`."""
    return db.execute(
        "select pid, state, query from pg_stat_activity"
        " where usename = 'crebito_api' and application_name = 'crebito'" + onde
    ).fetchall()


def porta_livre():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Resposta:
    status: int
    headers: dict
    corpo: bytes

    @property
    def json(self):
        return json.loads(self.corpo)


@dataclass
class Stack:
    var: str
    porta: int
    workers: int
    launcher: subprocess.Popen

    @property
    def nos(self):
        """The database nodes the launcher recorded (stack/topologia.py):
        [{nome, papel, pgdata, pgrun, porta}], coordinator (or only node) first."""
        with open(os.path.join(self.var, "topologia.json")) as f:
            return json.load(f)["nos"]

    @property
    def ha(self):
        return self.nos[0]["papel"] == "patroni"

    @property
    def citus(self):
        return len(self.nos) > 1 and not self.ha

    def dsn(self, user="postgres", no=None):
        """Through the unix socket of a node (default: the coordinator, the
        only node, or (HA) whichever is the primary)."""
        if self.ha and no is None:
            hosts = ",".join(n["pgrun"] for n in self.nos)
            portas = ",".join(str(n["porta"]) for n in self.nos)
            return f"host={hosts} port={portas} dbname=crebito user={user} target_session_attrs=read-write"
        n = next(n for n in self.nos if n["nome"] == no) if no else self.nos[0]
        dsn = f"host={n['pgrun']} port={n['porta']} dbname=crebito user={user}"
        if self.citus:
            # A test session's statements over every shard (the reset, the
            # audit) then open one connection per worker, not a pool of them:
            # faster for the handful of rows a test leaves.
            dsn += " options='-c citus.max_adaptive_executor_pool_size=1'"
        return dsn

    def pid(self, nome):
        """The pid the launcher recorded for postgres, api01, api02 or haproxy."""
        with open(os.path.join(self.var, f"{nome}.pid")) as f:
            return int(f.read())

    def pedir(self, metodo, caminho, corpo=None, headers=None, timeout=10):
        """One HTTP request on a new connection, like each official virtual user."""
        if isinstance(corpo, (dict, list)):
            corpo = json.dumps(corpo)
        if isinstance(corpo, str):
            corpo = corpo.encode()
        h = {"User-Agent": "Agente do Caos - 2024/Q1"}
        if corpo is not None:
            h["Content-Type"] = "application/json"
        h.update(headers or {})
        conn = HTTPConnection("127.0.0.1", self.porta, timeout=timeout)
        try:
            conn.request(metodo, caminho, body=corpo, headers=h)
            r = conn.getresponse()
            return Resposta(r.status, {k.lower(): v for k, v in r.getheaders()}, r.read())
        finally:
            conn.close()

    def transacao(self, cliente, valor, tipo, descricao, headers=None):
        corpo = {"valor": valor, "tipo": tipo, "descricao": descricao}
        return self.pedir("POST", f"/clientes/{cliente}/transacoes", corpo, headers)

    def extrato(self, cliente):
        return self.pedir("GET", f"/clientes/{cliente}/extrato")

    def atendeu(self, limite):
        """True once GET /clientes/1/extrato answers 200, False after `limite` seconds."""
        fim = time.monotonic() + limite
        while time.monotonic() < fim:
            if self.launcher is not None and self.launcher.poll() is not None:
                raise RuntimeError(f"the launcher exited with {self.launcher.returncode}")
            try:
                if self.extrato(1).status == 200:
                    return True
            except OSError:
                pass
            time.sleep(0.05)
        return False

    def esperar_pronto(self, limite=120):
        if not self.atendeu(limite):
            raise RuntimeError("the stack did not answer in time")

    def nos_no_ar(self):
        """Whether every node's PostgreSQL runs. HA answers once its primary
        does, while the standby may still be cloned from it: Patroni's /health
        answers 200 only where PostgreSQL runs."""
        return all(rest(self, no["nome"], "/health")[0] == 200 for no in self.nos if no.get("porta_rest"))


def rest(stack, nome, caminho):
    """(status, body) of a GET on HA node nome's Patroni REST API; (None, b"") when it does not answer."""
    no = next(n for n in stack.nos if n["nome"] == nome)
    conn = HTTPConnection("127.0.0.1", no["porta_rest"], timeout=2)
    try:
        conn.request("GET", caminho)
        r = conn.getresponse()
        return r.status, r.read()
    except OSError:
        return None, b""
    finally:
        conn.close()


@contextlib.contextmanager
def stack_temporaria(workers, prefixo="crebito-test-", citus_workers=0, ha=False, pg_conf=None):
    """A native stack started by the launcher in a new temporary directory on a
    free port (with `citus_workers` Citus workers, HA, or single-node, and the
    extra PostgreSQL settings file `pg_conf`); stopped and removed afterwards
    (kept when CREBITO_MANTER=1, for a post-mortem of its stack.log)."""
    var = tempfile.mkdtemp(prefix=prefixo)
    os.chmod(var, 0o755)
    env = dict(
        os.environ,
        CREBITO_VAR=var,
        CREBITO_PORT=str(porta_livre()),
        CREBITO_WORKERS=str(workers),
        CREBITO_CITUS_WORKERS=str(citus_workers),
        CREBITO_HA="1" if ha else "",
        CREBITO_PG_CONF=pg_conf or "",
    )
    log = open(os.path.join(var, "stack.log"), "w")
    launcher = subprocess.Popen(
        [sys.executable, os.path.join(RAIZ, "stack", "launcher.py")], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    s = Stack(var=var, porta=int(env["CREBITO_PORT"]), workers=workers, launcher=launcher)
    try:
        s.esperar_pronto()
        yield s
    finally:
        launcher.send_signal(signal.SIGTERM)
        try:
            launcher.wait(timeout=30)
        except subprocess.TimeoutExpired:
            launcher.kill()
        log.close()
        if not os.environ.get("CREBITO_MANTER"):
            subprocess.run(["rm", "-rf", var], check=False)


def pytest_configure(config):
    config.addinivalue_line("markers", "citus: run the module's tests on the single-node, the Citus and the HA stack")
    config.addinivalue_line("markers", "unico: in a `citus` module, run this test on the single-node stack only")


def pytest_generate_tests(metafunc):
    if "topologia" not in metafunc.fixturenames or not metafunc.definition.get_closest_marker("citus"):
        return
    if metafunc.definition.get_closest_marker("unico"):
        return
    metafunc.parametrize("topologia", ["unico", "citus", "ha"], indirect=True, scope="session")


@pytest.fixture(scope="session")
def topologia(request):
    return getattr(request, "param", "unico")


@pytest.fixture(scope="session")
def stack(topologia):
    with stack_temporaria(workers=2, citus_workers=2 if topologia == "citus" else 0, ha=topologia == "ha") as s:
        assert esperar(s.nos_no_ar, 90), "a node's PostgreSQL did not start"
        yield s


def zerar(stack):
    with psycopg.connect(stack.dsn(), autocommit=True) as conn:
        for sql in sql_de_zerar(stack.citus):
            conn.execute(sql)


@pytest.fixture
def db(stack):
    """A superuser connection (autocommit) to a database back at its initial state."""
    zerar(stack)
    with psycopg.connect(stack.dsn(), autocommit=True) as conn:
        yield conn


@pytest.fixture
def api_db(stack, db):
    """A connection as the API's role, which may only EXECUTE the api functions."""
    with psycopg.connect(stack.dsn("crebito_api"), autocommit=True) as conn:
        yield conn


@pytest.fixture
def http(stack, db):
    """The stack, with the database back at its initial state."""
    return stack
