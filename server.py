"""crebito's HTTP shim: routes a request to one PostgreSQL function call.

The database validates, applies and formats everything; this process only
matches the route, hands the client id and the raw body to `api.transacao` or
`api.extrato`, and writes back the status and JSON the function returned. It
talks to PostgreSQL through libpq directly (psycopg's `pq` layer), so the hot
path builds no Python objects beyond the bytes it forwards.

Configuration (environment):
    DATABASE_URL      libpq connection string or URI; empty means libpq's PG* variables
    CREBITO_LISTEN    "unix:/path/to/socket" or "host:port" (default 0.0.0.0:8080); with
                      "{worker}" in it (e.g. unix:/run/api01-{worker}.sock, 0.0.0.0:808{worker})
                      each worker listens on its own address, {worker} being its number from 1
    CREBITO_WORKERS   pre-forked worker processes, each with its own connection (default 3)
    CREBITO_USUARIO   OS user to switch to once the socket is bound (when started as root)
    CREBITO_PRAZO_BANCO  seconds a call may wait for the database before it is answered 503 and
                      the connection replaced (default: no limit): a server that hangs with its
                      sockets open (a frozen machine, in the HA topology) then holds no worker
    CREBITO_ROTEAMENTO   "citus": DATABASE_URL names every Citus worker (host=a,b port=p,q), and
                      each worker process keeps a connection to each one and sends a client's
                      call to the node that holds its shard (roteamento.py)
    CREBITO_MAPA      with "citus": where to write the shard map whenever it changes, for
                      HAProxy to send each request to the workers of its client's node
                      (roteamento.lua)
"""

import ctypes
import json
import logging
import os
import pwd
import select
import signal
import sys
import time

import bjoern
import psycopg
from psycopg import pq

import roteamento

log = logging.getLogger("crebito")

MAX_BODY = 4096
MAX_CLIENTE_ID = 2**31 - 1
TEXT_OID = 25
INT4_OID = 23

JSON = ("Content-Type", "application/json")
STATUS_LINE = {
    b"200": "200 OK",
    b"404": "404 Not Found",
    b"422": "422 Unprocessable Entity",
}


def _erro(status, mensagem, *headers):
    body = json.dumps({"erro": mensagem}, ensure_ascii=False).encode()
    return status, [JSON, ("Content-Length", str(len(body))), *headers], body


NAO_ENCONTRADO = _erro("404 Not Found", "recurso não encontrado")
SO_POST = _erro("405 Method Not Allowed", "use POST", ("Allow", "POST"))
SO_GET = _erro("405 Method Not Allowed", "use GET", ("Allow", "GET"))
GRANDE_DEMAIS = _erro("413 Content Too Large", f"corpo maior que {MAX_BODY} bytes")
CORPO_INVALIDO = _erro("422 Unprocessable Entity", "o corpo deve ser JSON em UTF-8")
INDISPONIVEL = _erro("503 Service Unavailable", "banco de dados indisponível, tente de novo")
FALHA_INTERNA = _erro("500 Internal Server Error", "erro interno")

# Statements prepared once per connection; parameters travel as raw bytes.
# The body goes in binary format, so PostgreSQL itself rejects invalid UTF-8
# and NUL bytes (SQLSTATE class 22) instead of libpq truncating at a NUL.
STATEMENTS = {
    b"transacao": (
        b"select status, resposta, duravel from api.transacao($1, $2, $3)",
        [INT4_OID, TEXT_OID, TEXT_OID],
        [0, 1, 0],
    ),
    b"extrato": (b"select status, resposta, duravel from api.extrato($1)", [INT4_OID], [0]),
    b"confirmar": (b"select descarregou from api.confirmar($1)", [INT4_OID], [0]),
}
# Citus: a write or an extrato runs on the shard's own tables
# (api.transacao_local, api.extrato_local), and is sent again through Citus
# (api.transacao, api.extrato), which forwards it to the client's node, when
# this node does not hold it. Each call sits in a CTE because Citus keeps a
# plain call of a cluster-wide function with parameters from a kept plan,
# planning it anew each time (its shape for forwarding it).
LOCAIS = {b"transacao": b"api.transacao_local($1, $2, $3)", b"extrato": b"api.extrato_local($1)"}
REPASSES = {nome: b"repassar_" + nome for nome in LOCAIS}
STATEMENTS_CITUS = {
    **STATEMENTS,
    **{
        nome: (b"with t as materialized (select * from " + chamada + b") select status, resposta, duravel from t",)
        + STATEMENTS[nome][1:]
        for nome, chamada in LOCAIS.items()
    },
    **{REPASSES[nome]: STATEMENTS[nome] for nome in LOCAIS},
}
OK = pq.ConnStatus.OK
TUPLES_OK = pq.ExecStatus.TUPLES_OK


# Calls made once per new session, before it serves: a session compiles each
# plpgsql function and plans each of its statements on first use, several
# milliseconds that would otherwise fall on the first requests (the official
# test's first burst). Client 0 never exists (the schema forbids it), so they
# change nothing; the debit and the credit plan both UPDATEs.
def aquecimento(cliente=b"0"):
    return [
        (b"transacao", [cliente, b'{"valor": 1, "tipo": "d", "descricao": "aquecer"}', None]),
        (b"transacao", [cliente, b'{"valor": 1, "tipo": "c", "descricao": "aquecer"}', None]),
        (b"extrato", [cliente]),
        (b"confirmar", [cliente]),
    ]


class Banco:
    """One persistent libpq connection, reopened when it breaks."""

    def __init__(self, conninfo, prazo=None, statements=STATEMENTS):
        self.conninfo = conninfo
        self.prazo = prazo
        self.statements = statements
        self.pgconn = None

    def _executar(self, nome, params, formatos=None):
        """exec_prepared, waiting at most `prazo` seconds for the answer."""
        if self.prazo is None:
            return self.pgconn.exec_prepared(nome, params, formatos)
        self.pgconn.send_query_prepared(nome, params, formatos)
        return self._resultado()

    def consultar(self, sql):
        """The rows (bytes) of one query outside the request path, connecting
        first when needed; raises psycopg.Error when it cannot."""
        if self.pgconn is None or self.pgconn.status != OK:
            self._conectar()
        if self.prazo is None:
            res = self.pgconn.exec_(sql)
        else:
            self.pgconn.send_query(sql)
            res = self._resultado()
        if res.status != TUPLES_OK:
            raise psycopg.OperationalError(res.get_error_message())
        return [[res.get_value(i, j) for j in range(res.nfields)] for i in range(res.ntuples)]

    def _resultado(self):
        pgconn = self.pgconn
        fim = time.monotonic() + self.prazo
        while pgconn.is_busy():
            restante = fim - time.monotonic()
            if restante <= 0 or not select.select([pgconn.socket], [], [], restante)[0]:
                raise psycopg.OperationalError(f"o banco não respondeu em {self.prazo} s")
            pgconn.consume_input()
        res = pgconn.get_result()
        while pgconn.get_result() is not None:
            pass
        return res

    def _conectar(self):
        pgconn = pq.PGconn.connect(self.conninfo)
        if pgconn.status != OK:
            raise psycopg.OperationalError(pgconn.get_error_message())
        for nome, (sql, tipos, _) in self.statements.items():
            res = pgconn.prepare(nome, sql, tipos)
            if res.status != pq.ExecStatus.COMMAND_OK:
                raise psycopg.OperationalError(res.get_error_message())
        self.pgconn = pgconn

    def conectar(self, chamadas=None, esperar=True):
        """Connects and warms the session up when the worker starts, waiting
        as long as the database takes to answer (a first start loads the
        schema): the worker listens only then, so until it can serve, HAProxy
        finds its socket closed and sends it nothing, and no container
        healthcheck has to ask the database over and over. A reconnection
        while serving skips the warm-up, which would delay the request that
        waits for it. Without `esperar`, one attempt: a node that is down is
        connected to on its first call."""
        espera = 0.05
        while True:
            try:
                self._conectar()
                break
            except psycopg.Error as e:
                if espera == 0.05:
                    log.warning("esperando o banco: %s", str(e).strip())
                if not esperar:
                    return
                time.sleep(espera)
                espera = min(2 * espera, 1.0)
        try:
            for nome, params in chamadas or aquecimento():
                res = self._executar(nome, params, self.statements[nome][2])
                if res.status != TUPLES_OK:
                    log.warning("aquecimento de %s falhou: %s", nome.decode(), res.get_error_message().strip())
        except psycopg.Error as e:
            log.warning("aquecimento interrompido: %s", e)

    def chamar(self, nome, params, repetivel):
        """Runs a prepared statement in its own transaction and returns
        (status, headers, body) once the WAL is flushed past every commit the
        statement could have seen: at once when its commit waited for that
        flush (`duravel`), else after api.confirmar, in a second round trip.
        libpq returns rows only after the server's ReadyForQuery, which follows
        the commit; a connection that breaks before it yields an error.

        A statement whose outcome is unknown (the connection broke after it
        was sent, or its confirmation failed) is answered 503; a read-only one
        is retried once first.
        """
        for _ in range(2 if repetivel else 1):
            try:
                if self.pgconn is not None and self._encerrada():
                    # Replaced before anything is sent, so a POST is not
                    # answered 503 only because its session died while idle.
                    log.warning("sessão encerrada pelo banco enquanto ociosa; reconectando")
                    self._descartar()
                if self.pgconn is None or self.pgconn.status != OK:
                    self._conectar()
                res = confirmacao = self._executar(nome, params, self.statements[nome][2])
                if res.status == TUPLES_OK and res.get_value(0, 2) != b"t":
                    confirmacao = self._executar(b"confirmar", params[:1])
            except psycopg.Error as e:
                log.error("falha ao chamar %s: %s", nome.decode(), e)
                self._descartar()
                continue
            if res.status == TUPLES_OK:
                if confirmacao.status == TUPLES_OK:
                    body = res.get_value(0, 1)
                    return (
                        STATUS_LINE[res.get_value(0, 0)],
                        [JSON, ("Content-Length", str(len(body)))],
                        body,
                    )
                res = confirmacao
            elif (res.error_field(pq.DiagnosticField.SQLSTATE) or b"").startswith(b"22"):
                # The body was not valid UTF-8 text.
                return CORPO_INVALIDO
            log.error("%s falhou: %s", nome.decode(), res.get_error_message().strip())
            if self.pgconn.status != OK:
                self._descartar()
                continue
            break
        return INDISPONIVEL

    def _encerrada(self):
        """True when the server has ended this idle session (a restart, a
        terminate, a crash of another backend): it then sent its last error or
        closed the socket, which reads ready although no statement is in flight."""
        try:
            return bool(select.select([self.pgconn.socket], [], [], 0)[0])
        except (OSError, ValueError, psycopg.Error):
            return True

    def _descartar(self):
        if self.pgconn is not None:
            self.pgconn.finish()
        self.pgconn = None


class BancoCitus(Banco):
    """A Citus worker node: a write or an extrato goes as api.transacao_local
    or api.extrato_local, which answer nothing (null status) and do nothing
    when the node does not hold the client's shard; the call then goes again
    as api.transacao or api.extrato, for Citus to forward, and `mapa_velho` is
    told."""

    def __init__(self, conninfo, prazo, mapa_velho):
        super().__init__(conninfo, prazo, STATEMENTS_CITUS)
        self.mapa_velho = mapa_velho

    def _executar(self, nome, params, formatos=None):
        res = super()._executar(nome, params, formatos)
        if nome in REPASSES and res.status == TUPLES_OK and res.get_value(0, 0) is None:
            self.mapa_velho()
            res = super()._executar(REPASSES[nome], params, formatos)
        return res


class Roteador:
    """Citus: one Banco per worker node, and each call sent to the node that
    holds its client's shard, by the map api.shards() gives (roteamento.py).
    The map is read again every PERIODO seconds, and sooner (PERIODO_MINIMO)
    once a write reached a node that no longer holds its client, so after a
    shard moves its calls are back on their owner within that; meanwhile
    Citus forwards them from the old node, which costs speed, never an answer.
    Without a map (no node answered yet) or for a node not in DATABASE_URL,
    the first node that is connected takes the call, and Citus forwards it."""

    PERIODO = 5.0
    # After a write reached a node without its client, the map is read again
    # at most this long after the last reading: a node missing from
    # DATABASE_URL, whose clients always go elsewhere, costs no reading per call.
    PERIODO_MINIMO = 0.5
    SHARDS = b"select minimo, maximo, endereco, porta from api.shards()"

    def __init__(self, conninfo, prazo):
        self.bancos = {
            no: BancoCitus(c.encode(), prazo, self._mapa_velho)
            for no, c in roteamento.conninfos_por_no(conninfo).items()
        }
        self.mapa = None
        self.lido_em = self.proxima_leitura = 0.0
        self.arquivo = os.environ.get("CREBITO_MAPA") or None
        self.publicado = None

    def _ler_mapa(self, primeiro=None):
        """The map from the first node that gives it, starting with `primeiro`
        (the node the call at hand goes to: were it frozen, the call would wait
        for it anyway, and no other node's hanging holds this process); False
        when no node answered at all."""
        self.lido_em = time.monotonic()
        self.proxima_leitura = self.lido_em + self.PERIODO
        ordem = sorted(self.bancos.items(), key=lambda item: item[0] != primeiro)
        for _, b in ordem:
            try:
                linhas = b.consultar(self.SHARDS)
            except psycopg.Error as e:
                log.warning("mapa dos shards: %s", str(e).strip())
                if b.pgconn is None or b.pgconn.status != OK:
                    b._descartar()
                    continue
                return True  # it answered, with an error: unrouted until it gives the map
            linhas = [(int(m), int(x), h.decode(), int(p)) for m, x, h, p in linhas]
            self.mapa = roteamento.Mapa(linhas)
            self._publicar(linhas)
            return True
        return False

    def _publicar(self, linhas):
        """Writes the map for HAProxy (roteamento.lua) when it changed: one
        "minimo maximo porta" line per shard, replaced whole, so HAProxy never
        reads half of one."""
        if self.arquivo is None:
            return
        texto = "".join(f"{m} {x} {p}\n" for m, x, _, p in sorted(linhas))
        if texto == self.publicado:
            return
        temporario = f"{self.arquivo}.{os.getpid()}"
        try:
            with open(temporario, "w") as f:
                f.write(texto)
            # For HAProxy's user: only it and the API's enter the directory.
            os.chmod(temporario, 0o644)
            os.replace(temporario, self.arquivo)
            self.publicado = texto
        except OSError as e:
            log.warning("mapa para o HAProxy: %s", e)

    def _mapa_velho(self):
        # A call reached a node that no longer holds its client: read the map
        # again soon.
        self.proxima_leitura = min(self.proxima_leitura, self.lido_em + self.PERIODO_MINIMO)

    def conectar(self):
        """At the worker's start: waits until some node answers (for the map),
        then warms every node up with calls for a client it holds that never
        exists (ids are positive), so each node plans its own statements."""
        espera = 0.05
        while not self._ler_mapa():
            time.sleep(espera)
            espera = min(2 * espera, 1.0)
        for no, b in self.bancos.items():
            cliente = next((c for c in range(-1, -100_000, -1) if self.mapa.no(c) == no), 0)
            b.conectar(aquecimento(str(cliente).encode()), esperar=False)

    def banco(self, cliente):
        no = self.mapa.no(int(cliente)) if self.mapa else None
        if time.monotonic() >= self.proxima_leitura:
            self._ler_mapa(no)
            no = self.mapa.no(int(cliente)) if self.mapa else None
        b = self.bancos.get(no)
        if b is None:
            b = next((x for x in self.bancos.values() if x.pgconn is not None), None)
        return b or next(iter(self.bancos.values()))


class Unico:
    """Every call to one Banco (single-node, HA, Docker)."""

    def __init__(self, banco):
        self.unico = banco

    def conectar(self):
        self.unico.conectar()

    def banco(self, cliente):
        return self.unico


def _destinos():
    conninfo = os.environ.get("DATABASE_URL", "")
    prazo = float(os.environ.get("CREBITO_PRAZO_BANCO") or 0) or None
    if os.environ.get("CREBITO_ROTEAMENTO") == "citus":
        return Roteador(conninfo, prazo)
    return Unico(Banco(conninfo.encode(), prazo))


destinos = _destinos()


def _cliente_id(texto):
    """The id's bytes when it is a canonical decimal int4 above zero, else None."""
    if 0 < len(texto) <= 10 and texto.isascii() and texto.isdigit() and texto[0] != "0":
        if int(texto) <= MAX_CLIENTE_ID:
            return texto.encode()
    return None


def responder(environ):
    partes = environ["PATH_INFO"].split("/")
    if len(partes) != 4 or partes[0] or partes[1] != "clientes":
        return NAO_ENCONTRADO
    recurso = partes[3]
    metodo = environ["REQUEST_METHOD"]
    if recurso == "transacoes":
        if metodo != "POST":
            return SO_POST
    elif recurso == "extrato":
        if metodo != "GET":
            return SO_GET
    else:
        return NAO_ENCONTRADO
    cliente = _cliente_id(partes[2])
    if cliente is None:
        return NAO_ENCONTRADO
    if recurso == "extrato":
        return destinos.banco(cliente).chamar(b"extrato", [cliente], repetivel=True)

    # bjoern has already read the whole body; one byte past the cap tells.
    corpo = environ["wsgi.input"].read(MAX_BODY + 1)
    if len(corpo) > MAX_BODY:
        return GRANDE_DEMAIS
    chave = environ.get("HTTP_IDEMPOTENCY_KEY")
    if chave is not None:
        chave = chave.encode()
        if b"\0" in chave:
            return CORPO_INVALIDO
    return destinos.banco(cliente).chamar(b"transacao", [cliente, corpo, chave], repetivel=False)


def app(environ, start_response):
    try:
        status, headers, body = responder(environ)
    except Exception:
        log.exception("erro inesperado")
        status, headers, body = FALHA_INTERNA
    start_response(status, headers)
    return [body]


def _morrer_com_o_pai(pai):
    """Ask Linux to SIGTERM this worker when its parent dies, so a killed
    instance never leaves orphans holding the socket and connections."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != pai:
        os._exit(0)  # the parent died before prctl took effect


def _listen(endereco):
    if endereco.startswith("unix:"):
        caminho = endereco[len("unix:") :]
        if os.path.exists(caminho):
            os.unlink(caminho)
        bjoern.listen(app, endereco)
        # Whoever may enter the socket's directory may connect (the launcher
        # gives it to HAProxy's group alone), whichever user bound it.
        os.chmod(caminho, 0o666)
    else:
        host, _, port = endereco.rpartition(":")
        bjoern.listen(app, host or "0.0.0.0", int(port))


def _soltar_root(usuario):
    """Gives root up for good before anything is served: with the socket bound,
    nothing here needs it, and a flaw in request parsing must not reach it."""
    info = pwd.getpwnam(usuario)
    os.setgroups([])
    os.setgid(info.pw_gid)
    os.setuid(info.pw_uid)


def _iniciar_worker(numero, endereco):
    pai = os.getpid()
    pid = os.fork()
    if pid:
        return pid
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    _morrer_com_o_pai(pai)
    destinos.conectar()
    if "{worker}" in endereco:
        # Its own socket: HAProxy then sends it a request only when it is free.
        _listen(endereco.replace("{worker}", str(numero)))
    try:
        bjoern.run()
    finally:
        os._exit(0)


def main():
    logging.basicConfig(level=logging.INFO, format="api[%(process)d] %(levelname)s %(message)s", stream=sys.stderr)
    endereco = os.environ.get("CREBITO_LISTEN", "0.0.0.0:8080")
    n = int(os.environ.get("CREBITO_WORKERS", "3"))
    if "{worker}" not in endereco:
        _listen(endereco)  # one socket, shared by the workers
    # With a socket per worker, each worker binds its own after this.
    if os.environ.get("CREBITO_USUARIO"):
        _soltar_root(os.environ["CREBITO_USUARIO"])

    parando = False
    workers = {}  # pid -> (start time, worker number)

    def parar(signum, frame):
        nonlocal parando
        parando = True
        for pid in list(workers):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, parar)
    signal.signal(signal.SIGINT, parar)
    for numero in range(1, n + 1):
        workers[_iniciar_worker(numero, endereco)] = (time.monotonic(), numero)
    log.info("%d workers em %s", n, endereco)
    # Supervise: a worker that dies is replaced at once.
    while workers:
        try:
            pid, estado = os.wait()
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        inicio, numero = workers.pop(pid, (None, None))
        if not parando and inicio is not None:
            log.warning("worker %d terminou (%d); iniciando outro", pid, estado)
            if time.monotonic() - inicio < 1:
                time.sleep(1)  # a worker that dies at once must not spin
            workers[_iniciar_worker(numero, endereco)] = (time.monotonic(), numero)


if __name__ == "__main__":
    main()
