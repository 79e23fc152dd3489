"""Concurrent writers over HTTP, through HAProxy and both API instances: the
limit holds, no accepted transaction is lost, and the ledger agrees with every
balance (api.auditoria)."""

import random
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import LIMITES

# On the single-node and the Citus stack (conftest.py).
pytestmark = pytest.mark.citus

THREADS = 40


def em_threads(http, pedidos):
    """Sends pedidos (cliente, valor, tipo) from THREADS threads that start
    together, each request on a new connection; returns (pedido, Resposta)."""
    barreira = threading.Barrier(THREADS)
    fatias = [pedidos[i::THREADS] for i in range(THREADS)]

    def rodar(fatia):
        barreira.wait(timeout=30)
        return [((c, v, t), http.transacao(c, v, t, f"{t}{v}")) for c, v, t in fatia]

    with ThreadPoolExecutor(max_workers=THREADS) as pool:
        return [r for rs in pool.map(rodar, fatias, timeout=180) for r in rs]


def test_200_debitos_concorrentes_num_cliente(http, api_db):
    rng = random.Random(1)
    cliente, limite = 1, LIMITES[1]
    pedidos = [(cliente, rng.randint(1, 10000), "d") for _ in range(200)]
    resultados = em_threads(http, pedidos)

    statuses = [r.status for _, r in resultados]
    assert set(statuses) <= {200, 422}, statuses
    aceitos = [(v, r.json) for (_, v, _), r in resultados if r.status == 200]
    recusados = [v for (_, v, _), r in resultados if r.status == 422]
    assert len(aceitos) + len(recusados) == 200
    assert aceitos and recusados

    extrato = http.extrato(cliente).json
    saldo = extrato["saldo"]["total"]
    assert saldo == -sum(v for v, _ in aceitos)
    assert saldo >= -limite
    # Debits only: the room left only shrinks, so a refused debit never fitted.
    assert saldo + limite < min(recusados)
    # The accepted answers, ordered by balance, are one chain of debits: no two
    # requests saw the same balance and none was lost.
    anterior = 0
    for valor, corpo in sorted(aceitos, key=lambda a: -a[1]["saldo"]):
        assert corpo == {"limite": limite, "saldo": anterior - valor}
        anterior = corpo["saldo"]
    assert [i["valor"] for i in extrato["ultimas_transacoes"]] == [
        v for v, _ in sorted(aceitos, key=lambda a: a[1]["saldo"])[:10]
    ]
    assert api_db.execute("select * from api.auditoria()").fetchall() == []


def test_creditos_e_debitos_misturados_em_todos_os_clientes(http, api_db, db):
    rng = random.Random(2)
    # Debits large enough for each client to reach its limit now and then.
    pedidos = []
    for _ in range(400):
        cliente = rng.randint(1, 5)
        tipo = rng.choice("cdd")
        teto = LIMITES[cliente] // 5 if tipo == "d" else LIMITES[cliente] // 10
        pedidos.append((cliente, rng.randint(1, max(teto, 10)), tipo))
    resultados = em_threads(http, pedidos)

    esperado = dict.fromkeys(LIMITES, 0)
    aceitos = dict.fromkeys(LIMITES, 0)
    for (cliente, valor, tipo), r in resultados:
        if tipo == "c":
            assert r.status == 200, r.corpo
        else:
            assert r.status in (200, 422), r.corpo
        if r.status == 200:
            assert r.json["saldo"] >= -r.json["limite"]
            assert r.json["limite"] == LIMITES[cliente]
            esperado[cliente] += valor if tipo == "c" else -valor
            aceitos[cliente] += 1

    for cliente in LIMITES:
        extrato = http.extrato(cliente).json
        assert extrato["saldo"]["total"] == esperado[cliente]
        assert extrato["saldo"]["total"] >= -LIMITES[cliente]
    linhas = dict(db.execute("select cliente_id, count(*) from crebito.transacao group by cliente_id").fetchall())
    assert {c: linhas.get(c, 0) for c in LIMITES} == aceitos
    assert api_db.execute("select * from api.auditoria()").fetchall() == []
