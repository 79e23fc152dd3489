"""The Docker compose deployment, checked without a Docker engine: compose.yml
parsed as YAML against the challenge's rules and against the files it refers
to (docker/*.Dockerfile, haproxy.cfg, server.py, db/, stack/postgresql.conf).
tests/test_docker.py runs it on a real engine."""

import fnmatch
import os
import re
from decimal import Decimal

import pytest
import yaml
from conftest import RAIZ

SERVICOS = {"haproxy", "api01", "api02", "db"}
# Observation, outside the challenge's stack and budget: only with the profile `metricas`.
OBSERVACAO = {"metricas-db"}
APIS = ("api01", "api02")
IMAGEM = {"haproxy": "haproxy", "api01": "api", "api02": "api", "db": "db", "metricas-db": "metricas"}
SEGREDO = "/run/secrets/crebito_api"


def ler(*caminho):
    with open(os.path.join(RAIZ, *caminho), encoding="utf-8") as f:
        return f.read()


@pytest.fixture(scope="module")
def compose():
    return yaml.safe_load(ler("compose.yml"))


@pytest.fixture(scope="module")
def todos(compose):
    return compose["services"]


@pytest.fixture(scope="module")
def servicos(todos):
    """The challenge's stack: what `docker compose up` runs with no profile."""
    return {nome: s for nome, s in todos.items() if "profiles" not in s}


def ambiente(servico):
    env = servico.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def conninfo(texto):
    return dict(par.split("=", 1) for par in texto.split())


def instrucoes(dockerfile):
    """(INSTRUCTION, argument) of each line of a Dockerfile, continuations joined."""
    texto = re.sub(r"\\\n\s*", " ", ler(dockerfile))
    return [tuple(linha.split(None, 1)) for linha in texto.splitlines() if linha.strip() and linha[0] != "#"]


def test_os_quatro_servicos_construidos_de_docker(servicos, todos):
    assert set(servicos) == SERVICOS
    assert set(todos) - SERVICOS == OBSERVACAO
    for nome in OBSERVACAO:
        assert todos[nome]["profiles"] == ["metricas"], nome
    for nome, servico in todos.items():
        assert servico["image"] == f"crebito-{IMAGEM[nome]}:${{CREBITO_TAG:-latest}}"
        build = servico["build"]
        assert build["context"] == "."
        assert build["dockerfile"] == f"docker/{IMAGEM[nome]}.Dockerfile"
        # apt and pip reach their mirrors from the host's network.
        assert build["network"] == "host"
        assert os.path.isfile(os.path.join(RAIZ, build["dockerfile"]))


def test_toda_imagem_parte_do_debian_bookworm_slim():
    for nome in set(IMAGEM.values()):
        froms = [arg.split()[0] for inst, arg in instrucoes(f"docker/{nome}.Dockerfile") if inst == "FROM"]
        assert froms and set(froms) == {"debian:bookworm-slim"}, nome


def test_nada_publicado_so_o_haproxy_na_rede_do_host(todos, servicos):
    # No published port, so no docker-proxy: HAProxy binds the port itself in
    # the host's network, and the rest have no network at all (but the
    # exporter of PostgreSQL's metrics, on the host's loopback).
    for nome, servico in todos.items():
        assert "ports" not in servico and "expose" not in servico, nome
        assert servico["network_mode"] == ("host" if nome in {"haproxy", *OBSERVACAO} else "none"), nome
    assert ambiente(servicos["haproxy"])["CREBITO_BIND"] == "*:${CREBITO_PORT:-9999}"
    # Every metrics endpoint on the loopback by default.
    assert ambiente(servicos["haproxy"])["CREBITO_METRICAS"] == "${CREBITO_METRICAS_HAPROXY:-127.0.0.1:8404}"
    assert "--web.listen-address=${CREBITO_METRICAS_POSTGRES:-127.0.0.1:9187}" in todos["metricas-db"]["command"]
    for nome in IMAGEM.values():
        assert "EXPOSE" not in dict(instrucoes(f"docker/{nome}.Dockerfile")), nome


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


def test_todo_servico_volta_sozinho_e_o_banco_fica_num_volume(compose, servicos):
    for nome, servico in servicos.items():
        assert servico["restart"] in ("always", "unless-stopped"), nome
    volume, destino = servicos["db"]["volumes"][0].split(":")[:2]
    assert volume in compose["volumes"]
    assert destino == "/var/lib/postgresql/data"
    assert "VOLUME /var/lib/postgresql/data" in ler("docker", "db.Dockerfile")


def test_haproxy_recebe_cada_variavel_do_seu_cfg(servicos):
    referenciadas = set(re.findall(r"\$\{(CREBITO_\w+)\}", ler("haproxy.cfg")))
    assert {"CREBITO_BIND", "CREBITO_API01_1", "CREBITO_API02_1"} <= referenciadas
    env = ambiente(servicos["haproxy"])
    # Workers after the first may be left unset (`.if defined(...)`), the
    # user to switch to is for a root launcher (the image runs as haproxy),
    # and the routing by node for the launcher's Citus topology; every other
    # variable is set, and nothing the cfg does not read.
    opcionais = {v for v in referenciadas if re.fullmatch(r"CREBITO_API0\d_[2-9]|CREBITO_USUARIO|CREBITO_ROTAS", v)}
    assert referenciadas - opcionais <= set(env) <= referenciadas
    copias = [arg.split() for inst, arg in instrucoes("docker/haproxy.Dockerfile") if inst == "COPY"]
    assert ["haproxy.cfg", "/etc/haproxy/crebito.cfg"] in copias
    assert "/etc/haproxy/crebito.cfg" in dict(instrucoes("docker/haproxy.Dockerfile"))["CMD"]


def montagens(servico):
    """{volume: path in the container}."""
    return dict(v.split(":")[:2] for v in servico.get("volumes", []))


def test_haproxy_aponta_para_cada_worker_no_seu_socket(compose, servicos):
    env = ambiente(servicos["haproxy"])
    sockets = montagens(servicos["haproxy"])["sockets"]
    assert "sockets" in compose["volumes"]
    for n, nome in enumerate(APIS, start=1):
        api = ambiente(servicos[nome])
        # The same volume at the same path, so the paths HAProxy dials are
        # the ones the workers bind.
        assert montagens(servicos[nome])["sockets"] == sockets
        assert api["CREBITO_LISTEN"] == f"unix:{sockets}/{nome}-{{worker}}.sock"
        workers = int(api["CREBITO_WORKERS"])
        assert 1 <= workers <= 4
        servidores = sorted(k for k in env if k.startswith(f"CREBITO_API0{n}_"))
        assert servidores == [f"CREBITO_API0{n}_{w}" for w in range(1, workers + 1)]
        for w in range(1, workers + 1):
            assert env[f"CREBITO_API0{n}_{w}"] == api["CREBITO_LISTEN"][len("unix:") :].replace("{worker}", str(w))
    assert set(servicos["haproxy"]["depends_on"]) >= set(APIS)


def test_so_o_haproxy_entra_na_pasta_dos_sockets():
    # The API's user owns it, HAProxy's user is in its group, no one else enters.
    api = ler("docker", "api.Dockerfile")
    haproxy = ler("docker", "haproxy.Dockerfile")
    assert "useradd --system --uid 10001 --user-group" in api
    assert "groupadd --system --gid 10001 crebito" in haproxy
    assert "usermod --append --groups crebito haproxy" in haproxy
    for dockerfile in (api, haproxy):
        assert "install -d -o 10001 -g 10001 -m 0750 /run/crebito" in dockerfile


def test_ambiente_das_apis_e_o_que_o_server_le(servicos):
    lidas = set(re.findall(r"os\.environ(?:\.get\(|\[)\"(\w+)\"", ler("server.py")))
    assert {"DATABASE_URL", "CREBITO_LISTEN", "CREBITO_WORKERS"} <= lidas
    for nome in APIS:
        env = ambiente(servicos[nome])
        assert set(env) <= lidas, set(env) - lidas
        assert {"DATABASE_URL", "CREBITO_LISTEN", "CREBITO_WORKERS"} <= set(env)
        assert int(env["CREBITO_WORKERS"]) >= 1
        dsn = conninfo(env["DATABASE_URL"])
        # The database's socket, through the volume both containers mount.
        assert dsn["host"] == montagens(servicos[nome])["pgrun"] == montagens(servicos["db"])["pgrun"]
        assert "port" not in dsn
        assert dsn["user"] == "crebito_api"
        assert dsn["dbname"] == "crebito"
        # The password comes from the compose secret, as a libpq passfile.
        assert dsn["passfile"] == SEGREDO
        assert servicos[nome]["secrets"] == ["crebito_api"]


def test_senha_e_um_segredo_de_fora_do_repositorio(compose, servicos):
    assert compose["secrets"]["crebito_api"]["file"].startswith("${CREBITO_SENHA_API:?")
    assert servicos["db"]["secrets"] == ["crebito_api"]
    assert SEGREDO in ler("docker", "db-entrypoint.sh")


def test_nenhuma_autenticacao_trust():
    assert "POSTGRES_HOST_AUTH_METHOD" not in ler("compose.yml")
    entrada = ler("docker", "db-entrypoint.sh")
    hba = re.search(r"pg_hba.conf\" <<'EOF'\n(.*?)\nEOF", entrada, re.S).group(1)
    regras = [linha.split() for linha in hba.splitlines() if linha and not linha.startswith("#")]
    assert regras == [
        ["local", "all", "postgres", "peer"],
        ["local", "crebito", "crebito_api", "scram-sha-256"],
        ["local", "crebito", "crebito_metricas", "peer"],
    ]
    # Peer: the exporter's uid is the one the db image names crebito_metricas.
    assert "--uid 10002 --no-create-home --shell /usr/sbin/nologin crebito_metricas" in ler("docker", "db.Dockerfile")
    for arquivo in os.listdir(os.path.join(RAIZ, "docker")):
        if not os.path.isfile(os.path.join(RAIZ, "docker", arquivo)):
            continue
        assert "trust" not in ler("docker", arquivo).lower().replace("trusted", ""), arquivo


def test_usuarios_sem_root():
    # HAProxy binds 9999 (> 1024); the API needs no privilege at all.
    assert dict(instrucoes("docker/haproxy.Dockerfile"))["USER"] == "haproxy"
    usuario = [arg for inst, arg in instrucoes("docker/api.Dockerfile") if inst == "USER"][-1]
    assert usuario.split(":")[0] not in ("0", "root")
    # The db's entrypoint reads the secret as root, then runs everything as postgres.
    entrada = ler("docker", "db-entrypoint.sh")
    assert re.search(r"^exec setpriv --reuid=postgres .* postgres -D", entrada, re.M)


def test_db_inicializa_com_o_schema():
    copias = [arg.split() for inst, arg in instrucoes("docker/db.Dockerfile") if inst == "COPY"]
    assert ["db", "/usr/share/crebito/db"] in copias
    entrada = ler("docker", "db-entrypoint.sh")
    assert "-v ON_ERROR_STOP=1 -d crebito -f /usr/share/crebito/db/schema.sql" in entrada.replace('-h "$privado" ', "")
    # schema.sql includes every function itself.
    incluidas = set(re.findall(r"^\\ir (functions/\S+\.sql)$", ler("db", "schema.sql"), re.M))
    funcoes = {f"functions/{f}" for f in os.listdir(os.path.join(RAIZ, "db", "functions")) if f.endswith(".sql")}
    assert funcoes and incluidas == funcoes


def configuracoes(texto):
    lidas = {}
    for linha in texto.splitlines():
        linha = linha.split("#", 1)[0].strip()
        if linha:
            chave, valor = (p.strip() for p in linha.split("=", 1))
            lidas[chave] = valor.strip("'")
    return lidas


def test_db_com_as_configuracoes_do_cluster_nativo(servicos):
    # One source: stack/postgresql.conf built in, and after it only where the
    # socket is (the volume the API mounts) and that nothing listens on TCP.
    assert "command" not in servicos["db"]
    copias = [arg.split() for inst, arg in instrucoes("docker/db.Dockerfile") if inst == "COPY"]
    assert ["stack/postgresql.conf", "/etc/crebito/postgresql.conf"] in copias
    assert ["docker/postgresql.conf", "/etc/crebito/docker.conf"] in copias
    pasta = montagens(servicos["db"])["pgrun"]
    assert configuracoes(ler("docker", "postgresql.conf")) == {"listen_addresses": "", "unix_socket_directories": pasta}
    entrada = ler("docker", "db-entrypoint.sh")
    assert entrada.index("include '/etc/crebito/postgresql.conf'") < entrada.index("include '/etc/crebito/docker.conf'")
    nativo = configuracoes(ler("stack", "postgresql.conf"))
    assert nativo["fsync"] == nativo["synchronous_commit"] == "on"
    # Both instances' workers fit, besides the superuser's reserved slots.
    workers = sum(int(ambiente(servicos[n])["CREBITO_WORKERS"]) for n in APIS)
    assert int(nativo["max_connections"]) >= workers + 3


def test_a_api_espera_o_banco_sem_healthcheck(servicos):
    # No healthcheck runs in the database's container (each run is an exec,
    # CPU inside its budget): the workers wait for it themselves, and while
    # the schema loads on a first start its socket is in a private directory.
    assert "healthcheck" not in servicos["db"]
    for nome in APIS:
        assert servicos[nome]["depends_on"] == ["db"]
    assert "-k $privado" in ler("docker", "db-entrypoint.sh")


def test_dockerfiles_copiam_arquivos_que_existem_no_contexto():
    ignorar = [p for p in ler(".dockerignore").splitlines() if p and not p.startswith("#")]
    for nome in set(IMAGEM.values()):
        for inst, arg in instrucoes(f"docker/{nome}.Dockerfile"):
            if inst != "COPY" or arg.startswith("--from"):
                continue
            origem = arg.split()[0]
            assert os.path.exists(os.path.join(RAIZ, origem)), origem
            # The last matching .dockerignore pattern decides; "!" keeps a file in the context.
            decisao = [p for p in ignorar if fnmatch.fnmatch(origem, p.lstrip("!").rstrip("/"))]
            assert decisao and decisao[-1].startswith("!"), origem


def test_api_compila_num_estagio_e_roda_sem_compilador():
    estagios = re.split(r"^FROM ", ler("docker", "api.Dockerfile"), flags=re.M)[1:]
    assert len(estagios) == 2
    construcao, final = estagios
    assert "pip install --no-cache-dir" in construcao and "-r /tmp/requirements.txt" in construcao
    assert "gcc" in construcao and "gcc" not in final and "-dev" not in final
    assert "COPY --from=construcao /opt/crebito /opt/crebito" in final
    # Every runtime requirement is pinned, so the image is reproducible.
    for linha in ler("requirements.txt").splitlines():
        if linha and not linha.startswith("#"):
            assert "==" in linha, linha
