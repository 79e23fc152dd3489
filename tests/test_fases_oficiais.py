"""The validation phases of the official load test (SPEC.md, phases 1 to 3),
with every check the Gatling simulation makes, over HTTP through HAProxy.
Each virtual user is a thread with its own connection, kept alive across its
requests like a Gatling user's; the four-minute load is left to the
benchmarks, and a small bounded sample of it runs here for its checks."""

import json
import random
import string
import threading
from concurrent.futures import ThreadPoolExecutor
from http.client import HTTPConnection

from conftest import LIMITES

AGENTE = "Agente do Caos - 2024/Q1"


class Usuario:
    """One virtual user: one TCP connection, the simulation's headers."""

    def __init__(self, porta):
        self.conn = HTTPConnection("127.0.0.1", porta, timeout=30)

    def pedir(self, metodo, caminho, corpo=None):
        headers = {"User-Agent": AGENTE}
        if corpo is not None:
            headers["content-type"] = "application/json"
        self.conn.request(metodo, caminho, body=corpo, headers=headers)
        r = self.conn.getresponse()
        texto = r.read()
        return r.status, (json.loads(texto) if texto else None)

    def transacao(self, cliente, corpo):
        return self.pedir("POST", f"/clientes/{cliente}/transacoes", corpo)

    def extrato(self, cliente):
        return self.pedir("GET", f"/clientes/{cliente}/extrato")

    def fechar(self):
        self.conn.close()


def em_paralelo(porta, n, tarefa):
    """Runs tarefa(usuario, i) for n users at once; returns their results in order."""
    barreira = threading.Barrier(n)

    def rodar(i):
        usuario = Usuario(porta)
        try:
            barreira.wait(timeout=30)
            return tarefa(usuario, i)
        finally:
            usuario.fechar()

    with ThreadPoolExecutor(max_workers=n) as pool:
        return list(pool.map(rodar, range(n), timeout=120))


def checar_saldo(saldo, limite):
    """The simulation's balance check: both integers, saldo never below -limite."""
    assert type(saldo) is int and type(limite) is int, (saldo, limite)
    assert saldo >= -limite, f"limite ultrapassado: saldo {saldo}, limite {limite}"


def fase_concorrente(http, tipo, saldo_esperado):
    corpo = json.dumps({"valor": 1, "tipo": tipo, "descricao": "validacao"})
    respostas = em_paralelo(http.porta, 25, lambda u, i: u.transacao(1, corpo))
    assert [status for status, _ in respostas] == [200] * 25
    # One chain of balances: each answer saw the balance the one before it
    # left (none lost, none seen twice), and none went past the limit.
    passo = 1 if tipo == "c" else -1
    inicio = saldo_esperado - 25 * passo
    assert sorted(r["saldo"] for _, r in respostas) == sorted(inicio + passo * k for k in range(1, 26))
    for _, r in respostas:
        assert r["limite"] == LIMITES[1]
        checar_saldo(r["saldo"], r["limite"])
    usuario = Usuario(http.porta)
    try:
        status, extrato = usuario.extrato(1)
    finally:
        usuario.fechar()
    assert status == 200
    assert extrato["saldo"]["total"] == saldo_esperado


def validar_cliente(usuario, cliente, porta):
    """The scenario "validations" of one client, step by step."""
    status, extrato = usuario.extrato(cliente)
    assert status == 200
    assert extrato["saldo"]["limite"] == LIMITES[cliente]
    assert extrato["saldo"]["total"] == 0

    for tipo, descricao in (("c", "toma"), ("d", "devolve")):
        status, corpo = usuario.transacao(cliente, json.dumps({"valor": 1, "tipo": tipo, "descricao": descricao}))
        assert status == 200
        checar_saldo(corpo["saldo"], corpo["limite"])

    status, extrato = usuario.extrato(cliente)
    itens = extrato["ultimas_transacoes"]
    assert (itens[0]["descricao"], itens[0]["tipo"], itens[0]["valor"]) == ("devolve", "d", 1)
    assert (itens[1]["descricao"], itens[1]["tipo"], itens[1]["valor"]) == ("toma", "c", 1)

    status, corpo = usuario.transacao(cliente, json.dumps({"valor": 1, "tipo": "c", "descricao": "danada"}))
    assert status == 200
    saldo, limite = corpo["saldo"], corpo["limite"]

    # Once it has answered, four statements at the same time, each on its own
    # connection, must all show it.
    def consultar(outro, _):
        return outro.extrato(cliente)

    for status, extrato in em_paralelo(porta, 4, consultar):
        assert status == 200
        item = extrato["ultimas_transacoes"][0]
        assert (item["descricao"], item["tipo"], item["valor"]) == ("danada", "c", 1)
        assert extrato["saldo"]["limite"] == limite
        assert extrato["saldo"]["total"] == saldo

    for corpo in (
        '{"valor": 1.2, "tipo": "d", "descricao": "devolve"}',
        '{"valor": 1, "tipo": "x", "descricao": "devolve"}',
        '{"valor": 1, "tipo": "c", "descricao": "123456789 e mais um pouco"}',
        '{"valor": 1, "tipo": "c", "descricao": ""}',
        '{"valor": 1, "tipo": "c", "descricao": null}',
    ):
        status, _ = usuario.transacao(cliente, corpo)
        assert status in (422, 400), corpo
    return saldo


def test_fases_de_validacao(http):
    # Phase 1: 25 debits at once, then the balance must show all of them.
    fase_concorrente(http, "d", -25)
    # Phase 2: 25 credits at once bring it back to zero.
    fase_concorrente(http, "c", 0)

    # Phase 3: one user per client, and at the same time the 404 of client 6.
    def usuario_da_fase_3(usuario, i):
        if i == 5:
            status, _ = usuario.extrato(6)
            assert status == 404
            return None
        return validar_cliente(usuario, i + 1, http.porta)

    saldos = em_paralelo(http.porta, 6, usuario_da_fase_3)
    # toma, devolve and danada leave each balance at 1.
    assert saldos == [1, 1, 1, 1, 1, None]
    for cliente in LIMITES:
        assert http.extrato(cliente).json["saldo"]["total"] == 1


def test_amostra_da_carga(http, api_db):
    """The three open-model scenarios in their proportions (220:110:10), a few
    hundred requests, each user on a new connection, with their checks."""
    rng = random.Random(99)

    def descricao():
        return "".join(rng.choices(string.ascii_letters + string.digits, k=10))

    usuarios = (
        [("d", rng.randint(1, 5), rng.randint(1, 10000), descricao()) for _ in range(220)]
        + [("c", rng.randint(1, 5), rng.randint(1, 10000), descricao()) for _ in range(110)]
        + [("extrato", rng.randint(1, 5), None, None) for _ in range(10)]
    )
    rng.shuffle(usuarios)

    def rodar(roteiro):
        tipo, cliente, valor, desc = roteiro
        usuario = Usuario(http.porta)
        try:
            if tipo == "extrato":
                return roteiro, usuario.extrato(cliente)
            return roteiro, usuario.transacao(cliente, json.dumps({"valor": valor, "tipo": tipo, "descricao": desc}))
        finally:
            usuario.fechar()

    with ThreadPoolExecutor(max_workers=20) as pool:
        resultados = list(pool.map(rodar, usuarios, timeout=120))

    esperado = dict.fromkeys(LIMITES, 0)
    for (tipo, cliente, valor, _), (status, corpo) in resultados:
        if tipo == "extrato":
            assert status == 200
            checar_saldo(corpo["saldo"]["total"], corpo["saldo"]["limite"])
        elif tipo == "d":
            assert status in (200, 422)
            if status == 200:
                checar_saldo(corpo["saldo"], corpo["limite"])
                esperado[cliente] -= valor
        else:
            assert status == 200
            checar_saldo(corpo["saldo"], corpo["limite"])
            esperado[cliente] += valor
    for cliente, saldo in esperado.items():
        assert http.extrato(cliente).json["saldo"]["total"] == saldo
    assert api_db.execute("select * from api.auditoria()").fetchall() == []
