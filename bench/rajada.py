"""The validation burst of the official load test, repeated: 25 users at once,
each on its own new connection, POST a debit of 1 to client 1; then 25 credits
bring it back. Against a fresh stack inside its budget (as orcamento.py).

    sudo .venv/bin/python bench/rajada.py [--rodadas 20]

Per burst: the time from the start of the burst to its last answer (the
figure the official run's max usually is), in 0.1 ms and in Gatling's whole
milliseconds. Ends with the median and the max over the bursts, and checks
that every burst was answered 200 with one chain of balances.
"""

import argparse
import asyncio
import statistics
import sys
import time
import types

import carga
import pilha

USUARIOS = 25


async def rajada(c, tipo):
    """One burst; returns (last answer in ns, in whole ms, saldos answered)."""
    c.registro = carga.Registro()
    corpo = carga.corpo_transacao(1, tipo, "rajada")
    inicio = time.perf_counter_ns()
    respostas = await asyncio.gather(
        *(c.um_pedido("validacoes", "POST", "/clientes/1/transacoes", corpo, (200,)) for _ in range(USUARIOS))
    )
    fim = max(inicio + lat for lat in c.registro.lat_ns)
    saldos = sorted(r.json()["saldo"] for r in respostas if r is not None)
    return fim - inicio, fim // 1_000_000 - inicio // 1_000_000, saldos


async def rodar(url, rodadas):
    c = carga.Carga(types.SimpleNamespace(url=url))
    resultados = []
    saldo = 0
    for i in range(rodadas):
        tipo = "d" if i % 2 == 0 else "c"
        ns, ms, saldos = await rajada(c, tipo)
        passo = -1 if tipo == "d" else 1
        esperado = sorted(saldo + passo * k for k in range(1, USUARIOS + 1))
        saldo += passo * USUARIOS
        resultados.append(
            {"tipo": tipo, "ultima_ms": round(ns / 1e6, 2), "ms_inteiros": ms, "cadeia": saldos == esperado}
        )
        print(
            f"{i + 1:>3} {tipo}  última resposta {ns / 1e6:6.2f} ms ({ms} ms inteiros)  cadeia ok: {saldos == esperado}"
        )
        await asyncio.sleep(0.2)
    return resultados


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rodadas", type=int, default=20, help="bursts, alternately debits and credits")
    pilha.opcoes_do_orcamento(ap)
    args = ap.parse_args()
    saida = pilha.pasta_de_saida(args, "rajada")
    with pilha.PilhaNoOrcamento(args.memoria_total, args.compose, args.pg_conf, args.workers, saida, args.arvore) as pn:
        resultados = asyncio.run(rodar(pn.pilha.url, args.rodadas))
    ultimas = [r["ultima_ms"] for r in resultados]
    inteiros = [r["ms_inteiros"] for r in resultados]
    resumo = {
        "mediana_ms": round(statistics.median(ultimas), 2),
        "max_ms": max(ultimas),
        "mediana_ms_inteiros": statistics.median(inteiros),
        "max_ms_inteiros": max(inteiros),
        "cadeias_ok": all(r["cadeia"] for r in resultados),
    }
    print(
        f"última resposta de {USUARIOS} pedidos simultâneos: mediana {resumo['mediana_ms']} ms,"
        f" max {resumo['max_ms']} ms (ms inteiros: mediana {resumo['mediana_ms_inteiros']},"
        f" max {resumo['max_ms_inteiros']}); cadeias de saldos corretas: {resumo['cadeias_ok']}"
    )
    pilha.salvar_json(f"{saida}/rajada.json", {"rajadas": resultados, "resumo": resumo, "limites": pn.limites})
    return 0 if resumo["cadeias_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
