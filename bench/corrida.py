"""How often the official profile's validations fail by the simulation's own
race (carga.Corrida), on single-node and on Citus side by side.

The race is decided in the load's first millisecond, so a run needs only the
validation phases and a short load: each round resets the five clients, runs
carga.py with a 2 s ramp and no plateau on each stack (alternated), and
counts its KOs and how many of them are the race. `--atraso-da-carga 100`
starts the load 100 ms after client 6's 404, when every validation has read
its own writes: with no race left, a KO there is the API's.

    .venv/bin/python bench/corrida.py [--vezes 35] [--atraso-da-carga 0] [--workers-citus 2]
"""

import argparse
import contextlib
import json
import os
import subprocess
import tempfile

import carga  # puts stack/ on the path
import pilha
from cluster import sql_de_zerar


def rodada(p, atraso, saida):
    # The five clients as the schema seeds them: the validations expect balance 0.
    zerar = "; ".join(sql_de_zerar(citus=p.citus_workers > 0))
    subprocess.run(["psql", "-qX", "-v", "ON_ERROR_STOP=1", "-c", zerar, *p.pg()], check=True)
    with open(os.devnull, "w") as nada, contextlib.redirect_stdout(nada):
        opcoes = {"--rampa": 2, "--platô": 0, "--metricas": "nenhum", "--intervalo": 3600}
        opcoes.update({"--url": p.url, "--atraso-da-carga": atraso, "--saida": saida})
        r = carga.main([str(x) for par in opcoes.items() for x in par])
    return {"ko": r["ko"], "ko_da_corrida": r["ko_da_corrida"], "motivos": r["motivos_ko"]}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vezes", type=int, default=35, help="rounds, each one run on every stack")
    ap.add_argument("--atraso-da-carga", type=float, default=0, help="ms, as carga.py's")
    ap.add_argument("--workers-citus", type=int, default=2, help="0: single-node only")
    ap.add_argument("--saida", default=None, help="directory for corrida.json")
    args = ap.parse_args(argv)
    saida = pilha.pasta_de_saida(args, "corrida")
    pilhas = {"unico": pilha.Pilha()}
    if args.workers_citus:
        pilhas["citus"] = pilha.Pilha(citus_workers=args.workers_citus)
    runs = {nome: [] for nome in pilhas}
    try:
        for p in pilhas.values():
            p.iniciar(limite=180)
        with tempfile.TemporaryDirectory() as tmp:
            for i in range(args.vezes):
                ordem = list(pilhas) if i % 2 == 0 else list(reversed(pilhas))
                for nome in ordem:
                    r = rodada(pilhas[nome], args.atraso_da_carga, tmp)
                    runs[nome].append(r)
                    pilha.log(f"{nome} {i + 1}: {r['ko']} KO, {r['ko_da_corrida']} da corrida")
    finally:
        for p in pilhas.values():
            p.parar()
    resumo = {
        nome: {
            "vezes": len(rs),
            "sem_ko": sum(r["ko"] == 0 for r in rs),
            "ko": sum(r["ko"] for r in rs),
            "ko_da_corrida": sum(r["ko_da_corrida"] for r in rs),
        }
        for nome, rs in runs.items()
    }
    for nome, s in resumo.items():
        print(
            f"{nome}: 0 KO em {s['sem_ko']} de {s['vezes']} vezes; {s['ko']} KO, {s['ko_da_corrida']} da corrida"
            f" da simulação (atraso da carga {args.atraso_da_carga:g} ms)"
        )
    with open(os.path.join(saida, "corrida.json"), "w") as f:
        json.dump({"atraso_da_carga_ms": args.atraso_da_carga, "resumo": resumo, "vezes": runs}, f, indent=1)
    return resumo


if __name__ == "__main__":
    main()
