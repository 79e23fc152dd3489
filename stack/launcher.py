"""Starts and supervises crebito's native stack in the foreground.

PostgreSQL (a private cluster under the data directory), two API instances
(server.py) and HAProxy on :9999. Whatever dies is started again; Ctrl-C or
SIGTERM stops everything cleanly. Started as root, nothing it starts stays
root: PostgreSQL runs as `postgres`, the API instances as `crebito-api` and
HAProxy as `haproxy`, each switching user once its socket is bound. `--reset` wipes the data first, so the
database holds only the five initial clients again. `--auditoria` starts
nothing: it checks the running stack's books with api.auditoria() and exits
non-zero when they show a violation.

Environment:
    CREBITO_VAR       data directory (default: var/ in the project, or
                      /var/lib/crebito-<path> when root and the project
                      directory is not reachable by the postgres user)
    CREBITO_PORT      HTTP port of HAProxy (default 9999)
    CREBITO_WORKERS   workers per API instance (default 3)
    CREBITO_PG_BIN    directory of PostgreSQL's binaries (default: found)
    CREBITO_PG_CONF   extra postgresql.conf settings file, included last
"""

import argparse
import fcntl
import glob
import http.client
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time

RAIZ = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PG_PORTA = "5432"  # only names the unix socket; the cluster listens on no TCP port
# The OS users a root launcher runs the API instances and HAProxy as; stack/install.sh creates the first.
USUARIO_API = "crebito-api"
USUARIO_HAPROXY = "haproxy"


def log(msg):
    print(f"crebito: {msg}", file=sys.stderr, flush=True)


def pg_bin():
    escolhido = os.environ.get("CREBITO_PG_BIN")
    if escolhido:
        return escolhido
    versoes = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]))
    if versoes:
        return versoes[-1]
    postgres = shutil.which("postgres")
    if postgres:
        return os.path.dirname(os.path.realpath(postgres))
    sys.exit("crebito: PostgreSQL not found; install it (apt-get install postgresql) or set CREBITO_PG_BIN")


class Stack:
    def __init__(self, var):
        self.var = os.path.abspath(var)
        self.pgdata = os.path.join(self.var, "pgdata")
        self.pgrun = os.path.join(self.var, "pgrun")
        self.sock = os.path.join(self.var, "sock")
        self.bin = pg_bin()
        self.porta = os.environ.get("CREBITO_PORT", "9999")
        self.workers = os.environ.get("CREBITO_WORKERS", "3")
        # Started as root, each component gets a user of its own (PostgreSQL
        # refuses root anyway); otherwise everything runs as the caller.
        root = os.geteuid() == 0
        self.usuario = "postgres" if root else None
        self.usuario_api = USUARIO_API if root else None
        self.usuario_haproxy = USUARIO_HAPROXY if root else None
        for usuario in (self.usuario, self.usuario_api, self.usuario_haproxy):
            if usuario is not None:
                try:
                    pwd.getpwnam(usuario)
                except KeyError:
                    sys.exit(f"crebito: OS user {usuario} is missing; run `bash stack/install.sh` as root to create it")
        # Who started the stack: besides each component's own user, the only
        # OS user the database lets in (the tests, make auditoria, bench/).
        self.dono = pwd.getpwuid(os.geteuid()).pw_name
        self.processos = {}  # nome -> (Popen, started_at)
        self.parando = False

    # -- PostgreSQL -------------------------------------------------------

    def _como_postgres(self):
        if self.usuario is None:
            return {}
        return {"user": self.usuario, "group": pwd.getpwnam(self.usuario).pw_gid, "extra_groups": []}

    def _dono(self, caminho, usuario, grupo=None, modo=0o755):
        """Creates `caminho` owned by `usuario` (and `grupo`'s group) with `modo`;
        when not root, the caller keeps it and nobody else gets in."""
        os.makedirs(caminho, exist_ok=True)
        if usuario is None:
            os.chmod(caminho, modo & 0o700)
            return
        os.chown(caminho, pwd.getpwnam(usuario).pw_uid, pwd.getpwnam(grupo or usuario).pw_gid)
        os.chmod(caminho, modo)

    def preparar_cluster(self):
        # Other local users must reach neither the database's socket nor the
        # API's: only the API's user may enter pgrun, only HAProxy's sock.
        os.makedirs(self.var, exist_ok=True)
        if self.usuario is not None:
            self._dono(self.var, self.usuario)
        self._dono(self.pgrun, self.usuario, self.usuario_api, 0o750)
        self._dono(self.sock, self.usuario_api, self.usuario_haproxy, 0o750)
        if os.path.exists(os.path.join(self.pgdata, "PG_VERSION")):
            return False
        log(f"creating the PostgreSQL cluster in {self.pgdata}")
        subprocess.run(
            [
                f"{self.bin}/initdb",
                "-D",
                self.pgdata,
                "-U",
                "postgres",
                # Replaced by configurar() before the first start; never trust.
                "--auth-local=peer",
                "--auth-host=scram-sha-256",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-instructions",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            cwd="/",
            **self._como_postgres(),
        )
        with open(os.path.join(self.pgdata, "postgresql.conf"), "a") as conf:
            conf.write("\ninclude 'crebito.conf'\n")
        return True

    def configurar(self):
        """Copies the project's settings into the cluster on every start, so an
        edit of stack/postgresql.conf applies on restart and the server never
        needs to read the project directory."""
        with open(os.path.join(RAIZ, "stack", "postgresql.conf")) as f:
            texto = f.read()
        texto += f"unix_socket_directories = '{self.pgrun}'\n"
        extra = os.environ.get("CREBITO_PG_CONF")
        if extra:
            with open(extra) as f:
                texto += f.read()
        self._escrever_no_cluster("crebito.conf", texto)
        self._escrever_no_cluster(
            "pg_hba.conf",
            "# Written by stack/launcher.py: the unix socket only, by OS user.\nlocal all all peer map=crebito\n",
        )
        self._escrever_no_cluster("pg_ident.conf", self.mapa_de_usuarios())

    def mapa_de_usuarios(self):
        """pg_ident.conf: which OS user may connect as which role. The API's
        user only as crebito_api; whoever started the stack as anything."""
        pares = [("postgres", "postgres"), (self.dono, "postgres"), (self.dono, "crebito_api")]
        if self.usuario_api is not None:
            pares.append((self.usuario_api, "crebito_api"))
        return "".join(f"crebito {so} {papel}\n" for so, papel in dict.fromkeys(pares))

    def _escrever_no_cluster(self, nome, texto):
        destino = os.path.join(self.pgdata, nome)
        with open(destino, "w") as f:
            f.write(texto)
        if self.usuario is not None:
            info = pwd.getpwnam(self.usuario)
            os.chown(destino, info.pw_uid, info.pw_gid)

    def psql(self, *args, banco="crebito"):
        cmd = [f"{self.bin}/psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", self.pgrun, "-p", PG_PORTA]
        subprocess.run([*cmd, "-U", "postgres", "-d", banco, *args], check=True, cwd=RAIZ)

    def carregar_schema(self):
        log("loading db/schema.sql")
        self.psql("-c", "create database crebito", banco="postgres")
        self.psql("-f", "db/schema.sql")

    def esperar_postgres(self, limite=30):
        fim = time.monotonic() + limite
        while time.monotonic() < fim:
            pronto = subprocess.run(
                [f"{self.bin}/pg_isready", "-q", "-h", self.pgrun, "-p", PG_PORTA, "-U", "postgres", "-d", "postgres"],
                stdout=subprocess.DEVNULL,
            )
            if pronto.returncode == 0:
                return
            if self.processos["postgres"][0].poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError("PostgreSQL did not start")

    # -- processes ----------------------------------------------------------

    def _comando(self, nome):
        if nome == "postgres":
            return [f"{self.bin}/postgres", "-D", self.pgdata], self._como_postgres(), None
        if nome in ("api01", "api02"):
            env = dict(
                os.environ,
                CREBITO_LISTEN=f"unix:{self.sock}/{nome}.sock",
                CREBITO_WORKERS=self.workers,
                DATABASE_URL=f"host={self.pgrun} port={PG_PORTA} dbname=crebito user=crebito_api "
                "application_name=crebito connect_timeout=2",
            )
            return [sys.executable, os.path.join(RAIZ, "server.py")], {}, self._como(env, self.usuario_api)
        env = dict(
            os.environ,
            CREBITO_BIND=f"*:{self.porta}",
            CREBITO_API01=f"{self.sock}/api01.sock",
            CREBITO_API02=f"{self.sock}/api02.sock",
            CREBITO_WORKERS=self.workers,
        )
        return ["haproxy", "-db", "-f", os.path.join(RAIZ, "haproxy.cfg")], {}, self._como(env, self.usuario_haproxy)

    @staticmethod
    def _como(env, usuario):
        """The API and HAProxy start as the launcher's user, so they can read
        the project wherever it is, and switch to CREBITO_USUARIO themselves
        once their socket is bound, before they serve anything."""
        env.pop("CREBITO_USUARIO", None)
        if usuario is not None:
            env["CREBITO_USUARIO"] = usuario
        return env

    def iniciar(self, nome):
        cmd, extra, env = self._comando(nome)
        # Own session: Ctrl-C reaches only the launcher, which stops the rest in order.
        proc = subprocess.Popen(cmd, env=env, start_new_session=True, cwd="/", **extra)
        self.processos[nome] = (proc, time.monotonic())
        with open(os.path.join(self.var, f"{nome}.pid"), "w") as f:
            f.write(f"{proc.pid}\n")

    def supervisionar(self):
        while not self.parando:
            time.sleep(0.1)
            for nome, (proc, inicio) in list(self.processos.items()):
                if self.parando or proc.poll() is None:
                    continue
                log(f"{nome} exited with {proc.returncode}; restarting")
                if time.monotonic() - inicio < 1:
                    time.sleep(0.5)  # a process that dies at once must not spin
                self.iniciar(nome)

    def parar(self):
        self.parando = True
        log("stopping")
        # Front to back: no new requests, then the workers, then the database.
        for nome, sinal in (
            ("haproxy", signal.SIGTERM),
            ("api01", signal.SIGTERM),
            ("api02", signal.SIGTERM),
            ("postgres", signal.SIGINT),
        ):
            if nome not in self.processos:
                continue
            proc = self.processos[nome][0]
            if proc.poll() is None:
                proc.send_signal(sinal)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def esperar_api(self, limite=30):
        # http.client, not urllib: an http_proxy in the environment must not
        # stand between the launcher and 127.0.0.1.
        fim = time.monotonic() + limite
        while time.monotonic() < fim:
            conn = http.client.HTTPConnection("127.0.0.1", int(self.porta), timeout=1)
            try:
                conn.request("GET", "/clientes/1/extrato")
                if conn.getresponse().status == 200:
                    return True
            except (OSError, http.client.HTTPException):
                time.sleep(0.05)
            finally:
                conn.close()
        return False

    def _aceita(self, nome):
        with socket.socket(socket.AF_UNIX) as s:
            try:
                s.connect(os.path.join(self.sock, f"{nome}.sock"))
                return True
            except OSError:
                return False

    def rodar(self):
        t0 = time.monotonic()
        novo = self.preparar_cluster()
        self.configurar()
        self.iniciar("postgres")
        self.esperar_postgres()
        if novo:
            self.carregar_schema()
        for nome in ("api01", "api02"):
            self.iniciar(nome)
        # HAProxy last, once both instances accept connections (a stale socket
        # file from an earlier run refuses them), so it never starts with an
        # instance marked down.
        fim = time.monotonic() + 5
        while not all(map(self._aceita, ("api01", "api02"))) and time.monotonic() < fim:
            time.sleep(0.01)
        self.iniciar("haproxy")
        if self.esperar_api():
            log(f"ready on http://127.0.0.1:{self.porta} in {time.monotonic() - t0:.2f}s (Ctrl-C stops)")
        else:
            log("the API did not answer within 30s; still trying")
        self.supervisionar()


def var_padrao():
    """var/ in the project, unless PostgreSQL (running as `postgres` because
    we are root) could not reach it there, e.g. in a clone under /root."""
    var = os.path.join(RAIZ, "var")
    if os.geteuid() == 0:
        caminho = RAIZ
        while caminho != "/":
            if not os.stat(caminho).st_mode & 0o001:
                return "/var/lib/crebito" + RAIZ.replace("/", "-")
            caminho = os.path.dirname(caminho)
    return var


def auditar(var):
    """`make auditoria`: prints each violation api.auditoria() finds in the
    running cluster's books, one per line; exits 1 if there is any, 2 if the
    database could not be asked."""
    stack = Stack(var)
    consulta = "select cliente, violacao from api.auditoria() order by cliente, violacao"
    r = subprocess.run(
        [f"{stack.bin}/psql", "-X", "-q", "-A", "-t", "-F", " | ", "-v", "ON_ERROR_STOP=1", "-h", stack.pgrun]
        + ["-p", PG_PORTA, "-U", "postgres", "-d", "crebito", "-c", consulta],
        capture_output=True,
        text=True,
    )
    if r.returncode != 0:
        log(f"the audit could not run: {r.stderr.strip()}")
        sys.exit(2)
    sys.stdout.write(r.stdout)
    sys.exit(1 if r.stdout.strip() else 0)


def travar(var):
    """One launcher per data directory: a second one would find the port and
    the cluster taken and report the first one's answers as its own."""
    os.makedirs(var, exist_ok=True)
    trava = open(os.path.join(var, "launcher.lock"), "w")
    try:
        fcntl.flock(trava, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        sys.exit(f"crebito: another launcher is already running with {var}; stop it first (Ctrl-C)")
    return trava


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    acao = ap.add_mutually_exclusive_group()
    acao.add_argument("--reset", action="store_true", help="start with only the five initial clients")
    acao.add_argument("--auditoria", action="store_true", help="check the running stack's books and exit")
    args = ap.parse_args()
    var = os.environ.get("CREBITO_VAR") or var_padrao()
    if args.auditoria:
        auditar(var)
    _trava = travar(var)  # held until the process exits
    if args.reset:
        log(f"reset: removing {var}/pgdata")
        shutil.rmtree(os.path.join(var, "pgdata"), ignore_errors=True)
    stack = Stack(var)
    # Both set explicitly: a shell that starts us in the background leaves SIGINT ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        stack.rodar()
    except KeyboardInterrupt:
        pass
    finally:
        stack.parar()


if __name__ == "__main__":
    main()
