"""The Docker compose deployment, checked without a Docker engine: compose.yml
parsed as YAML against the challenge's rules and against the files it refers
to (haproxy.cfg, server.py, db/, stack/postgresql.conf, Dockerfile)."""

import fnmatch
import os
import re
from decimal import Decimal

import pytest
import yaml
from conftest import RAIZ

SERVICOS = {"haproxy", "api01", "api02", "db"}
APIS = ("api01", "api02")
INIT_DIR = "/docker-entrypoint-initdb.d"


def ler(*caminho):
    with open(os.path.join(RAIZ, *caminho), encoding="utf-8") as f:
        return f.read()


@pytest.fixture(scope="module")
def compose():
    return yaml.safe_load(ler("compose.yml"))


@pytest.fixture(scope="module")
def servicos(compose):
    return compose["services"]


def ambiente(servico):
    env = servico.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def conninfo(texto):
    return dict(par.split("=", 1) for par in texto.split())


def test_os_quatro_servicos(servicos):
    assert set(servicos) == SERVICOS
    assert servicos["haproxy"]["image"] == "haproxy:2.6"
    assert servicos["db"]["image"] == "postgres:15"
    for nome in APIS:
        assert servicos[nome]["build"] in (".", {"context": "."})


def test_so_o_haproxy_publica_a_porta_9999(servicos):
    assert [str(p) for p in servicos["haproxy"]["ports"]] == ["9999:9999"]
    for nome in SERVICOS - {"haproxy"}:
        assert "ports" not in servicos[nome], nome


def test_limites_em_todo_servico_dentro_do_orcamento(servicos):
    cpus = Decimal(0)
    memoria = 0
    for nome, servico in servicos.items():
        limites = servico["deploy"]["resources"]["limits"]
        assert isinstance(limites["cpus"], str), f"{nome}: cpus as a string"
        assert re.fullmatch(r"\d+MB", limites["memory"]), f"{nome}: memory in MB, not {limites['memory']!r}"
        assert Decimal(limites["cpus"]) > 0
        cpus += Decimal(limites["cpus"])
        memoria += int(limites["memory"][:-2])
    assert cpus <= Decimal("1.5")
    assert memoria <= 550


def test_haproxy_recebe_cada_variavel_do_seu_cfg(servicos):
    referenciadas = set(re.findall(r"\$\{(CREBITO_\w+)\}", ler("haproxy.cfg")))
    assert {"CREBITO_BIND", "CREBITO_API01", "CREBITO_API02", "CREBITO_WORKERS"} <= referenciadas
    env = ambiente(servicos["haproxy"])
    # A variable the cfg tests with `.if defined(...)` may be left unset, and
    # compose uses the form where an instance's workers share one address:
    # the per-worker servers (CREBITO_API01_1, ...) are the native stack's.
    opcionais = set(re.findall(r"^\s*\.if defined\((CREBITO_\w+)\)", ler("haproxy.cfg"), re.M))
    por_worker = {v for v in referenciadas if re.fullmatch(r"CREBITO_API0\d_\d", v)}
    assert referenciadas - opcionais - por_worker <= set(env)
    assert env["CREBITO_BIND"].endswith(":9999")
    assert ("./haproxy.cfg", "/usr/local/etc/haproxy/haproxy.cfg") == tuple(
        servicos["haproxy"]["volumes"][0].split(":")[:2]
    )
    assert os.path.isfile(os.path.join(RAIZ, "haproxy.cfg"))


def test_haproxy_aponta_para_as_apis_e_seus_workers(servicos):
    env = ambiente(servicos["haproxy"])
    for n, nome in enumerate(APIS, start=1):
        api = ambiente(servicos[nome])
        host, _, porta = env[f"CREBITO_API0{n}"].rpartition(":")
        assert host == nome
        # HAProxy dials the port the instance listens on.
        assert api["CREBITO_LISTEN"] == f"0.0.0.0:{porta}"
        # maxconn per server must equal the instance's workers.
        assert api["CREBITO_WORKERS"] == env["CREBITO_WORKERS"]
    assert set(servicos["haproxy"]["depends_on"]) >= set(APIS)


def test_ambiente_das_apis_e_o_que_o_server_le(servicos):
    lidas = set(re.findall(r"os\.environ(?:\.get\(|\[)\"(\w+)\"", ler("server.py")))
    assert {"DATABASE_URL", "CREBITO_LISTEN", "CREBITO_WORKERS"} <= lidas
    db_env = ambiente(servicos["db"])
    for nome in APIS:
        env = ambiente(servicos[nome])
        assert set(env) <= lidas, set(env) - lidas
        assert {"DATABASE_URL", "CREBITO_LISTEN", "CREBITO_WORKERS"} <= set(env)
        assert int(env["CREBITO_WORKERS"]) >= 1
        dsn = conninfo(env["DATABASE_URL"])
        assert dsn["host"] == "db"
        assert dsn["user"] == "crebito_api"
        assert dsn["dbname"] == db_env["POSTGRES_DB"]
        assert dsn.get("port", "5432") == "5432"
        # The API starts only once the database answers.
        assert servicos[nome]["depends_on"]["db"]["condition"] == "service_healthy"
    assert "healthcheck" in servicos["db"]


def test_db_inicializa_com_o_schema(servicos):
    montagens = [v.split(":") for v in servicos["db"]["volumes"]]
    assert ["./db", INIT_DIR] in [m[:2] for m in montagens]
    # The entrypoint runs the top-level *.sh and *.sql[.gz|.xz|.zst] files of
    # its init directory, in name order, and skips subdirectories: schema.sql
    # must be the only one, and it must include every function itself.
    executados = sorted(
        f
        for f in os.listdir(os.path.join(RAIZ, "db"))
        if os.path.isfile(os.path.join(RAIZ, "db", f))
        and any(fnmatch.fnmatch(f, p) for p in ("*.sh", "*.sql", "*.sql.gz", "*.sql.xz", "*.sql.zst"))
    )
    assert executados == ["schema.sql"]
    incluidas = set(re.findall(r"^\\ir (functions/\S+\.sql)$", ler("db", "schema.sql"), re.M))
    funcoes = {f"functions/{f}" for f in os.listdir(os.path.join(RAIZ, "db", "functions")) if f.endswith(".sql")}
    assert funcoes and incluidas == funcoes


def test_db_com_as_configuracoes_do_cluster_nativo(servicos):
    comando = servicos["db"]["command"]
    assert comando[0] == "postgres"
    assert comando[1::2] == ["-c"] * (len(comando) // 2)
    flags = dict(c.split("=", 1) for c in comando[2::2])
    nativo = {}
    for linha in ler("stack", "postgresql.conf").splitlines():
        linha = linha.split("#", 1)[0].strip()
        if linha:
            chave, valor = (p.strip() for p in linha.split("=", 1))
            nativo[chave] = valor.strip("'")
    # Same settings, same values; only listening differs: TCP inside the network.
    assert set(flags) == set(nativo)
    assert {k: v for k, v in flags.items() if k != "listen_addresses"} == {
        k: v for k, v in nativo.items() if k != "listen_addresses"
    }
    assert nativo["listen_addresses"] == ""
    assert flags["listen_addresses"] == "*"
    # Durable, as the native cluster.
    assert flags["fsync"] == flags["synchronous_commit"] == "on"
    # Both instances' workers fit, besides the superuser's reserved slots.
    workers = sum(int(ambiente(servicos[n])["CREBITO_WORKERS"]) for n in APIS)
    assert int(flags["max_connections"]) >= workers + 3


def test_trust_so_sem_porta_publicada(servicos):
    env = ambiente(servicos["db"])
    if env.get("POSTGRES_HOST_AUTH_METHOD") == "trust":
        assert "ports" not in servicos["db"]
    else:
        assert env.get("POSTGRES_PASSWORD")


def test_healthcheck_do_db_usa_tcp(servicos):
    # During init the entrypoint's temporary server answers on the unix
    # socket only; a check over the socket would pass before the schema exists.
    teste = servicos["db"]["healthcheck"]["test"]
    assert "pg_isready" in teste
    assert "-h" in teste and teste[teste.index("-h") + 1] in ("127.0.0.1", "localhost")


def test_dockerfile_copia_arquivos_que_existem(servicos):
    dockerfile = ler("Dockerfile")
    instrucoes = [linha.split(None, 1) for linha in dockerfile.splitlines() if linha and not linha.startswith("#")]
    assert instrucoes[0] == ["FROM", "python:3.11-slim-bookworm"]
    copiados = [arg.split()[0] for inst, arg in (i for i in instrucoes if len(i) == 2) if inst == "COPY"]
    assert set(copiados) == {"server.py", "requirements.txt"}
    ignorar = [p for p in ler(".dockerignore").splitlines() if p and not p.startswith("#")]
    for arquivo in copiados:
        assert os.path.isfile(os.path.join(RAIZ, arquivo))
        # The last matching .dockerignore pattern decides; "!" keeps a file in the context.
        decisao = [p for p in ignorar if fnmatch.fnmatch(arquivo, p.lstrip("!"))]
        assert decisao and decisao[-1].startswith("!"), arquivo
    assert "pip install --no-cache-dir -r requirements.txt" in dockerfile
    # The compiler leaves in the layer that used it.
    assert re.search(r"apt-get purge -y --auto-remove [^\n]*gcc", dockerfile)
    assert 'CMD ["python", "server.py"]' in dockerfile
    assert "CREBITO_LISTEN=0.0.0.0:8080" in dockerfile
    # Every runtime requirement is pinned, so the image is reproducible.
    for linha in ler("requirements.txt").splitlines():
        if linha and not linha.startswith("#"):
            assert "==" in linha, linha
