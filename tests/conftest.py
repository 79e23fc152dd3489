"""Fixtures: one real native stack (PostgreSQL, two bjoern instances, HAProxy)
per test session, in a temporary data directory on a free port, started by
the same launcher as `make run`. Each test starts from the five initial
clients with balance 0."""

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
LIMITES = {1: 100000, 2: 80000, 3: 1000000, 4: 10000000, 5: 500000}


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

    def dsn(self, user="postgres"):
        return f"host={self.var}/pgrun port=5432 dbname=crebito user={user}"

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

    def esperar_pronto(self, limite=40):
        fim = time.monotonic() + limite
        while time.monotonic() < fim:
            if self.launcher.poll() is not None:
                raise RuntimeError(f"the launcher exited with {self.launcher.returncode}")
            try:
                if self.extrato(1).status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError("the stack did not answer in time")


@contextlib.contextmanager
def stack_temporaria(workers, prefixo="crebito-test-"):
    """A native stack started by the launcher in a new temporary directory on a
    free port; stopped and removed afterwards (kept when CREBITO_MANTER=1, for a
    post-mortem of its stack.log)."""
    var = tempfile.mkdtemp(prefix=prefixo)
    os.chmod(var, 0o755)
    env = dict(os.environ, CREBITO_VAR=var, CREBITO_PORT=str(porta_livre()), CREBITO_WORKERS=str(workers))
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


@pytest.fixture(scope="session")
def stack():
    with stack_temporaria(workers=2) as s:
        yield s


def zerar(stack):
    with psycopg.connect(stack.dsn(), autocommit=True) as conn:
        conn.execute("truncate crebito.idempotencia, crebito.transacao restart identity")
        conn.execute("update crebito.cliente set saldo = 0")


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
