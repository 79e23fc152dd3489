"""Saturation inside the budget: wrk with the official mix (bench/mix.lua) on
keep-alive connections at rising concurrency, against a fresh stack whose
components sit in their budget cgroups (the same setup as orcamento.py).

    sudo .venv/bin/python bench/saturacao.py [--conexoes 8,16,32,64,128] [--duracao 15]

Per level: req/s, latency p50/p99/max, errors (statuses other than 200 and
422, and socket errors), the stack's CPU per request and throttling. Ends
with the highest rate whose p99 is under 250 ms with no errors.
"""

import argparse
import json
import os
import resource
import subprocess
import sys

import pilha

AQUI = os.path.dirname(os.path.abspath(__file__))
P99_MAXIMO_MS = 250


def wrk(url, conexoes, duracao, threads, *args_do_mix):
    cmd = [
        "wrk",
        "-t",
        str(min(threads, conexoes)),
        "-c",
        str(conexoes),
        "-d",
        f"{duracao}s",
        "--timeout",
        "10s",
        "-s",
        os.path.join(AQUI, "mix.lua"),
        url,
        *(["--", *args_do_mix] if args_do_mix else []),
    ]
    antes = resource.getrusage(resource.RUSAGE_CHILDREN)
    r = subprocess.run(cmd, capture_output=True, text=True)
    depois = resource.getrusage(resource.RUSAGE_CHILDREN)
    linha = next((x for x in r.stdout.splitlines() if x.startswith("RESULTADO ")), None)
    if linha is None:
        raise RuntimeError(f"wrk falhou ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    dados = json.loads(linha[len("RESULTADO ") :])
    dados["cpu_s_wrk"] = round((depois.ru_utime - antes.ru_utime) + (depois.ru_stime - antes.ru_stime), 2)
    return dados


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--conexoes", default="8,16,32,64,128")
    ap.add_argument("--duracao", type=int, default=15, help="seconds per level")
    ap.add_argument("--threads", type=int, default=1, help="wrk threads (each costs CPU the stack then lacks)")
    ap.add_argument("--esperas", action="store_true", help="sample what the database sessions wait on, per level")
    pilha.opcoes_do_orcamento(ap)
    args = ap.parse_args()
    saida = pilha.pasta_de_saida(args, "saturacao")

    niveis = []
    with pilha.PilhaNoOrcamento(args.memoria_total, args.compose, args.pg_conf, args.workers, saida, args.arvore) as pn:
        p = pn.pilha
        print(
            f"{'conexões':>8}{'req/s':>9}{'p50 ms':>8}{'p99 ms':>8}{'max ms':>8}{'erros':>7}{'CPU ms/req':>11}"
            f"{'CPUs':>6}{'estrang. s':>11}{'wrk CPU':>8}",
            flush=True,
        )
        for c in (int(x) for x in args.conexoes.split(",")):
            medidor = pilha.Medidor(p, pn.cgrupos, a_cada_amostra=pn.confinar)
            medidor.iniciar()
            esperas = pilha.AmostradorEsperas(p) if args.esperas else None
            if esperas:
                esperas.iniciar()
            w = wrk(p.url, c, args.duracao, args.threads)
            medidor.parar()
            m = medidor.resultado(w["requisicoes"])
            erros = (
                w["erros_status"] + w["erros_conexao"] + w["erros_leitura"] + w["erros_escrita"] + w["erros_timeout"]
            )
            estrangulado = sum(x.get("estrangulado_s", 0) for x in m["componentes"].values())
            nivel = {
                "conexoes": c,
                "req_s": round(w["requisicoes"] / (w["duracao_us"] / 1e6), 1),
                "p50_ms": w["p50_us"] / 1000,
                "p99_ms": w["p99_us"] / 1000,
                "max_ms": w["max_us"] / 1000,
                "erros": erros,
                "wrk": w,
                "pilha": m,
            }
            if esperas:
                nivel["esperas_do_banco"] = esperas.parar()
            niveis.append(nivel)
            print(
                f"{c:>8}{nivel['req_s']:>9.0f}{nivel['p50_ms']:>8.1f}{nivel['p99_ms']:>8.1f}{nivel['max_ms']:>8.1f}"
                f"{erros:>7}{m['cpu_ms_por_requisicao']:>11.3f}{m['cpus_medias_da_pilha']:>6.2f}"
                f"{estrangulado:>11.1f}{w['cpu_s_wrk']:>8.1f}",
                flush=True,
            )
            if esperas:
                principais = list(nivel["esperas_do_banco"]["pct"].items())[:5]
                print("          banco: " + ", ".join(f"{k} {v}%" for k, v in principais), flush=True)
        reiniciados = pn.reiniciados()
        modo = pn.cgrupos.modo
        limites = pn.limites

    validos = [n for n in niveis if n["erros"] == 0 and n["p99_ms"] < P99_MAXIMO_MS]
    melhor = max(validos, key=lambda n: n["req_s"]) if validos else None
    if melhor:
        print(
            f"maior taxa com p99 < {P99_MAXIMO_MS} ms e sem erros: {melhor['req_s']:.0f} req/s "
            f"({melhor['conexoes']} conexões, p99 {melhor['p99_ms']} ms)"
        )
    else:
        print(f"nenhum nível com p99 < {P99_MAXIMO_MS} ms e sem erros")
    if reiniciados:
        print(f"ATENÇÃO: o launcher reiniciou {reiniciados}; veja {saida}/pilha.log")
    print(f"cgroups: {modo or 'nenhum (sem limites)'}")
    pilha.salvar_json(
        os.path.join(saida, "saturacao.json"),
        {"niveis": niveis, "melhor": melhor, "cgroups": modo, "limites": limites, "reiniciados": reiniciados},
    )
    print(f"figuras em {saida}/saturacao.json")


if __name__ == "__main__":
    sys.exit(main())
