"""crebito's compose project, driven from Python: what `make docker`, the
tests and the benchmarks share. Builds what is missing (the Debian base with
docker/base.sh, the images, the password file with docker/senha.sh),
and starts, inspects and removes one compose project.

    python docker/projeto.py     # make docker: build what is missing or changed, run
                                 # in the foreground; Ctrl-C stops and removes
                                 # the containers (the volume stays)

Environment: DOCKER_HOST (the engine; when none answers and we are root, a
private one is started, see docker/motor.py), CREBITO_DOCKER_DADOS (that
private engine's folder, default /var/lib/crebito-docker), COMPOSE_PROJECT_NAME,
CREBITO_PORT (host port, default 9999), CREBITO_TAG (image tag, default
latest), CREBITO_SENHA_API (the password file, default in ~/.config/crebito),
CREBITO_METRICAS_HAPROXY, CREBITO_METRICAS_POSTGRES and
CREBITO_METRICAS_PROCESSOS (where the metrics endpoints listen, on the host's
loopback: 127.0.0.1:8404, :9187 and :9256, or a free port when taken),
COMPOSE_PROFILES (default `metricas`: with PostgreSQL's exporter and each
container's CPU and memory).

The endpoints are recorded in <the launcher's data directory>/docker/<project>/
metricas.json, as a native stack's, where `make observar` finds them.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import motor

RAIZ = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(RAIZ, "stack"))
import metricas  # noqa: E402
import processos  # noqa: E402

COMPOSE = os.path.join(RAIZ, "compose.yml")
IMAGENS = ("db", "api", "haproxy", "metricas")
# The challenge's stack, within its budget; and what observes it (compose.yml's profile `metricas`).
SERVICOS = ("db", "api01", "api02", "haproxy")
OBSERVACAO = ("metricas-db",)
# Where each metrics endpoint listens on the host's loopback, unless taken.
METRICAS = {"CREBITO_METRICAS_HAPROXY": 8404, "CREBITO_METRICAS_POSTGRES": 9187, "CREBITO_METRICAS_PROCESSOS": 9256}
# Who the processes exporter runs as once bound, when started as root: it reads
# only what any user may read (/proc/<pid>/stat and statm, cgroup.procs).
USUARIO_CONSUMO = "nobody"


def comando_compose(env=None):
    """`docker compose` (v2) where the plugin exists, else docker-compose v1,
    whose --compatibility turns deploy.resources.limits into real limits."""
    v2 = subprocess.run(["docker", "compose", "version"], env=env, capture_output=True)
    if v2.returncode == 0:
        return ["docker", "compose"]
    return ["docker-compose", "--compatibility"]


def _porta_de_metricas(porta):
    """127.0.0.1:porta, or a free port when another stack holds it: HAProxy
    in the host's network would otherwise fail to start on it."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", porta))
        except OSError:
            s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def cgrupo(pid):
    """The cgroup directory whose cgroup.procs lists pid's container's
    processes: v1's memory hierarchy, or the unified one."""
    with open(f"/proc/{pid}/cgroup") as f:
        linhas = [linha.rstrip("\n").split(":", 2) for linha in f]
    for _, controladores, caminho in linhas:
        if "memory" in controladores.split(","):
            return f"/sys/fs/cgroup/memory{caminho}"
    return "/sys/fs/cgroup" + next(caminho for n, _, caminho in linhas if n == "0")


def _rodar_ate_o_fim(cmd, **kw):
    """Runs cmd in a process group of its own; when interrupted, passes a
    SIGTERM to that whole group and waits for it, so the command's own cleanup
    (base.sh's, which unmounts and removes its debootstrap tree) is not cut
    short, whoever got the signal (a terminal's Ctrl-C, or make's SIGTERM)."""
    with subprocess.Popen(cmd, start_new_session=True, **kw) as p:
        try:
            if p.wait():
                raise subprocess.CalledProcessError(p.returncode, cmd)
        except KeyboardInterrupt:
            with motor.sem_interrupcao():
                os.killpg(p.pid, signal.SIGTERM)
                try:
                    p.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)
            raise


class Projeto:
    def __init__(self, env, nome=None, porta=None, tag=None, senha=None, pasta=None):
        self.env = dict(env)
        if nome:
            self.env["COMPOSE_PROJECT_NAME"] = nome
        if porta:
            self.env["CREBITO_PORT"] = str(porta)
        if tag:
            self.env["CREBITO_TAG"] = tag
        if senha:
            self.env["CREBITO_SENHA_API"] = senha
        self.env.setdefault("COMPOSE_PROFILES", "metricas")
        for variavel, porta in METRICAS.items():
            if not self.env.get(variavel):
                self.env[variavel] = _porta_de_metricas(porta)
        self.nome = self.env.get("COMPOSE_PROJECT_NAME") or os.path.basename(RAIZ)
        self.porta = int(self.env.get("CREBITO_PORT", "9999"))
        self.tag = self.env.get("CREBITO_TAG", "latest")
        self.compose_cmd = comando_compose(self.env)
        # Where this project's endpoints are recorded (metricas.json), with the
        # files its processes exporter reads.
        self.pasta = pasta or metricas.pasta_docker(self.nome)
        self.consumo = None
        self._trava = None

    @property
    def observado(self):
        """Whether the profile `metricas` is on: the exporters apart from HAProxy's."""
        return "metricas" in self.env.get("COMPOSE_PROFILES", "").split(",")

    def compose(self, *args, **kw):
        kw.setdefault("check", True)
        cmd = [*self.compose_cmd, "-f", COMPOSE, "-p", self.nome, *args]
        # compose reads the secret's path whatever it is asked to do; before
        # the password file exists (it needs the API image), any will do.
        env = dict(self.env)
        env.setdefault("CREBITO_SENHA_API", os.devnull)
        return subprocess.run(cmd, env=env, cwd=RAIZ, **kw)

    def docker(self, *args, **kw):
        kw.setdefault("check", True)
        return subprocess.run(["docker", *args], env=self.env, **kw)

    def imagem(self, nome):
        return f"crebito-{nome}:{self.tag}"

    def imagens_faltando(self):
        faltam = []
        for nome in IMAGENS:
            r = self.docker("image", "inspect", self.imagem(nome), capture_output=True, check=False)
            if r.returncode:
                faltam.append(nome)
        return faltam

    def senha(self):
        """The password file's path, made by docker/senha.sh when missing."""
        r = subprocess.run(
            ["bash", os.path.join(RAIZ, "docker", "senha.sh")],
            env=self.env,
            check=True,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.env["CREBITO_SENHA_API"] = r.stdout.strip()
        return self.env["CREBITO_SENHA_API"]

    def construir(self, sempre=False):
        """The base image, the images (all of them when sempre, else the
        missing ones) and the password file."""
        _rodar_ate_o_fim(["bash", os.path.join(RAIZ, "docker", "base.sh")], env=self.env)
        if sempre or self.imagens_faltando():
            self.compose("build")
        return self.senha()

    def container(self, servico):
        r = self.compose("ps", "-q", servico, stdout=subprocess.PIPE, text=True)
        ids = r.stdout.split()
        if len(ids) != 1:
            raise RuntimeError(f"{servico}: containers {ids}")
        return ids[0]

    def inspecionar(self, servico):
        r = self.docker("inspect", self.container(servico), stdout=subprocess.PIPE, text=True)
        return json.loads(r.stdout)[0]

    def volume(self, nome):
        """Where the project's volume nome is on the host (root may enter)."""
        r = self.docker(
            "volume",
            "ls",
            "-q",
            "--filter",
            f"label=com.docker.compose.project={self.nome}",
            "--filter",
            f"label=com.docker.compose.volume={nome}",
            stdout=subprocess.PIPE,
            text=True,
        )
        [volume] = r.stdout.split()
        r = self.docker("volume", "inspect", "-f", "{{.Mountpoint}}", volume, stdout=subprocess.PIPE, text=True)
        return r.stdout.strip()

    def pid(self, servico):
        """The host pid of the container's first process (0 when stopped)."""
        return self.inspecionar(servico)["State"]["Pid"]

    def observar(self):
        """Records the endpoints in self.pasta and, with the profile
        `metricas`, starts the processes exporter (stack/consumo.py) for every
        container, the exporters' included; the containers must be up.

        A process on the host, not a compose service: which container is which
        service only the engine knows, and asking it takes its socket, which
        is root. Here the engine is asked once, as whoever runs compose, for
        each container's cgroup, written to <service>.cgroup; the exporter
        (as nobody once bound, when started by root) reads on each scrape the
        processes in each group. The group is named by the container's id, which a restart
        keeps: a restarted container's new pids are in it, with no pid to
        follow. It runs in this process group, so a Ctrl-C or a kill of
        `make docker`'s group stops it too."""
        try:
            self._trava = metricas.travar(self.pasta)
        except BlockingIOError:
            raise RuntimeError(f"another make docker of project {self.nome} is running ({self.pasta})") from None
        alvos = [metricas.Alvo("haproxy", self.env["CREBITO_METRICAS_HAPROXY"])]
        if self.observado:
            alvos.append(metricas.Alvo("postgres", self.env["CREBITO_METRICAS_POSTGRES"], "db"))
            alvos.append(metricas.Alvo("processos", self.env["CREBITO_METRICAS_PROCESSOS"]))
        metricas.gravar(self.pasta, alvos)
        if not self.observado:
            return alvos
        servicos = (*SERVICOS, *OBSERVACAO)
        for servico in servicos:
            processos.substituir(os.path.join(self.pasta, f"{servico}.cgroup"), cgrupo(self.pid(servico)))
        cmd = [sys.executable, os.path.join(RAIZ, "stack", "consumo.py"), self.env["CREBITO_METRICAS_PROCESSOS"]]
        cmd += [self.pasta, *servicos, "metricas-processos"]
        env = dict(self.env)
        env.pop("CREBITO_USUARIO", None)
        if os.geteuid() == 0:
            env["CREBITO_USUARIO"] = USUARIO_CONSUMO
        self.consumo = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL)
        processos.substituir(os.path.join(self.pasta, "metricas-processos.pid"), str(self.consumo.pid))
        host, porta = self.env["CREBITO_METRICAS_PROCESSOS"].rsplit(":", 1)
        for _ in range(100):
            if self.consumo.poll() is not None:
                raise RuntimeError(f"stack/consumo.py exited with {self.consumo.returncode}")
            try:
                socket.create_connection((host, int(porta)), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        return alvos

    def parar_observacao(self):
        if self.consumo is not None:
            self.consumo.terminate()
            self.consumo.wait(timeout=10)
            self.consumo = None
        if self._trava is not None:
            self._trava.close()
            self._trava = None

    def psql(self, sql):
        """Runs sql in crebito as the superuser `postgres`, who may connect
        only inside the db container; returns the rows, fields split on |."""
        r = self.docker(
            "exec",
            "-u",
            "postgres",
            self.container("db"),
            "psql",
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            "crebito",
            "-c",
            sql,
            stdout=subprocess.PIPE,
            text=True,
        )
        return [linha.split("|") for linha in r.stdout.splitlines() if linha]

    def rotulados(self, tipo):
        """The project's containers, volumes or networks still in the engine."""
        r = self.docker(
            tipo,
            "ls",
            *(["-a"] if tipo == "container" else []),
            "-q",
            "--filter",
            f"label=com.docker.compose.project={self.nome}",
            stdout=subprocess.PIPE,
            text=True,
        )
        return r.stdout.split()

    def descer(self, volumes=True):
        self.compose("down", "--remove-orphans", *(["-v"] if volumes else []), check=False, capture_output=True)


def main():
    # `make docker`: Ctrl-C (or SIGTERM, SIGHUP) at any moment stops and
    # removes the containers, and stops a private engine started here.
    motor.interromper_com_sinais()
    try:
        with motor.motor(dados=os.environ.get("CREBITO_DOCKER_DADOS", "/var/lib/crebito-docker")) as env:
            projeto = Projeto(env)
            try:
                # Every time: the engine's cache makes it quick, and an image
                # never lags behind an edited Dockerfile or source file.
                projeto.construir(sempre=True)
                # Up first, detached: the exporter of each container's CPU and
                # memory is given their cgroups; then attached, for their logs.
                projeto.compose("up", "-d", "--no-build")
                alvos = projeto.observar()
                motor.log("metrics: " + ", ".join(f"http://{a.endereco}/metrics ({a.job})" for a in alvos))
                motor.log(f"metrics recorded in {metricas.arquivo(projeto.pasta)} (make observar finds them)")
                motor.log(f"project {projeto.nome} on http://127.0.0.1:{projeto.porta} (Ctrl-C stops)")
                projeto.compose("up", "--no-build", check=False)
            finally:
                with motor.sem_interrupcao():
                    projeto.parar_observacao()
                    projeto.descer(volumes=False)
    except KeyboardInterrupt:
        pass
    except (RuntimeError, subprocess.CalledProcessError) as e:
        motor.log(str(e))
        return 1


if __name__ == "__main__":
    sys.exit(main())
