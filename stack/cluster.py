"""Creating and configuring the database clusters of a topology: initdb,
the settings and authentication written into each cluster on every start
(or Patroni's configuration, HA), the Citus cluster assembled, the schema
loaded, and waiting for a node to answer. The launcher's Stack is a Cluster
that also knows its processes (stack/launcher.py) and supervises them
(stack/processos.py)."""

import glob
import os
import pwd
import re
import shutil
import subprocess
import sys
import time

import backup
import patroni
import segredos
import topologia

RAIZ = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CITUS_AUSENTE = (
    "crebito: Citus is not installed for PostgreSQL {versao}. With the internet, install Citus's own packages"
    " (curl https://install.citusdata.com/community/deb.sh | sudo bash;"
    " apt-get install postgresql-{versao}-citus-13.2);"
    " otherwise, as root: CREBITO_CITUS_TARBALL=/path/citus-13.2.2-pg{versao}-amd64.tar.gz bash stack/install.sh"
)


def log(msg):
    print(f"crebito: {msg}", file=sys.stderr, flush=True)


def sql_de_zerar(citus=False):
    """The statements that bring a database back to the five initial clients
    (the tests before each one, bench/corrida.py before each round)."""
    if citus:
        # A few rows each time: deleting them is much faster on a cluster
        # than a TRUNCATE, which rewrites every shard on every node.
        apagar = ["delete from crebito.idempotencia", "delete from crebito.transacao"]
    else:
        apagar = ["truncate crebito.idempotencia, crebito.transacao"]
    # Only the five initial clients: a test may have seeded more.
    return apagar + [
        "delete from crebito.cliente where id > 5",
        "update crebito.cliente set saldo = 0, ultimo_lancamento = 0, assincrono = false",
    ]


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


class Cluster:
    """Mixed into the launcher's Stack, whose attributes it reads: var, nos,
    ha, citus, bin, sock, the OS users and the supervisor."""

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

    def preparar_cluster(self, no):
        # Other local users must reach neither the database's socket nor the
        # API's: only the API's user may enter pgrun, only HAProxy's sock.
        os.makedirs(self.var, exist_ok=True)
        if self.usuario is not None:
            self._dono(self.var, self.usuario)
            self._dono(os.path.dirname(no.pgdata), self.usuario)
        self._dono(no.pgrun, self.usuario, self.usuario_api, 0o750)
        self._dono(self.sock, self.usuario_api, self.usuario_haproxy, 0o750)
        if self.ha:
            # Patroni makes (or clones) the cluster; rodar() loads the schema
            # once a primary answers, if it has no crebito database yet.
            return False
        if os.path.exists(os.path.join(no.pgdata, "PG_VERSION")):
            return False
        log(f"creating the PostgreSQL cluster in {no.pgdata}")
        subprocess.run(
            [
                f"{self.bin}/initdb",
                "-D",
                no.pgdata,
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
        with open(os.path.join(no.pgdata, "postgresql.conf"), "a") as conf:
            conf.write("\ninclude 'crebito.conf'\n")
        return True

    def configurar(self, no):
        """Copies the project's settings into the cluster on every start, so an
        edit of stack/postgresql.conf applies on restart and the server never
        needs to read the project directory. The topology adds only where the
        node listens and, on a Citus node, the extension."""
        with open(os.path.join(RAIZ, "stack", "postgresql.conf")) as f:
            base = texto = f.read()
        extra = os.environ.get("CREBITO_PG_CONF")
        if extra:
            with open(extra) as f:
                texto += f.read()
        if self.ha:
            self.configurar_patroni(no, texto, base)
            return
        texto += f"unix_socket_directories = '{no.pgrun}'\n"
        if no.tcp:
            # Citus first, as it must be, then any library the extra file
            # asks for (pg_stat_statements, to profile a node).
            pedidas = re.findall(r"^\s*shared_preload_libraries\s*=\s*'([^']*)'", texto, re.M)
            bibliotecas = ",".join(["citus", *(b.strip() for b in ",".join(pedidas).split(",") if b.strip())])
            texto += f"listen_addresses = '127.0.0.1'\nport = {no.porta}\nshared_preload_libraries = '{bibliotecas}'\n"
        self._escrever_no_cluster(no, "crebito.conf", texto)
        hba = "# Written by stack/cluster.py: the unix socket by OS user"
        if no.tcp:
            # Citus's nodes talk over TCP: a password, never trust.
            hba += "; 127.0.0.1 with a password.\nhost all all 127.0.0.1/32 scram-sha-256\n"
        else:
            hba += " only.\n"
        self._escrever_no_cluster(no, "pg_hba.conf", hba + "local all all peer map=crebito\n")
        self._escrever_no_cluster(no, "pg_ident.conf", self.mapa_de_usuarios())

    def configurar_patroni(self, no, texto, base):
        """HA: the settings beside the cluster (Patroni wants an empty data
        directory to make or clone it), and Patroni's configuration."""
        pasta = os.path.dirname(no.pgdata)
        conf = os.path.join(pasta, "crebito.conf")
        self._escrever(conf, texto)
        self._escrever(backup.arquivo_conf(no), backup.conf(self.var, no))
        cfg = patroni.config(
            no,
            topologia.etcd(self.var)[0],
            segredos.ler(self.var),
            self.bin,
            conf,
            base,
            self.mapa_de_usuarios().splitlines(),
            backup.comando_de_arquivo(no),
        )
        caminho = os.path.join(pasta, "patroni.yml")
        patroni.escrever(caminho, cfg)
        self._entregar(caminho)

    def mapa_de_usuarios(self):
        """pg_ident.conf: which OS user may connect as which role. The API's
        user only as crebito_api; whoever started the stack as anything."""
        pares = [("postgres", "postgres"), (self.dono, "postgres"), (self.dono, "crebito_api")]
        if self.usuario_api is not None:
            pares.append((self.usuario_api, "crebito_api"))
        pares.append((self.usuario_metricas or self.dono, "crebito_metricas"))
        return "".join(f"crebito {so} {papel}\n" for so, papel in dict.fromkeys(pares))

    def _escrever_no_cluster(self, no, nome, texto):
        self._escrever(os.path.join(no.pgdata, nome), texto)

    def _escrever(self, destino, texto):
        with open(destino, "w") as f:
            f.write(texto)
        self._entregar(destino)

    def _entregar(self, destino):
        """Gives the file to the database's OS user."""
        if self.usuario is not None:
            info = pwd.getpwnam(self.usuario)
            os.chown(destino, info.pw_uid, info.pw_gid)

    def psql(self, no, *args, banco="crebito", entrada=None, saida=None):
        cmd = [f"{self.bin}/psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", no.pgrun, "-p", str(no.porta)]
        cmd += ["-U", "postgres", "-d", banco, *args]
        return subprocess.run(cmd, check=True, cwd=RAIZ, input=entrada, stdout=saida, text=True)

    def montar_cluster(self):
        """Citus: the extension on every node, passwords for the roles that
        connect between nodes, the workers added to the coordinator, all
        before the schema is loaded, so the shards land on the workers."""
        coordenador = topologia.coordenador(self.nos)
        senhas = segredos.ler(self.var)
        for no in self.nos:
            self.psql(no, "-c", "create database crebito", banco="postgres")
            self.psql(no, "-c", "create extension citus")
            # On stdin, so the password shows in no process list.
            self.psql(no, entrada=f"alter role postgres password '{senhas['postgres']}';")
        self.psql(coordenador, "-c", f"select citus_set_coordinator_host('127.0.0.1', {coordenador.porta})")
        for no in topologia.workers(self.nos):
            self.psql(coordenador, "-c", f"select citus_add_node('127.0.0.1', {no.porta})")
        # Created on the coordinator, the roles and their passwords reach every worker.
        self.psql(
            coordenador,
            entrada=f"create role crebito nologin password '{senhas['crebito']}';\n"
            f"create role crebito_api login password '{senhas['crebito_api']}';\n",
        )

    def carregar_schema(self, no):
        log("loading db/schema.sql")
        if self.citus:
            self.montar_cluster()
            self.psql(no, "-v", "citus=1", "-v", f"shards={topologia.shards(self.nos)}", "-f", "db/schema.sql")
        else:
            self.psql(no, "-c", "create database crebito", banco="postgres")
            self.psql(no, "-f", "db/schema.sql")

    def esperar_postgres(self, no, limite=30):
        fim = time.monotonic() + limite
        while time.monotonic() < fim:
            pronto = subprocess.run(
                [f"{self.bin}/pg_isready", "-q", "-h", no.pgrun, "-p", str(no.porta), "-U", "postgres"]
                + ["-d", "postgres"],
                stdout=subprocess.DEVNULL,
            )
            if pronto.returncode == 0:
                return
            if self.supervisor.proc(no.nome).poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError(f"PostgreSQL ({no.nome}) did not start")

    def primario(self, limite=60):
        """HA: the node Patroni runs as the primary (its REST API answers 200
        on /primary), once there is one."""
        fim = time.monotonic() + limite
        while time.monotonic() < fim:
            no = patroni.primario(self.nos)
            if no is not None:
                return no
            time.sleep(0.2)
        raise RuntimeError(f"no primary within {limite}s")

    def verificar_citus(self):
        # Debian's layout (.../15/bin beside .../15/lib) unless pg_config says otherwise.
        pkglib = os.path.join(os.path.dirname(self.bin), "lib")
        if os.path.exists(f"{self.bin}/pg_config"):
            saida = subprocess.run([f"{self.bin}/pg_config", "--pkglibdir"], capture_output=True, text=True)
            pkglib = saida.stdout.strip() or pkglib
        if not os.path.exists(os.path.join(pkglib, "citus.so")):
            sys.exit(CITUS_AUSENTE.format(versao=os.path.basename(os.path.dirname(self.bin))))

    def tem_banco(self, no):
        consulta = "select 1 from pg_database where datname = 'crebito'"
        r = self.psql(no, "-A", "-t", "-c", consulta, banco="postgres", saida=subprocess.PIPE)
        return r.stdout.strip() == "1"
