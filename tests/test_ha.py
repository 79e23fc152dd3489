"""The high-availability topology (`make ha`), run for real: etcd, two
PostgreSQL nodes run by Patroni, the API and HAProxy. Every answer waits for
both nodes' disks; under keyed write load (one hot client, then all five) the
primary is lost three ways (a frozen machine, kill -9, kill -9 and its data
directory deleted), each time in the other direction: the standby is promoted, every acknowledged write is
in the ledger exactly once, nothing an extrato showed is missing, the audit
is empty, and the lost node comes back as the synchronous standby."""

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter

import psycopg
import pytest
from conftest import RAIZ, esperar, relatar, rest, sinalizar, stack_temporaria, zerar
from test_auditoria import make_auditoria
from test_falhas import SEM_RESPOSTA, ClienteDoBanco, filhos

sys.path.insert(0, os.path.join(RAIZ, "stack"))
import launcher  # noqa: E402

pytestmark = pytest.mark.skipif(
    not all(map(shutil.which, ("patroni", "etcd", "pgbackrest"))), reason="stack/install.sh installs patroni, etcd..."
)

WORKERS = 2
# The target is 10 s (stack/patroni.py: ttl 7 s); the machine is shared.
PROMOCAO_MAXIMA = 30


@pytest.fixture(scope="module")
def pilha():
    with stack_temporaria(WORKERS, prefixo="crebito-ha-", ha=True) as s:
        assert esperar(lambda: par(s), 90), estados(s)
        yield s


def estados(pilha):
    return {n["nome"]: rest(pilha, n["nome"], "/patroni")[1][:200] for n in pilha.nos}


def primario(pilha):
    return next((n["nome"] for n in pilha.nos if rest(pilha, n["nome"], "/primary")[0] == 200), None)


def par(pilha):
    """(primary, synchronous standby) once both are in place, else None."""
    p = primario(pilha)
    s = next((n["nome"] for n in pilha.nos if rest(pilha, n["nome"], "/sync")[0] == 200), None)
    return (p, s) if p and s and p != s else None


def no_de(pilha, nome):
    return next(n for n in pilha.nos if n["nome"] == nome)


def conectar(pilha, nome):
    no = no_de(pilha, nome)
    return psycopg.connect(f"host={no['pgrun']} port={no['porta']} dbname=crebito user=postgres", autocommit=True)


def processos_do_no(pilha, nome):
    """Patroni and the postgres it runs (which it detaches), with its children."""
    pids = [pilha.pid(nome)]
    try:
        with open(os.path.join(no_de(pilha, nome)["pgdata"], "postmaster.pid")) as f:
            postmaster = int(f.readline())
        pids += [postmaster, *filhos(postmaster)]
    except (OSError, ValueError):
        pass
    return pids


class Leitor(threading.Thread):
    """Reads the clients' extratos over and over, keeping every transaction
    shown: each must be in the ledger at the end."""

    def __init__(self, pilha, parar, clientes):
        super().__init__(daemon=True)
        self.pilha, self.parar, self.clientes = pilha, parar, clientes
        self.vistas = set()  # (cliente, descricao)

    def run(self):
        while not self.parar.is_set():
            for cliente in self.clientes:
                try:
                    r = self.pilha.pedir("GET", f"/clientes/{cliente}/extrato", timeout=5)
                except OSError:
                    continue
                if r.status == 200:
                    self.vistas.update((cliente, t["descricao"]) for t in r.json["ultimas_transacoes"])
            time.sleep(0.01)


def perder_o_primario(pilha, pytestconfig, clientes, perder, devolver, como):
    """Keyed load on clientes; the primary lost by perder(primary), given back
    by devolver(primary); then every check of the module's docstring."""
    antigo, standby = par(pilha)
    zerar(pilha)
    parar = threading.Event()
    carga = [ClienteDoBanco(i, pilha, parar, clientes) for i in range(4)]
    leitor = Leitor(pilha, parar, clientes)
    for t in [*carga, leitor]:
        t.start()
    devolvido = False
    try:
        time.sleep(2)
        t0 = time.monotonic()
        perder(antigo)
        # Asked of the standby alone: a frozen node's REST API answers nothing
        # until its timeout, which would add to the figure.
        assert esperar(lambda: rest(pilha, standby, "/primary")[0] == 200, PROMOCAO_MAXIMA, passo=0.1), estados(pilha)
        promovido = time.monotonic() - t0

        def escrita_depois():
            return min((t for c in carga for t in c.respostas_200 if t > t0 + promovido), default=None)

        assert esperar(escrita_depois, PROMOCAO_MAXIMA, passo=0.1), "no write acknowledged on the new primary"
        primeira_escrita = escrita_depois() - t0
        # `make auditoria` asks the new primary, whichever node the old one was.
        auditoria = make_auditoria(pilha)
        assert (auditoria.returncode, auditoria.stdout) == (0, ""), auditoria.stderr
        time.sleep(1)
        devolver(antigo)
        devolvido = True
        t1 = time.monotonic()
        assert esperar(lambda: par(pilha) == (standby, antigo), 120, passo=0.2), estados(pilha)
        de_volta = time.monotonic() - t1
        time.sleep(1)
    finally:
        if not devolvido:
            devolver(antigo)
        parar.set()
        for t in [*carga, leitor]:
            t.join(timeout=60)
    relatar(
        pytestconfig,
        f"ha: {como} of {antigo}: {standby} promoted in {promovido:.1f}s, its first write acknowledged"
        f" {primeira_escrita:.1f}s after the loss; {antigo} the synchronous standby again {de_volta:.1f}s after it"
        " was back",
    )
    conferir(pilha, carga, leitor)


def conferir(pilha, carga, leitor):
    status = sum((c.status for c in carga), Counter())
    aceitas = {k: v for c in carga for k, v in c.aceitas.items()}
    assert [x for c in carga for x in c.inesperadas] == []
    assert [x for c in carga for x in c.abandonadas] == []
    assert status[500] == 0
    assert set(status) <= {200, 422} | SEM_RESPOSTA
    assert len(aceitas) > 20
    with psycopg.connect(pilha.dsn(), autocommit=True) as db:
        livro = {
            (cliente, chave): (st, resposta, lancamento)
            for cliente, chave, st, resposta, lancamento in db.execute(
                "select i.cliente_id, i.chave, i.status, i.resposta, t.lancamento from crebito.idempotencia as i"
                " left join crebito.transacao as t on (t.cliente_id, t.lancamento) = (i.cliente_id, i.lancamento)"
            )
        }
        [(linhas,)] = db.execute("select count(*) from crebito.transacao").fetchall()
        no_livro = set(db.execute("select cliente_id, descricao from crebito.transacao").fetchall())
        assert db.execute("select * from api.auditoria()").fetchall() == []
    # Every acknowledged transaction is there once, with the answer its client got.
    for chave, corpo in aceitas.items():
        assert livro[chave][:2] == (200, json.loads(corpo)) or livro[chave][:2] == (200, corpo), chave
        assert livro[chave][2], chave
    assert linhas == len(aceitas)
    # Nothing an extrato showed was lost in the failover.
    assert leitor.vistas and leitor.vistas <= no_livro


# -- the topology ---------------------------------------------------------------------


def test_primario_e_standby_sincrono(pilha):
    primario_, standby = par(pilha)
    with conectar(pilha, primario_) as db:
        assert db.execute("show synchronous_commit").fetchone() == ("on",)
        assert db.execute("select application_name, sync_state from pg_stat_replication").fetchall() == [
            (standby, "sync")
        ]
        # stack/postgresql.conf's settings, with what HA adds.
        assert db.execute("show max_connections").fetchone() == ("40",)
        assert db.execute("show shared_buffers").fetchone() == ("32MB",)
        assert db.execute("show wal_level").fetchone() == ("replica",)
    for nome in (primario_, standby):
        with conectar(pilha, nome) as db:
            metodos = {m for (m,) in db.execute("select auth_method from pg_hba_file_rules")}
            assert metodos == {"peer", "scram-sha-256"}, nome
    r = pilha.transacao(1, 7, "c", "replicada")
    assert r.status == 200
    with conectar(pilha, standby) as db:
        assert esperar(lambda: db.execute("select saldo from crebito.cliente where id = 1").fetchone() == (7,), 10)


def walreceiver(pilha, standby):
    with conectar(pilha, standby) as db:
        [(pid,)] = db.execute("select pid from pg_stat_wal_receiver").fetchall()
    return pid


def test_nenhuma_resposta_antes_do_disco_do_standby(pilha):
    """With the standby's WAL receiver frozen, a write is not acknowledged
    (503: its commit waits for the standby), nor shown, nor confirmed by
    api.confirmar (the early-lock-release path); thawed, it completes, and its
    retry with the same key gets the answer once."""
    zerar(pilha)
    primario_, standby = par(pilha)
    pid = walreceiver(pilha, standby)
    os.kill(pid, signal.SIGSTOP)
    try:
        corpo = {"valor": 5, "tipo": "c", "descricao": "espera"}
        r = pilha.pedir("POST", "/clientes/1/transacoes", corpo, {"Idempotency-Key": "k-espera"}, timeout=10)
        assert r.status == 503
        extrato = pilha.extrato(1)
        assert extrato.status == 200
        assert extrato.json["saldo"]["total"] == 0
        # A commit made without waiting (as api.transacao's early release
        # does), then its confirmation: it waits for the standby too.
        with conectar(pilha, primario_) as db:
            db.execute("set synchronous_commit = off")
            db.execute("update crebito.cliente set saldo = saldo where id = 2")
        confirmado = []
        with psycopg.connect(pilha.dsn("crebito_api"), autocommit=True) as api:
            t = threading.Thread(
                target=lambda: confirmado.append(api.execute("select descarregou from api.confirmar(2)").fetchone())
            )
            t.start()
            time.sleep(2)
            assert confirmado == []
            os.kill(pid, signal.SIGCONT)
            t.join(timeout=20)
        assert confirmado == [(True,)]
    finally:
        os.kill(pid, signal.SIGCONT)
    r = pilha.pedir("POST", "/clientes/1/transacoes", corpo, {"Idempotency-Key": "k-espera"}, timeout=10)
    assert (r.status, r.json) == (200, {"limite": 100000, "saldo": 5})
    assert pilha.extrato(1).json["saldo"]["total"] == 5


# -- losing the primary, under load ---------------------------------------------------------


def fora(pilha, nome):
    return os.path.join(pilha.var, f"{nome}.fora")


def matar(pilha, nome, apagar=False):
    # Taken out first, so the launcher does not start it again.
    open(fora(pilha, nome), "w").close()
    sinalizar(processos_do_no(pilha, nome), signal.SIGKILL)
    if apagar:
        time.sleep(0.5)
        shutil.rmtree(no_de(pilha, nome)["pgdata"])


# Keyed write load on one hot client, and spread over all five.
CARGAS = {"um cliente quente": (1,), "cinco clientes": (1, 2, 3, 4, 5)}


@pytest.mark.parametrize("carga", CARGAS)
def test_primario_congelado(pilha, pytestconfig, carga):
    congelados = {}

    def congelar(nome):
        congelados[nome] = processos_do_no(pilha, nome)
        sinalizar(congelados[nome], signal.SIGSTOP)

    def descongelar(nome):
        sinalizar(congelados[nome], signal.SIGCONT)

    perder_o_primario(pilha, pytestconfig, CARGAS[carga], congelar, descongelar, f"SIGSTOP ({carga})")


@pytest.mark.parametrize("carga", CARGAS)
@pytest.mark.parametrize("apagar", [False, True], ids=["kill9", "disco perdido"])
def test_primario_morto(pilha, pytestconfig, carga, apagar):
    como = "kill -9 and its data directory deleted" if apagar else "kill -9"
    perder_o_primario(
        pilha,
        pytestconfig,
        CARGAS[carga],
        lambda n: matar(pilha, n, apagar),
        lambda n: os.remove(fora(pilha, n)),
        f"{como} ({carga})",
    )


def test_standby_perdido_o_primario_segue_sozinho(pilha, pytestconfig):
    """Not strict (stack/patroni.py): with the standby lost, writes go on,
    flushed on the primary's disk alone, and the standby, back, is the
    synchronous one again with every write."""
    zerar(pilha)
    primario_, standby = par(pilha)
    matar(pilha, standby)
    t0 = time.monotonic()
    try:

        def escreve():
            r = pilha.pedir("POST", "/clientes/1/transacoes", {"valor": 1, "tipo": "c", "descricao": "so"}, timeout=10)
            return r.status == 200

        assert esperar(escreve, 60, passo=0.2)
        sozinho = time.monotonic() - t0
        with conectar(pilha, primario_) as db:
            assert db.execute("show synchronous_standby_names").fetchone() == ("",)
    finally:
        os.remove(fora(pilha, standby))
    assert esperar(lambda: par(pilha) == (primario_, standby), 120, passo=0.2), estados(pilha)
    relatar(pytestconfig, f"ha: standby {standby} lost: writes acknowledged by {primario_} alone after {sozinho:.1f}s")
    saldo = pilha.extrato(1).json["saldo"]["total"]
    assert saldo >= 1
    with conectar(pilha, standby) as db:
        assert esperar(lambda: db.execute("select saldo from crebito.cliente where id = 1").fetchone() == (saldo,), 10)


# -- backups ------------------------------------------------------------------------------------


def backup_py(pilha, *args):
    return subprocess.run(
        [sys.executable, os.path.join(RAIZ, "stack", "backup.py"), *args],
        env=dict(os.environ, CREBITO_VAR=pilha.var),
        capture_output=True,
        text=True,
    )


def escrever(pilha, prefixo, n):
    descricoes = {f"{prefixo}{i}" for i in range(n)}
    for d in sorted(descricoes):
        assert pilha.transacao(1, 1, "c", d).status == 200
    return descricoes


def test_backup_e_restauracao_a_um_momento(pilha):
    """A full backup, writes, a differential one, writes, a moment T, more
    writes; restored to T in a new data directory, the cluster holds exactly
    the writes acknowledged before T, and its books are sound."""
    zerar(pilha)
    primeiro = backup_py(pilha, "backup")
    assert primeiro.returncode == 0, primeiro.stderr
    antes = escrever(pilha, "a", 5)
    segundo = backup_py(pilha, "backup")
    assert segundo.returncode == 0, segundo.stderr
    assert "diff backup" in segundo.stderr
    antes |= escrever(pilha, "b", 3)
    with psycopg.connect(pilha.dsn(), autocommit=True) as db:
        [(alvo,)] = db.execute("select now()::text").fetchall()
        time.sleep(1.1)
        depois = escrever(pilha, "c", 5)
        # The WAL past T reaches the archive.
        [(segmento,)] = db.execute("select pg_walfile_name(pg_current_wal_lsn())").fetchall()
        db.execute("select pg_switch_wal()")
        assert esperar(
            lambda: db.execute("select last_archived_wal >= %s from pg_stat_archiver", (segmento,)).fetchone()[0], 30
        )
    destino = os.path.join(pilha.var, "restaurado")
    r = backup_py(pilha, "restaurar", alvo, destino)
    assert r.returncode == 0, r.stderr
    sock = os.path.join(pilha.var, "restaurado-sock")
    os.makedirs(sock)
    shutil.chown(sock, "postgres", "postgres")
    postgres = subprocess.Popen(
        ["runuser", "-u", "postgres", "--", f"{launcher.pg_bin()}/postgres", "-D", destino]
        + ["-c", "listen_addresses=", "-c", f"unix_socket_directories={sock}", "-c", "port=5432"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        dsn = f"host={sock} port=5432 dbname=crebito user=postgres"

        def promovido():
            try:
                with psycopg.connect(dsn, autocommit=True) as db:
                    return not db.execute("select pg_is_in_recovery()").fetchone()[0]
            except psycopg.OperationalError:
                return False

        assert esperar(promovido, 60, passo=0.2)
        with psycopg.connect(dsn, autocommit=True) as db:
            restauradas = {d for (d,) in db.execute("select descricao from crebito.transacao")}
            assert db.execute("select * from api.auditoria()").fetchall() == []
    finally:
        postgres.terminate()
        postgres.wait(timeout=30)
    assert restauradas == antes
    assert not restauradas & depois
