"""The load run's summary table (carga.py) as JSON and Markdown, written
beside the HTML report so it can be pasted into a page or read by a script."""

import json

COLUNAS = ("p50", "p75", "p95", "p99", "max", "media")


def tabela(resumo):
    """What the report's table shows: per group its count, KOs and
    percentiles (whole ms as Gatling reports them, and 0.1 ms), the score and
    the KO reasons in words."""
    return {
        "parametros": resumo.get("parametros"),
        "duracao_s": resumo["duracao_s"],
        "total": resumo["total"],
        "ko": resumo["ko"],
        "ko_da_corrida": resumo.get("ko_da_corrida", 0),
        "pontuacao": resumo["pontuacao"],
        "grupos": {
            g: {"n": e["n"], "ko": e["ko"], "ms": e["ms"], "ms_0_1": e["ms_0_1"]} for g, e in resumo["grupos"].items()
        },
        "ko_em_frases": [item["frase"] for item in resumo.get("ko_em_frases", [])],
    }


def markdown(t):
    p = t["pontuacao"]
    linhas = [
        "| grupo | n | KO | " + " | ".join(COLUNAS) + " | " + " | ".join(f"{c} (0,1 ms)" for c in COLUNAS) + " |",
        "|---" * (3 + 2 * len(COLUNAS)) + "|",
    ]
    for g, e in t["grupos"].items():
        valores = [g, e["n"], e["ko"], *(e["ms"][c] for c in COLUNAS), *(e["ms_0_1"][c] for c in COLUNAS)]
        linhas.append("| " + " | ".join(str(v) for v in valores) + " |")
    linhas += [
        "",
        f"{t['total']} requisições, {t['ko']} KO ({t['ko_da_corrida']} da corrida da simulação) em"
        f" {t['duracao_s']} s; latências em ms inteiros como o Gatling,"
        " e em 0,1 ms.",
        "",
        f"Pontuação: {p['pct_ok_abaixo_250ms']:.3f}% com o status esperado em menos de 250 ms"
        f" (multa USD {p['multa_lentidao']:.2f}), {p['inconsistencias']} saldos inconsistentes"
        f" (multa USD {p['multa_inconsistencias']:.2f}): **USD {p['usd']:.2f}**.",
    ]
    if t["ko_em_frases"]:
        linhas += ["", "KO:", ""] + [f"- {frase}" for frase in t["ko_em_frases"]]
    return "\n".join(linhas) + "\n"


def escrever(caminho_json, caminho_md, resumo):
    t = tabela(resumo)
    with open(caminho_json, "w") as f:
        json.dump(t, f, indent=1, ensure_ascii=False)
    with open(caminho_md, "w") as f:
        f.write(markdown(t))
    return t
