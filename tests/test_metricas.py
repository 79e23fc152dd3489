"""The metrics endpoints (stack/metricas.py), on the single-node, the Citus and
the HA stack: each answers on 127.0.0.1 with its standard series, and they
move with the load sent through :9999 (HAProxy's request counter by exactly
the requests, PostgreSQL's commits by at least the 200s, each process's CPU),
crebito's own figures match the ledger, and `make observar`'s Prometheus
scrapes every endpoint."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import urllib.parse
from http.client import HTTPConnection

import psycopg
import pytest
from conftest import RAIZ, esperar, porta_livre

pytestmark = pytest.mark.citus

LINHA = re.compile(r"^([a-zA-Z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)$")
ROTULO = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def pedir(endereco, caminho="/metrics"):
    host, porta = endereco.rsplit(":", 1)
    conn = HTTPConnection(host, int(porta), timeout=10)
    try:
        conn.request("GET", caminho)
        r = conn.getresponse()
        return r.status, r.read().decode()
    finally:
        conn.close()


def series(endereco):
    """[(name, {label: value}, value)] of a Prometheus text exposition."""
    status, texto = pedir(endereco)
    assert status == 200, (endereco, status, texto[:200])
    resultado = []
    for linha in texto.splitlines():
        m = LINHA.match(linha)
        if m and not linha.startswith("#"):
            resultado.append((m.group(1), dict(ROTULO.findall(m.group(2) or "")), float(m.group(3))))
    return resultado


def soma(endereco, nome, **rotulos):
    """The sum of nome's series whose labels include rotulos (None: no such series)."""
    valores = [v for n, r, v in series(endereco) if n == nome and rotulos.items() <= r.items()]
    return sum(valores) if valores else None


def alvos(stack, job):
    sys.path.insert(0, os.path.join(RAIZ, "stack"))
    import metricas

    return [a for a in metricas.ler(stack.var) if a.job == job]


def endereco(stack, job):
    [alvo] = alvos(stack, job)
    return alvo.endereco


def carga(stack, quantas=20):
    """quantas credits, then as many statements; returns the POSTs answered 200."""
    aceitas = sum(stack.transacao(1 + i % 5, 10, "c", "metrica").status == 200 for i in range(quantas))
    for i in range(quantas):
        assert stack.extrato(1 + i % 5).status == 200
    return aceitas


def escutas_tcp():
    """{port: {addresses listening on it}} of the machine's IPv4 TCP listeners."""
    escutas = {}
    with open("/proc/net/tcp") as f:
        for linha in list(f)[1:]:
            local, estado = linha.split()[1], linha.split()[3]
            if estado == "0A":  # LISTEN
                endereco, porta = local.split(":")
                ip = ".".join(str(b) for b in reversed(bytes.fromhex(endereco)))
                escutas.setdefault(int(porta, 16), set()).add(ip)
    return escutas


def test_cada_endpoint_so_em_127_0_0_1(stack):
    todos = alvos(stack, "haproxy") + alvos(stack, "postgres") + alvos(stack, "processos")
    # One PostgreSQL exporter per database node.
    assert sorted(a.no for a in todos if a.job == "postgres") == sorted(n["nome"] for n in stack.nos)
    escutas = escutas_tcp()
    for alvo in todos:
        assert alvo.endereco.startswith("127.0.0.1:"), alvo
        assert escutas[int(alvo.endereco.rsplit(":", 1)[1])] == {"127.0.0.1"}, alvo
        assert pedir(alvo.endereco)[0] == 200, alvo
    # The API's port answers as the API, not as HAProxy's exporter.
    r = stack.pedir("GET", "/metrics")
    assert r.status == 404 and b"haproxy_" not in r.corpo


def test_haproxy_conta_cada_pedido(http):
    haproxy = endereco(http, "haproxy")
    antes = soma(haproxy, "haproxy_frontend_http_requests_total", proxy="crebito")
    # Every backend's: on Citus most requests go to a node's (roteamento.lua).
    servidores = soma(haproxy, "haproxy_server_http_responses_total")
    enviados = 2 * 25
    carga(http, 25)
    assert soma(haproxy, "haproxy_frontend_http_requests_total", proxy="crebito") - antes == enviados
    assert soma(haproxy, "haproxy_server_http_responses_total") - servidores == enviados
    # A server per worker, each with its queue and response times.
    nomes = {r["server"] for n, r, _ in series(haproxy) if n == "haproxy_server_status" and r["proxy"] == "api"}
    assert nomes == {f"{api}_{w}" for api in ("api01", "api02") for w in range(1, http.workers + 1)}


@pytest.mark.unico
def test_haproxy_volta_no_mesmo_endereco_de_metricas(http):
    """The launcher holds the metrics listener and hands it to each HAProxy it
    starts: while HAProxy is down no other process can take the port, so the
    one that comes back (and the API behind it) always starts."""
    haproxy = endereco(http, "haproxy")
    host, porta = haproxy.rsplit(":", 1)
    pid = http.pid("haproxy")
    os.kill(pid, signal.SIGKILL)
    with socket.socket() as s, pytest.raises(OSError):
        s.bind((host, int(porta)))
    assert esperar(lambda: http.pid("haproxy") != pid, 10)
    assert http.atendeu(10)
    assert soma(haproxy, "haproxy_frontend_http_requests_total", proxy="crebito") >= 1


def commits(stack):
    """Commits in the database crebito, over every node."""
    return sum(
        soma(a.endereco, "pg_stat_database_xact_commit", datname="crebito") or 0 for a in alvos(stack, "postgres")
    )


def test_postgres_conta_os_commits(http):
    for alvo in alvos(http, "postgres"):
        # An HA standby may still be starting (cloned from the primary).
        assert esperar(lambda a=alvo: soma(a.endereco, "pg_up") == 1, 60, passo=0.5), alvo
    antes = commits(http)
    aceitas = carga(http, 20)
    assert aceitas == 20
    # A backend reports its counters at most once a second, and when idle.
    assert esperar(lambda: commits(http) - antes >= aceitas, 30, passo=0.5), (commits(http) - antes, aceitas)


def test_tamanho_de_cada_banco(stack):
    """Each node's exporter gives its databases' sizes under the name the
    exporter's own collector uses, though that collector, which measures them
    on every scrape, is off (stack/metricas-no.yml asks every 30 s)."""
    for alvo in alvos(stack, "postgres"):
        assert esperar(lambda a=alvo: soma(a.endereco, "pg_up") == 1, 60, passo=0.5), alvo
        assert soma(alvo.endereco, "pg_database_size_bytes", datname="crebito") > 1e6, alvo
        assert soma(alvo.endereco, "pg_scrape_collector_success", collector="bgwriter") == 1, alvo
        assert soma(alvo.endereco, "pg_scrape_collector_success", collector="database") is None, alvo


def livro(stack):
    """The crebito_* series of the exporters that carry them."""
    figuras = {}
    for alvo in alvos(stack, "postgres"):
        for nome, _, valor in series(alvo.endereco):
            if nome.startswith("crebito_"):
                figuras.setdefault(alvo.no, {})[nome] = valor
    return figuras


def test_figuras_do_livro_batem_com_o_livro(http, db):
    carga(http, 10)
    chave = {"Idempotency-Key": "metricas-1"}
    assert http.transacao(2, 5, "d", "chave", headers=chave).status == 200
    assert http.transacao(2, 5, "d", "chave", headers=chave).status == 200
    assert http.transacao(2, 10**9, "d", "demais", headers={"Idempotency-Key": "metricas-2"}).status == 422
    [(linhas,)] = db.execute("select count(*) from crebito.transacao").fetchall()
    [(saldo,)] = db.execute("select sum(saldo) from crebito.cliente").fetchall()
    esperado = {
        "crebito_clientes": 5,
        "crebito_lancamentos": linhas,
        "crebito_saldo_total": saldo,
        "crebito_saldos_abaixo_do_limite": 0,
        "crebito_livro_linhas": linhas,
        "crebito_livro_violacoes": 0,
        "crebito_livro_chaves_aceitas": 1,
        "crebito_livro_chaves_recusadas": 1,
    }
    assert linhas == 11

    def batem():
        figuras = livro(http)
        return figuras and all(esperado.items() <= f.items() for f in figuras.values()) and figuras

    # The audit's figures are cached 30 s (stack/metricas.yml); a standby replays.
    figuras = esperar(batem, 45, passo=0.5)
    assert figuras, livro(http)
    # Where the whole ledger is: not on a Citus worker.
    com_livro = {n["nome"] for n in http.nos if n["papel"] != "worker"}
    assert set(figuras) == com_livro


def cpu_moveu(carregar, cpu, vezes=10):
    """Whether cpu() grows while carregar() sends load, batch after batch, up
    to `vezes`: the kernel counts CPU in ticks of 10 ms, charged to whoever
    runs at the tick, so one batch of short calls may show nothing."""
    antes = cpu()
    for _ in range(vezes):
        carregar()
        if cpu() > antes:
            return True
    return False


def test_consumo_de_cada_processo(http):
    consumo = endereco(http, "processos")
    nomes = ["api01", "api02", "haproxy", *(n["nome"] for n in http.nos)]

    def cpu(p):
        return soma(consumo, "process_cpu_seconds_total", processo=p)

    antes = {p: cpu(p) for p in nomes}
    assert cpu_moveu(lambda: carga(http, 150), lambda: cpu("api01") + cpu("api02"))
    for p in nomes:
        assert soma(consumo, "process_resident_memory_bytes", processo=p) > 0, p
        assert soma(consumo, "process_processes", processo=p) >= 1, p
    for api in ("api01", "api02"):
        # The master and each worker.
        assert soma(consumo, "process_processes", processo=api) == 1 + http.workers
    for no in http.nos:
        # The postmaster and its auxiliaries, even where Patroni detaches it (HA).
        assert soma(consumo, "process_processes", processo=no["nome"]) >= 5, no["nome"]
    assert all(cpu(p) >= antes[p] for p in nomes)
    # The exporters' own cost is there too.
    assert soma(consumo, "process_cpu_seconds_total", processo="metricas-processos") > 0


@pytest.mark.unico
@pytest.mark.skipif(os.geteuid() != 0, reason="the exporters' OS user exists for a root launcher")
def test_o_exportador_so_le_as_figuras(stack):
    """crebito_metricas, by its OS user (with the API's group, which enters the
    socket's directory, as the launcher runs the exporters): the view, and no table."""

    def psql(sql):
        return subprocess.run(
            ["psql", "-X", "-A", "-t", "-h", f"{stack.var}/pgrun", "-U", "crebito_metricas", "-d", "crebito"]
            + ["-c", sql],
            capture_output=True,
            text=True,
            cwd="/",
            user="crebito-metricas",
            group="crebito-metricas",
            extra_groups=["crebito-api"],
        )

    assert psql("select clientes from ops.metricas(false)").stdout.strip() == "5"
    for sql in ("select count(*) from crebito.cliente", "select status from api.extrato(1)"):
        r = psql(sql)
        assert r.returncode != 0 and "permission denied" in r.stderr, sql
    r = psql("select 1")
    assert r.returncode == 0
    with pytest.raises(psycopg.OperationalError, match="Peer authentication failed"):
        psycopg.connect(f"host={stack.var}/pgrun dbname=crebito user=crebito_metricas").close()


def observar(var, enderecos, consultas):
    """`make observar` beside the stack recorded in var, on a free port, until
    Prometheus has every endpoint up and a series for each query, then Ctrl-C;
    returns (its active targets, its stderr, its port)."""
    porta = porta_livre()

    def todos_up():
        try:
            _, texto = pedir(f"127.0.0.1:{porta}", "/api/v1/targets")
        except OSError:
            return None
        ativos = json.loads(texto)["data"]["activeTargets"]
        return len(ativos) == len(enderecos) and all(t["health"] == "up" for t in ativos) and ativos

    env = dict(os.environ, CREBITO_VAR=var, CREBITO_PROMETHEUS=f"127.0.0.1:{porta}")
    proc = subprocess.Popen(
        ["make", "-s", "observar"], cwd=RAIZ, env=env, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        ativos = esperar(todos_up, 60, passo=0.5)
        assert ativos, pedir(f"127.0.0.1:{porta}", "/api/v1/targets")
        assert {t["scrapeUrl"] for t in ativos} == {f"http://{e}/metrics" for e in enderecos}
        # A series of each kind, as a person would graph it.
        for consulta in consultas:
            _, texto = pedir(f"127.0.0.1:{porta}", f"/api/v1/query?query={urllib.parse.quote(consulta)}")
            assert json.loads(texto)["data"]["result"], consulta
    finally:
        # Ctrl-C, as a terminal sends it to make and everything it runs.
        os.killpg(proc.pid, signal.SIGINT)
        _, erros = proc.communicate(timeout=30)
    assert "Traceback" not in erros, erros
    return ativos, erros, porta


def test_make_observar_raspa_cada_endpoint(stack):
    todos = alvos(stack, "haproxy") + alvos(stack, "postgres") + alvos(stack, "processos")
    consultas = ("haproxy_frontend_http_requests_total", "pg_up", "process_cpu_seconds_total")
    ativos, _, porta = observar(stack.var, [a.endereco for a in todos], consultas)
    assert all(t["scrapeInterval"] == "1s" for t in ativos)
    assert os.path.isdir(os.path.join(stack.var, "prometheus", "dados"))
    assert subprocess.run(["pgrep", "-f", f"listen-address=127.0.0.1:{porta}"], capture_output=True).returncode == 1
