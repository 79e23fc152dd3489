"""Each worker reachable on its own: a socket per worker, each a server of its
own in HAProxy taking one request at a time, so a request never waits behind
another one on a busy worker while a free worker idles, and at a low rate the
requests keep to one worker per instance."""

import os
import re
import signal
import threading

import psycopg
import pytest
from conftest import esperar, sessoes_da_api


def filhos(pid):
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(p) for p in f.read().split()]


def sockets_em_escuta(pid):
    """The paths of the unix sockets `pid` listens on."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            alvo = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        m = re.fullmatch(r"socket:\[(\d+)\]", alvo)
        if m:
            inodes.add(m.group(1))
    caminhos = set()
    with open("/proc/net/unix") as f:
        next(f)
        for linha in f:
            campos = linha.split()
            # State 01 with flags 00010000 (__SO_ACCEPTCON): a listening socket.
            if len(campos) >= 8 and campos[6] in inodes and campos[3] == "00010000":
                caminhos.add(campos[7])
    return caminhos


def test_cada_worker_escuta_no_seu_socket(stack):
    vistos = set()
    for instancia in ("api01", "api02"):
        workers = filhos(stack.pid(instancia))
        assert len(workers) == stack.workers
        for worker in workers:
            proprios = sockets_em_escuta(worker)
            assert len(proprios) == 1, proprios
            (caminho,) = proprios
            assert re.fullmatch(rf"{re.escape(stack.var)}/sock/{instancia}-[1-9]\.sock", caminho), caminho
            vistos.add(caminho)
    assert len(vistos) == 2 * stack.workers


def test_worker_ocupado_nao_atrasa_os_outros_pedidos(http, db):
    """One worker waits on client 1's row lock; meanwhile every other request
    is answered by the free workers, none queued behind the busy one."""
    respostas = []
    with psycopg.connect(http.dsn()) as trava:
        trava.execute("select from crebito.cliente where id = 1 for update")
        preso = threading.Thread(target=lambda: respostas.append(http.transacao(1, 1, "c", "preso")))
        preso.start()
        try:
            for i in range(4 * 2 * http.workers):
                r = http.pedir("GET", f"/clientes/{2 + i % 4}/extrato", timeout=3)
                assert r.status == 200
            assert respostas == []
        finally:
            trava.rollback()
            preso.join(timeout=10)
    assert respostas[0].status == 200


def trocas_voluntarias(pid):
    """How many times the process has gone to sleep (voluntary context switches)."""
    with open(f"/proc/{pid}/status") as f:
        for linha in f:
            if linha.startswith("voluntary_ctxt_switches:"):
                return int(linha.split()[1])
    raise AssertionError(f"no voluntary_ctxt_switches for {pid}")


def test_um_pedido_por_vez_alterna_as_instancias_no_primeiro_worker(stack, http):
    """One request at a time: HAProxy alternates the instances (the
    challenge's round robin) and, within each, keeps to one worker, whose
    database session stays warm in the CPU's caches; the other workers see
    only HAProxy's health checks. Each request wakes the worker that serves it
    at least twice (for the request, then for the database's answer)."""
    workers = {instancia: filhos(stack.pid(instancia)) for instancia in ("api01", "api02")}
    antes = {pid: trocas_voluntarias(pid) for pids in workers.values() for pid in pids}
    n = 200
    for i in range(n):
        assert http.extrato(1 + i % 5).status == 200
    for instancia, pids in workers.items():
        ganhos = sorted(trocas_voluntarias(pid) - antes[pid] for pid in pids)
        assert ganhos[-1] >= n / 2, (instancia, ganhos)
        assert all(g < n / 10 for g in ganhos[:-1]), (instancia, ganhos)


def test_sessao_nova_ja_vem_aquecida_e_nao_muda_nada(stack, db):
    """A worker's new session calls each API function once, for client 0,
    before it serves: compiling and planning them falls there, not on the
    first requests (the official test's first burst), and changes nothing."""
    antigas = {pid for pid, _, _ in sessoes_da_api(db)}
    os.kill(filhos(stack.pid("api01"))[0], signal.SIGKILL)
    # Idle after its last warm-up call, which no request reached.
    aquecidas = " and state = 'idle' and query like '%api.confirmar%'"
    assert esperar(lambda: {pid for pid, _, _ in sessoes_da_api(db, aquecidas)} - antigas, 15), (
        "no new session that called every API function"
    )
    assert db.execute("select count(*) from crebito.transacao").fetchone() == (0,)
    assert db.execute("select count(*) from crebito.idempotencia").fetchone() == (0,)
    clientes = db.execute("select count(*), sum(saldo), bool_or(assincrono) from crebito.cliente").fetchone()
    assert clientes == (5, 0, False)


def test_cliente_0_nao_pode_existir(db):
    with pytest.raises(psycopg.errors.CheckViolation):
        db.execute("insert into crebito.cliente (id, limite) values (0, 1)")
