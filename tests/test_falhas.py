"""Crash and restart under load, in the spirit of Jepsen's "bank" workload.

While client threads keep sending credits and debits through HAProxy, each
with an Idempotency-Key and retrying an unanswered request with the same key,
the test kill -9s in turn an API worker, a whole API instance, HAProxy and the
PostgreSQL postmaster. Afterwards the books must show that every acknowledged
transaction is there, none was applied twice, the balances match the ledger
and none went below its limit; during the faults no client may see a 500 or
wait past its timeout, and the stack must come back by itself.

This module starts its own stack, so that killing its parts cannot disturb
the tests that share the session's stack."""

import http.client
import json
import os
import random
import re
import signal
import threading
import time
from collections import Counter

import psycopg
import pytest
from conftest import LIMITES, esperar, stack_temporaria

WORKERS = 2
CLIENTES = 6
# Longer than anything the stack may legitimately take to answer: HAProxy's
# queue (5s) plus its server timeout (6s) plus a failed connect and a retry.
TIMEOUT_CLIENTE = 15
# A request retried for this long without an answer is a failure of recovery.
DESISTE_APOS = 60
RODADAS = 2
# The statuses that mean "not answered, the outcome is unknown: retry".
SEM_RESPOSTA = {None, 502, 503, 504}


@pytest.fixture(scope="module")
def pilha():
    # Its own stack: killing its parts cannot disturb the other tests.
    with stack_temporaria(WORKERS, prefixo="crebito-falhas-") as s:
        yield s


def filhos(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except (FileNotFoundError, ProcessLookupError):
        # Gone, or exiting: /proc answers ESRCH for a task being reaped.
        return []


def vivo(pid):
    """Running, as opposed to gone or a zombie nobody reaped yet."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


class ClienteDoBanco(threading.Thread):
    """One bank customer's app: sends transactions one after another, each on
    a new connection, and retries an unanswered one with the same key until it
    gets 200 or 422. Without keys (`com_chave` false) it retries nothing: an
    unanswered one is abandoned, keyed by its description, unique as a key."""

    def __init__(self, numero, pilha, parar, clientes=(1, 2, 3, 4, 5), com_chave=True):
        super().__init__(name=f"cliente-{numero}", daemon=True)
        self.numero = numero
        self.pilha = pilha
        self.parar = parar
        self.clientes = clientes
        self.com_chave = com_chave
        self.rng = random.Random(numero)
        self.status = Counter()  # every answer seen, None for a connection error
        self.timeouts = 0
        self.aceitas = {}  # (cliente, chave) -> body of the 200
        self.recusadas = set()  # (cliente, chave) answered 422
        self.inesperadas = []  # (status, body) outside 200/422 and the retryable ones
        self.abandonadas = []  # keys that never got an answer
        self.respostas_200 = []  # monotonic time of each 200
        self.pedidos = 0

    def enviar(self, cliente, corpo, chave):
        self.pedidos += 1
        conn = http.client.HTTPConnection("127.0.0.1", self.pilha.porta, timeout=TIMEOUT_CLIENTE)
        try:
            conn.request(
                "POST",
                f"/clientes/{cliente}/transacoes",
                body=corpo,
                headers={"Content-Type": "application/json", **({"Idempotency-Key": chave} if self.com_chave else {})},
            )
            r = conn.getresponse()
            return r.status, r.read()
        except TimeoutError:
            self.timeouts += 1
            return None, b""
        except (OSError, http.client.HTTPException):
            return None, b""
        finally:
            conn.close()

    def run(self):
        n = 0
        while not self.parar.is_set():
            n += 1
            cliente = self.rng.choice(self.clientes)
            # Unique among the threads, so a reader can tell each one apart.
            descricao = f"{self.numero}.{n}"[:10]
            chave = f"c{self.numero}-{n}" if self.com_chave else descricao
            corpo = json.dumps(
                {"valor": self.rng.randint(1, 10000), "tipo": self.rng.choice("cd"), "descricao": descricao}
            )
            inicio = time.monotonic()
            while True:
                status, resposta = self.enviar(cliente, corpo, chave)
                self.status[status] += 1
                if status == 200:
                    self.aceitas[(cliente, chave)] = resposta.decode()
                    self.respostas_200.append(time.monotonic())
                    break
                if status == 422:
                    self.recusadas.add((cliente, chave))
                    break
                if status not in SEM_RESPOSTA:
                    self.inesperadas.append((status, resposta))
                    break
                if not self.com_chave or time.monotonic() - inicio > DESISTE_APOS:
                    self.abandonadas.append((cliente, chave))
                    break
                time.sleep(0.05)
            time.sleep(0.005)


def primeiro_200(pilha, desde, limite=30):
    """Seconds from `desde` to the first 200 of a statement through HAProxy."""
    fim = time.monotonic() + limite
    while time.monotonic() < fim:
        try:
            if pilha.pedir("GET", "/clientes/1/extrato", timeout=2).status == 200:
                return time.monotonic() - desde
        except OSError:
            pass
        time.sleep(0.02)
    return None


def pid_novo(pilha, nome, antigo):
    """The live pid the launcher wrote for `nome` in place of `antigo`, or None yet."""
    try:
        novo = pilha.pid(nome)
    except (FileNotFoundError, ValueError):
        return None
    return novo if novo != antigo and vivo(novo) else None


def matar_worker(pilha):
    master = pilha.pid("api01")
    antes = filhos(master)
    assert len(antes) == WORKERS, antes
    alvo = random.choice(antes)
    os.kill(alvo, signal.SIGKILL)
    t0 = time.monotonic()

    def substituido():
        atuais = filhos(master)
        return len(atuais) == WORKERS and alvo not in atuais

    return t0, substituido


def matar_instancia(pilha):
    master = pilha.pid("api02")
    workers = filhos(master)
    assert len(workers) == WORKERS, workers
    os.kill(master, signal.SIGKILL)
    t0 = time.monotonic()
    # PR_SET_PDEATHSIG: the workers must not outlive their master.
    assert esperar(lambda: not any(vivo(w) for w in workers), 5), [w for w in workers if vivo(w)]

    def reiniciada():
        novo = pid_novo(pilha, "api02", master)
        return novo is not None and len(filhos(novo)) == WORKERS

    return t0, reiniciada


def matar_haproxy(pilha):
    pid = pilha.pid("haproxy")
    os.kill(pid, signal.SIGKILL)
    t0 = time.monotonic()
    return t0, lambda: pid_novo(pilha, "haproxy", pid) is not None


def aceita_conexoes_de_novo(pilha, pid):
    """True once a postmaster other than `pid` accepts connections."""

    def aceita_conexoes():
        try:
            with psycopg.connect(pilha.dsn(), connect_timeout=2) as conn:
                conn.execute("select 1")
            return pilha.pid("postgres") != pid
        except (psycopg.Error, FileNotFoundError, ValueError):
            return False

    return aceita_conexoes


def matar_postgres(pilha):
    pid = pilha.pid("postgres")
    os.kill(pid, signal.SIGKILL)
    return time.monotonic(), aceita_conexoes_de_novo(pilha, pid)


def matar_postgres_com_backend_ocupado(pilha):
    """The postmaster dies while a backend is busy computing: that backend
    notices only when its statement ends, and until then it keeps the old
    shared memory attached, so PostgreSQL refuses to start ("pre-existing
    shared memory block is still in use") and the launcher must keep trying."""
    conn = psycopg.connect(pilha.dsn(), autocommit=True)
    conn.execute("set statement_timeout = '3s'")

    def ocupar():
        try:
            conn.execute("select count(*) from generate_series(1, 1000000000)")
        except psycopg.Error:
            pass
        finally:
            conn.close()

    threading.Thread(target=ocupar, daemon=True).start()
    with psycopg.connect(pilha.dsn(), autocommit=True) as db:
        assert esperar(
            lambda: db.execute(
                "select count(*) from pg_stat_activity where query like 'select count(*) from generate_series%%'"
                " and state = 'active'"
            ).fetchone()[0],
            5,
        )
    return matar_postgres(pilha)


FALHAS = [
    ("worker de api01", matar_worker),
    ("instância api02", matar_instancia),
    ("haproxy", matar_haproxy),
    ("postmaster", matar_postgres),
    ("postmaster com backend ocupado", matar_postgres_com_backend_ocupado),
]


def test_nada_perdido_nada_duplicado(pilha, capsys):
    parar = threading.Event()
    clientes = [ClienteDoBanco(i, pilha, parar) for i in range(CLIENTES)]
    for c in clientes:
        c.start()
    medidas = []
    try:
        time.sleep(2)
        for rodada in range(RODADAS):
            for nome, matar in FALHAS:
                t0, voltou = matar(pilha)
                # First 200 at all (the rest of the stack may carry on), then
                # first 200 once the killed part is back: normal service again.
                ate_200 = primeiro_200(pilha, t0)
                assert voltou_a_tempo(voltou), f"{nome} não voltou sozinho"
                ate_volta = time.monotonic() - t0
                ate_normal = primeiro_200(pilha, t0)
                assert ate_200 is not None and ate_normal is not None, f"nenhum 200 em 30s depois de matar {nome}"
                medidas.append((rodada, nome, ate_200, ate_volta, ate_normal))
                # Steady traffic between faults, so each one hits a working stack.
                time.sleep(2)
    finally:
        parar.set()
        for c in clientes:
            c.join(timeout=DESISTE_APOS + TIMEOUT_CLIENTE + 10)
    assert not any(c.is_alive() for c in clientes)

    status = sum((c.status for c in clientes), Counter())
    aceitas = {k: v for c in clientes for k, v in c.aceitas.items()}
    recusadas = set().union(*(c.recusadas for c in clientes))

    with psycopg.connect(pilha.dsn(), autocommit=True) as db:
        livro = {
            (cliente, chave): (st, resposta, tid, existe)
            for cliente, chave, st, resposta, tid, existe in db.execute(
                "select i.cliente_id, i.chave, i.status, i.resposta, i.lancamento,"
                " exists (select from crebito.transacao as t"
                " where t.lancamento = i.lancamento and t.cliente_id = i.cliente_id)"
                " from crebito.idempotencia as i"
            )
        }
        linhas_do_livro = db.execute("select count(*) from crebito.transacao").fetchone()[0]
        duplicadas = db.execute(
            "select count(*) from (select cliente_id, lancamento from crebito.idempotencia"
            " where lancamento is not null group by cliente_id, lancamento having count(*) > 1) as d"
        ).fetchone()[0]
        violacoes = db.execute("select cliente, violacao from api.auditoria()").fetchall()
        saldos = dict(db.execute("select id, saldo from crebito.cliente").fetchall())

    with open(os.path.join(pilha.var, "stack.log"), errors="replace") as f:
        log = f.read()
    partidas_recusadas = log.count("is still in use")
    no_livro = [k for k, body in aceitas.items() if k in livro and livro[k][:2] == (200, body) and livro[k][3]]
    with capsys.disabled():
        print("\n-- crash e reinício sob carga --")
        for rodada, nome, ate_200, ate_volta, ate_normal in medidas:
            print(
                f"rodada {rodada + 1}: kill -9 {nome}: primeiro 200 em {ate_200:.2f}s,"
                f" reiniciado em {ate_volta:.2f}s, primeiro 200 depois disso em {ate_normal:.2f}s"
            )
        print(f"falhas injetadas: {len(medidas)}; partidas do PostgreSQL recusadas: {partidas_recusadas}")
        print(f"pedidos enviados: {sum(c.pedidos for c in clientes)}; respostas: {dict(status)}")
        print(f"timeouts do cliente: {sum(c.timeouts for c in clientes)}")
        print(f"200 recebidos (chaves): {len(aceitas)}; 200 achados no livro: {len(no_livro)}")
        print(f"422 recebidos (chaves): {len(recusadas)}; linhas no livro: {linhas_do_livro}; duplicadas: {duplicadas}")

    assert len(medidas) == RODADAS * len(FALHAS)
    # The busy backend really outlived its postmaster, and the launcher kept trying.
    assert partidas_recusadas >= RODADAS
    # Never a 500 or any other unexpected answer; never a hang past the client's timeout.
    assert [x for c in clientes for x in c.inesperadas] == [], erros_no_log(pilha)
    assert sum(c.timeouts for c in clientes) == 0
    assert [x for c in clientes for x in c.abandonadas] == []
    assert status[500] == 0
    # The faults were felt: some requests went unanswered and were retried.
    assert sum(status[s] for s in SEM_RESPOSTA) > 0
    assert len(aceitas) > 100
    # Every acknowledged transaction is in the ledger, with the answer the client saw.
    assert len(no_livro) == len(aceitas)
    # Each key that got 200 was applied exactly once, and nothing else was applied.
    assert duplicadas == 0
    assert linhas_do_livro == len(aceitas)
    assert sum(1 for st, _, tid, _ in livro.values() if st == 200) == len(aceitas)
    # A refused debit left no ledger row.
    for k in recusadas:
        assert livro[k][0] == 422 and livro[k][2] is None, k
    # Balances equal the ledger's sums and none went below its limit.
    assert violacoes == []
    for cliente, saldo in saldos.items():
        assert saldo >= -LIMITES[cliente]
    for (cliente, _), body in aceitas.items():
        assert json.loads(body)["saldo"] >= -LIMITES[cliente]
    # The API shows the same balances as the database.
    for cliente, saldo in saldos.items():
        assert pilha.extrato(cliente).json["saldo"]["total"] == saldo


def erros_no_log(pilha):
    """The server's own account of unexpected answers, for the failure message."""
    with open(os.path.join(pilha.var, "stack.log"), errors="replace") as f:
        linhas = f.readlines()
    return "".join(linha for linha in linhas if "erro inesperado" in linha or "Error" in linha)[-4000:]


def voltou_a_tempo(condicao):
    return esperar(condicao, 30, passo=0.05)


# -- the window of early lock release ------------------------------------------
# api.transacao commits without waiting for the WAL flush and api.confirmar
# flushes before the answer leaves. A crash between the two may lose the
# commit, but then nobody was told about it: no 200, and no statement that
# listed it.

ESCRITORES = 12
LEITORES = 2
QUEDAS = 3


def matar_todo_o_postgres(pilha):
    """kill -9 of the postmaster and of every backend at once, so that no
    process is left to write out the WAL still in shared memory."""
    pid = pilha.pid("postgres")
    backends = filhos(pid)
    for alvo in [pid, *backends]:
        try:
            os.kill(alvo, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return aceita_conexoes_de_novo(pilha, pid)


class EscritorDaJanela(threading.Thread):
    """Credits of 1 to client 1, one after another, each with its own key and
    descricao; an unanswered one is retried with the same key."""

    def __init__(self, numero, pilha, parar):
        super().__init__(name=f"escritor-{numero}", daemon=True)
        self.numero = numero
        self.pilha = pilha
        self.parar = parar
        self.cliente = ClienteDoBanco(numero, pilha, parar)
        self.aceitas = {}  # descricao -> key
        self.inesperadas = []

    def run(self):
        n = 0
        while not self.parar.is_set():
            n += 1
            descricao = f"j{self.numero:x}-{n}"
            chave = f"janela-{descricao}"
            corpo = json.dumps({"valor": 1, "tipo": "c", "descricao": descricao})
            inicio = time.monotonic()
            while time.monotonic() - inicio < DESISTE_APOS:
                status, resposta = self.cliente.enviar(1, corpo, chave)
                self.cliente.status[status] += 1
                if status == 200:
                    self.aceitas[descricao] = chave
                    break
                if status not in SEM_RESPOSTA:
                    self.inesperadas.append((status, resposta))
                    break
                time.sleep(0.02)


class LeitorDaJanela(threading.Thread):
    """Statements of client 1, one after another: the descricoes each listed."""

    def __init__(self, numero, pilha, parar):
        super().__init__(name=f"leitor-{numero}", daemon=True)
        self.pilha = pilha
        self.parar = parar
        self.vistas = set()
        self.respostas = 0

    def run(self):
        while not self.parar.is_set():
            try:
                r = self.pilha.pedir("GET", "/clientes/1/extrato", timeout=TIMEOUT_CLIENTE)
            except OSError:
                continue
            if r.status == 200:
                self.respostas += 1
                self.vistas.update(i["descricao"] for i in r.json["ultimas_transacoes"])


def test_queda_entre_o_commit_e_o_flush(pilha, capsys):
    parar = threading.Event()
    escritores = [EscritorDaJanela(i, pilha, parar) for i in range(ESCRITORES)]
    leitores = [LeitorDaJanela(i, pilha, parar) for i in range(LEITORES)]
    for t in escritores + leitores:
        t.start()
    try:
        for _ in range(QUEDAS):
            time.sleep(1.5)
            voltou = matar_todo_o_postgres(pilha)
            assert voltou_a_tempo(voltou), "o PostgreSQL não voltou sozinho"
        time.sleep(1.5)
    finally:
        parar.set()
        for t in escritores + leitores:
            t.join(timeout=DESISTE_APOS + TIMEOUT_CLIENTE + 10)
    assert not any(t.is_alive() for t in escritores + leitores)

    aceitas = {d: c for e in escritores for d, c in e.aceitas.items()}
    vistas = {d for leitor in leitores for d in leitor.vistas if re.match(r"j[0-9a-f]+-", d)}
    status = sum((e.cliente.status for e in escritores), Counter())
    with psycopg.connect(pilha.dsn(), autocommit=True) as db:
        no_livro = Counter(
            d
            for (d,) in db.execute("select descricao from crebito.transacao where cliente_id = 1 and descricao ~ '^j'")
        )
        chaves = dict(
            db.execute(
                "select i.chave, t.descricao from crebito.idempotencia as i"
                " join crebito.transacao as t on (t.cliente_id, t.lancamento) = (i.cliente_id, i.lancamento)"
                " where i.cliente_id = 1 and i.chave like 'janela-%%' and i.status = 200"
            ).fetchall()
        )
        violacoes = db.execute("select cliente, violacao from api.auditoria()").fetchall()
    with capsys.disabled():
        print("\n-- queda entre o commit e o flush --")
        print(f"quedas: {QUEDAS}; respostas aos escritores: {dict(status)}")
        print(f"200 recebidos: {len(aceitas)}; no livro: {sum(no_livro.values())}")
        print(f"extratos respondidos: {sum(leitor.respostas for leitor in leitores)}; descricoes vistas: {len(vistas)}")

    assert [x for e in escritores for x in e.inesperadas] == []
    assert status[500] == 0
    # The crashes were felt, and the load went on around them.
    assert sum(status[s] for s in SEM_RESPOSTA) > 0
    assert len(aceitas) > 100 and vistas
    # Every acknowledged credit is in the ledger exactly once, under its key;
    # nothing is in it twice (a retried key was applied once).
    assert all(no_livro[d] == 1 for d in aceitas), [d for d in aceitas if no_livro[d] != 1]
    assert all(n == 1 for n in no_livro.values())
    assert all(chaves.get(c) == d for d, c in aceitas.items())
    # No statement listed a transaction that the crash then took away.
    assert vistas <= set(no_livro), sorted(vistas - set(no_livro))
    assert violacoes == []
