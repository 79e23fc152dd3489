"""The Docker deployment, run for real: first `make docker` itself on a
private engine, interrupted (Ctrl-C, SIGKILL, SIGTERM) at its several stages;
then the images built from the Debian base, compose.yml brought up on a
Docker engine (the one DOCKER_HOST names, or a private dockerd on the same
folder as `make docker`'s, so its build cache is reused, when none answers
and we are root), and the official phases and the HTTP contract against it,
nothing outside the containers on the request path, the limits the engine
applied, the users its processes run as, the password PostgreSQL asks for,
kill -9 under idempotent load, and `down -v`.

Everything this module creates carries its own project name and image tag,
and is removed afterwards: a system engine's other containers, images and
volumes are never touched."""

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter

import psycopg
import pytest
import test_fases_oficiais
import test_http_contrato
import yaml
from conftest import LIMITES, RAIZ, Stack, porta_livre, relatar, sql_de_zerar
from test_falhas import SEM_RESPOSTA, ClienteDoBanco, esperar, primeiro_200

sys.path.insert(0, os.path.join(RAIZ, "docker"))
import motor  # noqa: E402
from projeto import IMAGENS, METRICAS, OBSERVACAO, SERVICOS, Projeto  # noqa: E402

WORKERS = 3
# Time to wait for the stack after `up`, a first start included (initdb).
PRONTO_EM = 120
# This module's images and projects carry it in their names.
MARCA = uuid.uuid4().hex[:8]
TAG = f"teste-{MARCA}"


class PilhaCompose(Stack):
    """The compose stack, with the native Stack's HTTP helpers."""

    def __init__(self, projeto):
        super().__init__(var=None, porta=projeto.porta, workers=WORKERS, launcher=None)
        self.projeto = projeto

    def esperar_pronto(self, limite=PRONTO_EM):
        if self.atendeu(limite):
            return
        logs = self.projeto.compose("logs", "--tail", "30", stdout=subprocess.PIPE, text=True, check=False)
        raise RuntimeError(f"the compose stack did not answer in {limite}s:\n{logs.stdout}")

    def dsn(self, user="crebito_api", passfile=None):
        """Through the database's socket, as the API connects: the host (as
        root) reaches it in the volume the db and API containers share."""
        passfile = passfile or self.projeto.env["CREBITO_SENHA_API"]
        pasta = self.projeto.volume("pgrun")
        return f"host={pasta} dbname=crebito user={user} passfile={passfile} connect_timeout=5"


@pytest.fixture(scope="module")
def pasta_do_motor():
    """The folder of this module's private engines (`make docker`'s own is
    /var/lib/crebito-docker): images, volumes, build cache."""
    pasta = tempfile.mkdtemp(prefix="crebito-docker-")
    yield pasta
    # What a failed test may have left: engines (its `make docker` was
    # stopped when the test ended, by make_parado_no_fim).
    restantes = motor.dockerds(pasta)
    motor.parar_dockerds(pasta)
    shutil.rmtree(pasta, ignore_errors=True)
    assert restantes == []


@pytest.fixture
def make_parado_no_fim():
    """A test that fails leaves its `make docker` running, which holds the
    engine's folder for every test after it: Ctrl-C it (it then stops its
    engine), and kill it if it does not end."""
    yield
    for make in MakeDocker.iniciados:
        if make.p.poll() is None:
            os.killpg(make.p.pid, signal.SIGINT)
            try:
                make.p.wait(timeout=180)
            except subprocess.TimeoutExpired:
                os.killpg(make.p.pid, signal.SIGKILL)
                make.p.wait()


@pytest.fixture(scope="module")
def senha():
    pasta = tempfile.mkdtemp(prefix="crebito-senha-")
    yield os.path.join(pasta, "crebito_api.pgpass")
    shutil.rmtree(pasta, ignore_errors=True)


@pytest.fixture(scope="module")
def engine(pasta_do_motor):
    if not motor.responde() and os.geteuid() != 0:
        pytest.skip("no Docker engine answers, and only root can start a private one")
    # A SIGTERM (a CI timeout) unwinds like Ctrl-C, so pytest still runs the
    # finalizers that stop a private engine and remove its files.
    anterior = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        with motor.motor(dados=pasta_do_motor) as env:
            yield env
    finally:
        signal.signal(signal.SIGTERM, anterior)


@pytest.fixture(scope="module")
def projeto(engine, senha, pytestconfig):
    """The images built once, and the password file, for this module; its
    metrics recorded in a folder of its own, which the processes exporter's
    user (nobody) may enter."""
    pasta = tempfile.mkdtemp(prefix="crebito-docker-metricas-")
    os.chmod(pasta, 0o755)
    p = Projeto(engine, nome=f"crebito-teste-{MARCA}", porta=porta_livre(), tag=TAG, senha=senha, pasta=pasta)
    try:
        t0 = time.monotonic()
        p.construir(sempre=True)
        relatar(pytestconfig, f"docker: base image and the images built in {time.monotonic() - t0:.1f}s")
        yield p
    finally:
        p.descer()
        for nome in IMAGENS:
            p.docker("rmi", p.imagem(nome), capture_output=True, check=False)
        shutil.rmtree(pasta, ignore_errors=True)


@pytest.fixture(scope="module")
def pilha_docker(projeto, pytestconfig):
    """The compose stack, up, its endpoints recorded and its processes
    exporter running, as `make docker` leaves them; its time to the first 200
    is reported."""
    t0 = time.monotonic()
    projeto.compose("up", "-d", "--no-build")
    pilha = PilhaCompose(projeto)
    pilha.esperar_pronto()
    pilha.primeiro_200 = time.monotonic() - t0
    relatar(pytestconfig, f"docker: `up` to the first 200, the database initialised: {pilha.primeiro_200:.1f}s")
    projeto.observar()
    yield pilha
    projeto.parar_observacao()
    projeto.descer()


def zerar(pilha):
    pilha.projeto.psql("; ".join(sql_de_zerar()))


@pytest.fixture
def http(pilha_docker):
    zerar(pilha_docker)
    return pilha_docker


@pytest.fixture
def api_db(http):
    with psycopg.connect(http.dsn(), autocommit=True) as conn:
        yield conn


# -- make docker, interrupted -------------------------------------------------------
# These run first, before this module's own engine starts on the same folder
# (two engines never share one): a private engine because DOCKER_HOST names
# nothing, on pasta_do_motor; each `make docker` in a session of its own, as
# a terminal runs it, so a "Ctrl-C" reaches make and Python together.


class MakeDocker:
    iniciados = []

    def __init__(self, pasta, senha, porta):
        self.pasta = pasta
        self.porta = porta
        env = dict(
            os.environ,
            DOCKER_HOST=f"unix://{pasta}/nenhum.sock",
            CREBITO_DOCKER_DADOS=pasta,
            CREBITO_PORT=str(porta),
            COMPOSE_PROJECT_NAME=f"crebito-make-{MARCA}",
            CREBITO_TAG=TAG,
            CREBITO_SENHA_API=senha,
        )
        self.saida = tempfile.TemporaryFile()
        self.p = subprocess.Popen(
            ["make", "-s", "docker"], cwd=RAIZ, env=env, start_new_session=True, stdout=self.saida, stderr=self.saida
        )
        self.iniciados.append(self)

    def comandos(self):
        """The command lines of make's descendants."""
        linhas = []
        for pid in arvore(self.p.pid)[1:]:
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    linhas.append(f.read().replace(b"\0", b" ").decode(errors="replace"))
            except OSError:
                pass
        return linhas

    def esperar_comando(self, trecho, limite):
        def achou():
            if self.p.poll() is not None:
                raise AssertionError(f"make docker exited with {self.p.returncode}:\n{self.log()}")
            return any(trecho in c for c in self.comandos())

        assert esperar(achou, limite, passo=0.2), f"no {trecho!r} under make docker in {limite}s:\n{self.log()}"

    def serve(self, limite):
        pilha = Stack(var=None, porta=self.porta, workers=WORKERS, launcher=None)
        return pilha.atendeu(limite)

    def terminar(self, limite=180):
        """Waits for make to exit; returns its code."""
        try:
            return self.p.wait(timeout=limite)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"make docker still running {limite}s after the signal:\n{self.log()}") from None

    def log(self, limite=4000):
        self.saida.seek(0)
        texto = self.saida.read().decode(errors="replace")
        return texto[-limite:] if limite else texto


def montado_em(pasta):
    with open("/proc/self/mountinfo") as f:
        return [linha.split()[4] for linha in f if linha.split()[4].startswith(pasta)]


@pytest.fixture
def raiz_necessaria():
    if os.geteuid() != 0 or not shutil.which("dockerd"):
        pytest.skip("a private engine needs root and dockerd")


@pytest.mark.usefixtures("make_parado_no_fim")
def test_ctrl_c_durante_a_imagem_base_para_o_motor(raiz_necessaria, pasta_do_motor, senha):
    make = MakeDocker(pasta_do_motor, senha, porta_livre())
    # The folder is new: the base image is made with debootstrap.
    make.esperar_comando("debootstrap", 180)
    assert len(motor.dockerds(pasta_do_motor)) == 1
    os.killpg(make.p.pid, signal.SIGINT)
    make.terminar()
    assert motor.dockerds(pasta_do_motor) == []
    assert montado_em(pasta_do_motor) == []
    assert montado_em("/tmp/crebito-base-") == []


@pytest.mark.usefixtures("make_parado_no_fim")
def test_ctrl_c_durante_a_construcao_das_imagens_para_o_motor(raiz_necessaria, pasta_do_motor, senha):
    make = MakeDocker(pasta_do_motor, senha, porta_livre())
    make.esperar_comando(" build", 900)
    time.sleep(2)
    os.killpg(make.p.pid, signal.SIGINT)
    make.terminar()
    assert motor.dockerds(pasta_do_motor) == []
    assert montado_em(pasta_do_motor) == []


@pytest.mark.usefixtures("make_parado_no_fim")
def test_sigkill_deixa_um_motor_que_o_proximo_make_docker_reusa(raiz_necessaria, pasta_do_motor, senha, pytestconfig):
    porta = porta_livre()
    make = MakeDocker(pasta_do_motor, senha, porta)
    assert make.serve(900), make.log()
    # Each container's CPU and memory, from the exporter make docker started, recorded for make observar.
    # (logged once the containers are up, maybe after the first 200)
    endereco = re.compile(r"http://(127\.0\.0\.1:\d+)/metrics \(processos\)")
    achado = esperar(lambda: endereco.search(make.log(limite=None)), 60, passo=0.2)
    assert achado, make.log()
    consumo = achado.group(1)
    sys.path.insert(0, os.path.join(RAIZ, "stack"))
    import metricas
    from test_metricas import soma

    pasta = metricas.pasta_docker(f"crebito-make-{MARCA}")
    assert metricas.endereco(metricas.ler(pasta), "processos") == consumo
    assert soma(consumo, "process_processes", processo="api01") == 1 + WORKERS
    [motor_antigo] = motor.dockerds(pasta_do_motor)
    # kill -9 of make and everything in its session: the engine, a session of
    # its own, is left behind, and so are the containers it runs.
    os.killpg(make.p.pid, signal.SIGKILL)
    make.terminar()
    assert motor.dockerds(pasta_do_motor) == [motor_antigo]
    assert make.serve(10)

    t0 = time.monotonic()
    segundo = MakeDocker(pasta_do_motor, senha, porta)
    motores = set()

    def serve():
        motores.update(motor.dockerds(pasta_do_motor))
        # The old containers still answer: wait until this run is up.
        return "(Ctrl-C stops)" in segundo.log() and segundo.serve(0.5)

    assert esperar(serve, 600, passo=0.2), segundo.log()
    relatar(pytestconfig, f"docker: make docker after a SIGKILL: serving again in {time.monotonic() - t0:.1f}s")
    assert motores == {motor_antigo}
    assert "reusing the private Docker engine" in segundo.log(limite=None)
    # SIGTERM to make alone (as `kill` or a service manager sends it): make
    # passes it on, and the containers and the engine are stopped.
    segundo.p.terminate()
    segundo.terminar()
    assert motor.dockerds(pasta_do_motor) == []
    assert montado_em(pasta_do_motor) == []
    assert not segundo.serve(1)
    # The exporter stopped with it, and the folder says no stack runs there.
    with pytest.raises(OSError):
        soma(consumo, "process_processes")
    assert not metricas.rodando(pasta)
    shutil.rmtree(pasta)
    with contextlib.suppress(OSError):
        os.removedirs(os.path.dirname(pasta))  # <var>/docker and <var>, when this made them


# -- the images ---------------------------------------------------------------------


def test_imagens_da_mesma_base_debian(projeto, pytestconfig):
    def inspecionar(imagem):
        r = projeto.docker("image", "inspect", imagem, stdout=subprocess.PIPE, text=True)
        return json.loads(r.stdout)[0]

    base = inspecionar("debian:bookworm-slim")["RootFS"]["Layers"]
    tamanhos = {}
    for nome in IMAGENS:
        imagem = inspecionar(projeto.imagem(nome))
        assert imagem["RootFS"]["Layers"][: len(base)] == base, nome
        tamanhos[nome] = imagem["Size"] / 1e6
    relatar(pytestconfig, "docker: image sizes (MB): " + ", ".join(f"{n} {mb:.0f}" for n, mb in tamanhos.items()))


def pacotes(projeto, imagem, nomes):
    """{package: version} of those of nomes installed in the image."""
    r = projeto.docker(
        "run",
        "--rm",
        "--network",
        "none",
        "--entrypoint",
        "dpkg-query",
        imagem,
        "-W",
        "-f",
        "${Package}|${Version}|${db:Status-Status}\\n",
        *nomes,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        check=False,
    )
    return {p: v for p, v, st in (linha.split("|") for linha in r.stdout.splitlines()) if st == "installed"}


def test_as_imagens_rodam_os_pacotes_debian_do_nativo(projeto):
    esperados = {"db": ["postgresql-15"], "haproxy": ["haproxy"], "api": ["python3.11", "libev4"]}
    for nome, lista in esperados.items():
        versoes = pacotes(projeto, projeto.imagem(nome), lista)
        assert set(versoes) == set(lista), nome
        # Where this machine runs the native stack, the same upstream release
        # (the Debian revision may differ: the image gets the mirror's newest).
        nativo = subprocess.run(
            ["dpkg-query", "-W", "-f", "${Package}|${Version}|${db:Status-Status}\\n", *lista],
            capture_output=True,
            text=True,
        )
        for p, v, st in (linha.split("|") for linha in nativo.stdout.splitlines()):
            if st == "installed":
                assert versoes[p].split("-")[0] == v.split("-")[0], (nome, p, versoes[p], v)


def test_imagem_da_api_sem_ferramentas_de_compilacao(projeto):
    assert pacotes(projeto, projeto.imagem("api"), ["gcc", "libc6-dev", "libev-dev", "python3-dev"]) == {}
    assert pacotes(projeto, projeto.imagem("api"), ["libev4"]) != {}


# -- the stack ------------------------------------------------------------------------


def test_primeiro_200_depois_do_up(pilha_docker):
    assert pilha_docker.primeiro_200 > 0
    r = pilha_docker.extrato(1)
    assert r.status == 200
    assert r.json["saldo"]["limite"] == LIMITES[1]


def limites_do_compose():
    """The challenge's services' limits (not those of the profile `metricas`)."""
    with open(os.path.join(RAIZ, "compose.yml")) as f:
        servicos = yaml.safe_load(f)["services"]
    return {nome: s["deploy"]["resources"]["limits"] for nome, s in servicos.items() if "profiles" not in s}


def cgrupo(pid, controlador):
    """The container's cgroup v1 directory for controlador, from /proc."""
    with open(f"/proc/{pid}/cgroup") as f:
        for linha in f:
            _, controladores, caminho = linha.rstrip("\n").split(":", 2)
            if controlador in controladores.split(","):
                return f"/sys/fs/cgroup/{controladores}{caminho}"
    raise LookupError(controlador)


def ler_int(caminho):
    with open(caminho) as f:
        return int(f.read())


def test_limites_aplicados_pelo_engine_iguais_aos_do_compose(pilha_docker):
    limites = limites_do_compose()
    assert set(limites) == set(SERVICOS)
    for servico, limite in limites.items():
        info = pilha_docker.projeto.inspecionar(servico)
        host = info["HostConfig"]
        memoria = int(limite["memory"].removesuffix("MB")) * 2**20
        nano = round(float(limite["cpus"]) * 1e9)
        assert host["Memory"] == memoria, servico
        if host["NanoCpus"]:
            assert host["NanoCpus"] == nano, servico
        else:
            assert host["CpuQuota"] * 1e9 / host["CpuPeriod"] == nano, servico
        # And what the kernel enforces: the container's cgroups.
        pid = info["State"]["Pid"]
        assert ler_int(os.path.join(cgrupo(pid, "memory"), "memory.limit_in_bytes")) == memoria, servico
        cpu = cgrupo(pid, "cpu")
        quota, periodo = ler_int(os.path.join(cpu, "cpu.cfs_quota_us")), ler_int(os.path.join(cpu, "cpu.cfs_period_us"))
        assert round(quota * 1e9 / periodo) == nano, servico


def arvore(pid):
    """pid and its descendants (those that exit meanwhile left out)."""
    pids = [pid]
    for p in pids:
        try:
            for tarefa in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{tarefa}/children") as f:
                    pids.extend(int(c) for c in f.read().split())
        except (FileNotFoundError, ProcessLookupError):
            # Gone, or exiting: /proc answers ESRCH for a task being reaped.
            continue
    return pids


def uids(pid):
    with open(f"/proc/{pid}/status") as f:
        linha = next(linha for linha in f if linha.startswith("Uid:"))
    return [int(u) for u in linha.split()[1:]]


def test_nenhum_processo_da_pilha_roda_como_root(pilha_docker):
    for servico in SERVICOS:
        pids = arvore(pilha_docker.projeto.pid(servico))
        assert len(pids) >= (2 if servico != "haproxy" else 1), servico
        for pid in pids:
            assert 0 not in uids(pid), (servico, pid, uids(pid))


def test_postgres_recusa_conexao_sem_a_senha(pilha_docker, tmp_path):
    vazio = tmp_path / "vazio"
    vazio.write_text("")
    vazio.chmod(0o600)
    errada = tmp_path / "errada"
    errada.write_text("*:*:crebito:crebito_api:outra\n*:*:*:postgres:outra\n")
    errada.chmod(0o600)
    with pytest.raises(psycopg.OperationalError, match="password"):
        psycopg.connect(pilha_docker.dsn(passfile=vazio))
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(pilha_docker.dsn(passfile=errada))
    # The superuser only as its own OS user inside its container; the tables'
    # owner not at all.
    with pytest.raises(psycopg.OperationalError, match="Peer authentication failed"):
        psycopg.connect(pilha_docker.dsn("postgres", passfile=errada))
    with pytest.raises(psycopg.OperationalError, match="no pg_hba.conf entry"):
        psycopg.connect(pilha_docker.dsn("crebito", passfile=errada))
    # With the secret: the API's role, which may only call the api functions.
    with psycopg.connect(pilha_docker.dsn(), autocommit=True) as conn:
        assert conn.execute("select status from api.extrato(1)").fetchone() == (200,)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("select saldo from crebito.cliente")


def test_arquivo_da_senha_0600_fora_do_repositorio(projeto):
    caminho = projeto.env["CREBITO_SENHA_API"]
    st = os.stat(caminho)
    assert st.st_mode & 0o777 == 0o600
    assert not os.path.realpath(caminho).startswith(RAIZ + os.sep)
    usuario = projeto.docker(
        "image", "inspect", "-f", "{{.Config.User}}", projeto.imagem("api"), stdout=subprocess.PIPE, text=True
    ).stdout.strip()
    assert f"{st.st_uid}:{st.st_gid}" == usuario


def escutas_tcp(pid):
    """The TCP ports listening in pid's network namespace."""
    portas = set()
    for arquivo in ("tcp", "tcp6"):
        with open(f"/proc/{pid}/net/{arquivo}") as f:
            for linha in list(f)[1:]:
                campos = linha.split()
                if campos[3] == "0A":  # LISTEN
                    portas.add(int(campos[1].rsplit(":", 1)[1], 16))
    return portas


def test_nada_fora_dos_conteineres_no_caminho_do_pedido(pilha_docker):
    projeto = pilha_docker.projeto
    assert pilha_docker.extrato(1).status == 200
    sys.path.insert(0, os.path.join(RAIZ, "bench"))
    import conteineres

    # No docker-proxy at all, and nothing published.
    assert conteineres.fora_dos_conteineres(projeto.porta) == {}
    for servico in SERVICOS:
        info = projeto.inspecionar(servico)
        assert not info["HostConfig"]["PortBindings"], servico
        assert info["HostConfig"]["NetworkMode"] == ("host" if servico == "haproxy" else "none"), servico
    # HAProxy listens on the port in the host's own network namespace.
    haproxy = projeto.pid("haproxy")
    assert os.readlink(f"/proc/{haproxy}/ns/net") == os.readlink("/proc/self/ns/net")
    assert projeto.porta in escutas_tcp(haproxy)
    # The API instances and the database listen on no TCP port: unix sockets only.
    for servico in ("api01", "api02", "db"):
        for pid in arvore(projeto.pid(servico)):
            assert escutas_tcp(pid) == set(), servico
    assert sorted(os.listdir(projeto.volume("sockets"))) == sorted(
        f"{api}-{n}.sock" for api in ("api01", "api02") for n in range(1, WORKERS + 1)
    )


def test_bench_le_os_cgrupos_dos_conteineres(pilha_docker):
    """bench/conteineres.py measures each container through the group the
    engine made for it."""
    sys.path.insert(0, os.path.join(RAIZ, "bench"))
    import conteineres
    import pilha as bench

    cgrupos = conteineres.CgruposDoEngine(pilha_docker.projeto, bench.orcamento()[0])
    assert cgrupos.modo == "v1"
    antes = {nome: cgrupos.cpu_s(nome) for nome in bench.COMPONENTES}
    for _ in range(50):
        assert pilha_docker.extrato(1).status == 200
    for nome in bench.COMPONENTES:
        assert cgrupos.cpu_s(nome) > antes[nome], nome
        assert 0 < cgrupos.pico_mb(nome) <= cgrupos.limites[nome][1], nome


def test_metricas_do_haproxy_e_do_postgres(http):
    """HAProxy's exporter (in its container, on the host's loopback) counts
    each request; PostgreSQL's (a service of the profile `metricas`, which
    the project turns on) answers with crebito's figures, as no root."""
    from test_metricas import soma

    env = http.projeto.env
    haproxy, postgres = env["CREBITO_METRICAS_HAPROXY"], env["CREBITO_METRICAS_POSTGRES"]
    assert haproxy.startswith("127.0.0.1:") and postgres.startswith("127.0.0.1:")
    antes = soma(haproxy, "haproxy_frontend_http_requests_total", proxy="crebito")
    for i in range(10):
        assert http.transacao(1 + i % 5, 10, "c", "metrica").status == 200
    assert soma(haproxy, "haproxy_frontend_http_requests_total", proxy="crebito") - antes == 10
    assert esperar(lambda: soma(postgres, "pg_up") == 1, 60, passo=0.5)
    # The client rows' figures are read on every scrape.
    assert esperar(lambda: soma(postgres, "crebito_lancamentos") == 10, 30, passo=0.5)
    assert soma(postgres, "crebito_clientes") == 5
    assert soma(postgres, "pg_stat_database_xact_commit", datname="crebito") >= 10
    # The size asked every 30 s (stack/metricas-no.yml), not by the collector.
    assert soma(postgres, "pg_database_size_bytes", datname="crebito") > 1e6
    assert soma(postgres, "pg_scrape_collector_success", collector="database") is None
    for servico in OBSERVACAO:
        info = http.projeto.inspecionar(servico)
        assert info["HostConfig"]["NetworkMode"] == "host", servico
        for pid in arvore(info["State"]["Pid"]):
            assert 0 not in uids(pid), servico


def test_consumo_de_cada_conteiner(http):
    """The processes exporter (stack/consumo.py on the host, as `make docker`
    runs it) answers on 127.0.0.1 only, as no root, with the native names: each
    container's CPU, which moves with the load, and memory, the exporters' too;
    a restarted container's new processes are found."""
    from test_metricas import cpu_moveu, soma
    from test_metricas import escutas_tcp as escutas_da_maquina

    projeto = http.projeto
    consumo = projeto.env["CREBITO_METRICAS_PROCESSOS"]
    assert consumo.startswith("127.0.0.1:")
    assert escutas_da_maquina()[int(consumo.rsplit(":", 1)[1])] == {"127.0.0.1"}
    for pid in arvore(projeto.consumo.pid):
        assert 0 not in uids(pid), pid
    servicos = (*SERVICOS, *OBSERVACAO, "metricas-processos")
    assert esperar(lambda: all(soma(consumo, "process_processes", processo=s) for s in servicos), 10, passo=0.2)

    def carregar():
        # Round robin: half of them through api01's workers.
        for i in range(200):
            assert http.extrato(1 + i % 5).status == 200

    assert cpu_moveu(carregar, lambda: soma(consumo, "process_cpu_seconds_total", processo="api01"))
    for servico in servicos:
        assert soma(consumo, "process_resident_memory_bytes", processo=servico) > 0, servico
        assert soma(consumo, "process_resident_private_memory_bytes", processo=servico) > 0, servico
    # The master and each worker, as natively.
    assert soma(consumo, "process_processes", processo="api01") == 1 + WORKERS
    assert soma(consumo, "process_processes", processo="db") >= 5
    # kill -9 of api01's first process: the engine restarts the container, whose
    # new processes are in the same cgroup.
    pid = projeto.pid("api01")
    os.kill(pid, signal.SIGKILL)
    assert esperar_reinicio(projeto, "api01", pid)
    assert esperar(lambda: soma(consumo, "process_processes", processo="api01") == 1 + WORKERS, 30, passo=0.2)
    assert pid not in arvore(projeto.pid("api01"))
    assert soma(consumo, "process_resident_memory_bytes", processo="api01") > 0
    assert http.atendeu(30)


def test_make_observar_ao_lado_do_docker(http):
    """`make observar`, pointed at the project's folder, finds its endpoints
    (docker/projeto.py recorded them as the launcher does) and scrapes them all."""
    from test_metricas import observar

    sys.path.insert(0, os.path.join(RAIZ, "stack"))
    import metricas

    alvos = metricas.ler(http.projeto.pasta)
    assert sorted(a.job for a in alvos) == ["haproxy", "postgres", "processos"]
    assert metricas.rodando(http.projeto.pasta)
    consultas = ("haproxy_frontend_http_requests_total", "pg_up", 'process_cpu_seconds_total{processo="db"}')
    _, erros, _ = observar(http.projeto.pasta, [a.endereco for a in alvos], consultas)
    assert "no stack is running" not in erros, erros


# -- kill -9 under load, and down ----------------------------------------------------------


def esperar_reinicio(projeto, servico, pid_antigo):
    def voltou():
        pid = projeto.inspecionar(servico)["State"]["Pid"]
        return pid and pid != pid_antigo

    return esperar(voltou, 60, passo=0.2)


def test_kill9_da_api01_e_do_db_sob_carga_idempotente(http, capsys):
    projeto = http.projeto
    parar = threading.Event()
    clientes = [ClienteDoBanco(i, http, parar) for i in range(4)]
    for c in clientes:
        c.start()
    medidas = []
    try:
        time.sleep(2)
        for servico in ("api01", "db"):
            pid = projeto.pid(servico)
            os.kill(pid, signal.SIGKILL)
            t0 = time.monotonic()
            assert esperar_reinicio(projeto, servico, pid), f"{servico} did not come back"
            ate_volta = time.monotonic() - t0
            ate_200 = primeiro_200(http, t0, limite=60)
            assert ate_200 is not None, f"no 200 within 60s of killing {servico}"
            medidas.append((servico, ate_volta, ate_200))
            time.sleep(2)
    finally:
        parar.set()
        for c in clientes:
            c.join(timeout=90)
    assert not any(c.is_alive() for c in clientes)

    status = sum((c.status for c in clientes), Counter())
    aceitas = {k: v for c in clientes for k, v in c.aceitas.items()}
    livro = {
        (int(cliente), chave): (int(st), resposta, tid)
        for cliente, chave, st, resposta, tid in projeto.psql(
            "select i.cliente_id, i.chave, i.status, i.resposta, t.lancamento from crebito.idempotencia as i"
            " left join crebito.transacao as t on (t.cliente_id, t.lancamento) = (i.cliente_id, i.lancamento)"
        )
    }
    [[linhas]] = projeto.psql("select count(*) from crebito.transacao")
    with capsys.disabled():
        for servico, ate_volta, ate_200 in medidas:
            print(f"\ndocker: kill -9 {servico}: running again in {ate_volta:.1f}s, first 200 after {ate_200:.1f}s")
        print(f"docker: answers {dict(status)}; acknowledged {len(aceitas)}; ledger rows {linhas}")

    for servico in ("api01", "db"):
        assert projeto.inspecionar(servico)["RestartCount"] >= 1, servico
    assert [x for c in clientes for x in c.inesperadas] == []
    assert [x for c in clientes for x in c.abandonadas] == []
    assert status[500] == 0
    # The faults were felt, and the load went on around them.
    assert sum(status[s] for s in SEM_RESPOSTA) > 0
    assert len(aceitas) > 50
    # Every acknowledged transaction is there once, with the answer the client saw.
    for chave, corpo in aceitas.items():
        assert livro[chave][:2] == (200, corpo), chave
        assert livro[chave][2], chave
    assert int(linhas) == len(aceitas)
    with psycopg.connect(http.dsn(), autocommit=True) as conn:
        assert conn.execute("select * from api.auditoria()").fetchall() == []


def test_outro_projeto_e_outra_pilha_e_down_remove_tudo(projeto, http):
    # The module's stack holds a transaction; a second project name starts empty.
    assert http.transacao(1, 10, "c", "primeira").status == 200
    # Its own metrics ports too (Projeto picks free ones): both HAProxys are in the host's network.
    env = {k: v for k, v in projeto.env.items() if k not in METRICAS}
    outro = Projeto(env, nome=f"{projeto.nome}-b", porta=porta_livre())
    try:
        outro.compose("up", "-d", "--no-build")
        segunda = PilhaCompose(outro)
        segunda.esperar_pronto()
        assert segunda.extrato(1).json["saldo"]["total"] == 0
        assert http.extrato(1).json["saldo"]["total"] == 10
        for tipo in ("container", "volume"):
            assert outro.rotulados(tipo), tipo
        # No service uses a compose network.
        assert outro.rotulados("network") == []
    finally:
        outro.descer()
    for tipo in ("container", "volume"):
        assert outro.rotulados(tipo) == [], tipo


# The official phases and every HTTP contract test, collected here again:
# their `http` and `api_db` fixtures are this module's, on the compose stack.
# Added last, so pytest runs them after the tests above: `make docker`'s,
# which must run before this module's engine takes the folder, come first.
for _modulo in (test_fases_oficiais, test_http_contrato):
    globals().update({nome: f for nome, f in vars(_modulo).items() if nome.startswith("test_")})
