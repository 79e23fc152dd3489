"""Side by side: the floors, then this tree and a baseline checkout in
alternated pairs of orcamento.py runs, and the table that compares them.

    git worktree add ../base <commit> && ln -s "$PWD/.venv" ../base/.venv
    sudo .venv/bin/python bench/pares.py --base ../base [--pares 3] [--rampa 120 --platô 120]

The machine's speed drifts between runs, so every pair alternates which side
goes first, the ratios are taken pair by pair and the medians are quoted.
Every run is measured by this tree's tools (orcamento.py with its per-second
record); the baseline only provides the stack (launcher, server, schema).
Writes pares.json and prints one line per run and the medians.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys

import pilha

AQUI = os.path.dirname(os.path.abspath(__file__))


def rodar(arvore, saida, args, pisos_json):
    cmd = [sys.executable, os.path.join(AQUI, "orcamento.py"), "--rampa", str(args.rampa), "--platô", str(args.plato)]
    cmd += ["--saida", saida]
    if arvore:
        cmd += ["--arvore", arvore]
    if pisos_json:
        cmd += ["--pisos", pisos_json]
    with open(os.path.join(os.path.dirname(saida), os.path.basename(saida) + ".log"), "w") as log:
        subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, check=False)
    with open(os.path.join(saida, "orcamento.json")) as f:
        return json.load(f)


def linha(r):
    a = r["carga"]["all"]["ms"]
    comp = r["cpu_ms_por_componente"]
    return {
        "p99": a["p99"],
        "max": a["max"],
        "ko": r["carga"]["ko"],
        "usd": r["carga"]["pontuacao"]["usd"],
        "cpu_ms": r["cpu_ms_por_requisicao"],
        "postgres_ms": round(comp["postgres"], 4),
        "api_ms": round(comp["api01"] + comp["api02"], 4),
        "haproxy_ms": round(comp["haproxy"], 4),
        "paradas": len(r["paradas"]["achados"]),
        "multiplos": {k: m["multiplo"] for k, m in r.get("pisos", {}).items()},
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", required=True, help="the baseline checkout (a worktree with .venv)")
    ap.add_argument("--pares", type=int, default=3)
    ap.add_argument("--rampa", type=float, default=120)
    ap.add_argument("--platô", "--plato", dest="plato", type=float, default=120)
    ap.add_argument("--sem-pisos", action="store_true", help="skip the floors")
    ap.add_argument("--saida", default=None)
    args = ap.parse_args()
    saida = pilha.pasta_de_saida(args, "pares")
    pisos_json = None
    if not args.sem_pisos:
        pilha.log("pisos")
        cmd = [sys.executable, os.path.join(AQUI, "pisos.py"), "--rampa", str(args.rampa), "--platô", str(args.plato)]
        subprocess.run([*cmd, "--saida", os.path.join(saida, "pisos")], check=True)
        pisos_json = os.path.join(saida, "pisos", "pisos.json")
    lados = {"arvore": None, "base": os.path.abspath(args.base)}
    runs = {"arvore": [], "base": []}
    for i in range(args.pares):
        ordem = ("base", "arvore") if i % 2 == 0 else ("arvore", "base")
        for lado in ordem:
            pilha.log(f"par {i + 1}: {lado}")
            r = linha(rodar(lados[lado], os.path.join(saida, f"{i + 1}-{lado}"), args, pisos_json))
            runs[lado].append(r)
            print(f"par {i + 1} {lado:<6} {json.dumps(r, ensure_ascii=False)}", flush=True)
    resumo = {}
    for chave in ("p99", "max", "cpu_ms", "postgres_ms", "api_ms", "haproxy_ms"):
        razoes = [a[chave] / b[chave] for a, b in zip(runs["arvore"], runs["base"], strict=True) if b[chave]]
        resumo[chave] = {
            "arvore": statistics.median(r[chave] for r in runs["arvore"]),
            "base": statistics.median(r[chave] for r in runs["base"]),
            "razoes": [round(x, 3) for x in razoes],
            "mediana_das_razoes": round(statistics.median(razoes), 3) if razoes else None,
        }
        print(f"{chave:<12} {json.dumps(resumo[chave])}")
    pilha.salvar_json(os.path.join(saida, "pares.json"), {"runs": runs, "resumo": resumo})
    print(f"figuras em {saida}/pares.json")


if __name__ == "__main__":
    main()
