"""A self-contained HTML report of a load run (carga.py): tables and inline
SVG charts, no external assets, so the file can be archived or mailed as is."""

import html
import json

CORES = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b")


def grafico(titulo, series, rotulo_y, largura=900, altura=260, log=False):
    """A line chart: `series` maps a name to a list of (x, y)."""
    margem_e, margem_d, margem_t, margem_b = 60, 130, 30, 35
    w, h = largura - margem_e - margem_d, altura - margem_t - margem_b
    pontos = [p for s in series.values() for p in s]
    if not pontos:
        return f"<p>{html.escape(titulo)}: sem dados</p>"
    x_max = max(p[0] for p in pontos) or 1

    def fy(y):
        return max(y, 0.01) if log else y

    ys = [fy(p[1]) for p in pontos]
    y_min = min(ys) if log else 0
    y_max = max(ys) or 1
    if log:
        import math

        lo, hi = math.floor(math.log10(y_min)), math.ceil(math.log10(y_max))
        hi = max(hi, lo + 1)

        def py(y):
            return margem_t + h - (math.log10(fy(y)) - lo) / (hi - lo) * h

        marcas = [10**e for e in range(lo, hi + 1)]
    else:

        def py(y):
            return margem_t + h - y / y_max * h

        marcas = [y_max * i / 4 for i in range(5)]

    def px(x):
        return margem_e + x / x_max * w

    partes = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{largura}" height="{altura}" font-family="sans-serif" '
        'font-size="11">',
        f'<text x="{margem_e}" y="18" font-size="13" font-weight="bold">{html.escape(titulo)}</text>',
        f'<rect x="{margem_e}" y="{margem_t}" width="{w}" height="{h}" fill="none" stroke="#999"/>',
    ]
    for m in marcas:
        y = py(m)
        rotulo = f"{m:g}" if log else f"{m:.3g}"
        partes.append(f'<line x1="{margem_e}" x2="{margem_e + w}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eee"/>')
        partes.append(f'<text x="{margem_e - 4}" y="{y + 4:.1f}" text-anchor="end">{rotulo}</text>')
    for i in range(6):
        x = x_max * i / 5
        partes.append(f'<text x="{px(x):.1f}" y="{margem_t + h + 15}" text-anchor="middle">{x:.0f}s</text>')
    partes.append(
        f'<text x="14" y="{margem_t + h / 2}" transform="rotate(-90 14 {margem_t + h / 2})" '
        f'text-anchor="middle">{html.escape(rotulo_y)}</text>'
    )
    for i, (nome, s) in enumerate(series.items()):
        cor = CORES[i % len(CORES)]
        caminho = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in s)
        partes.append(f'<polyline fill="none" stroke="{cor}" stroke-width="1.3" points="{caminho}"/>')
        ly = margem_t + 14 * i + 8
        partes.append(f'<line x1="{margem_e + w + 10}" x2="{margem_e + w + 30}" y1="{ly}" y2="{ly}" stroke="{cor}"/>')
        partes.append(f'<text x="{margem_e + w + 34}" y="{ly + 4}">{html.escape(nome)}</text>')
    partes.append("</svg>")
    return "\n".join(partes)


def html_tabela(resumo):
    cab = ("grupo", "n", "KO", "p50", "p75", "p95", "p99", "max", "média", "p50", "p75", "p95", "p99", "max", "média")
    linhas = [
        "<table><tr><th colspan=3></th><th colspan=6>ms inteiros (como o Gatling)</th>"
        "<th colspan=6>ms, 0,1 ms</th></tr><tr>" + "".join(f"<th>{c}</th>" for c in cab) + "</tr>"
    ]
    for g, e in resumo["grupos"].items():
        ms, fino = e["ms"], e["ms_0_1"]
        valores = [g, e["n"], e["ko"]]
        valores += [ms[k] for k in ("p50", "p75", "p95", "p99", "max", "media")]
        valores += [fino[k] for k in ("p50", "p75", "p95", "p99", "max", "media")]
        linhas.append("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in valores) + "</tr>")
    linhas.append("</table>")
    return "\n".join(linhas)


def gerar(resumo):
    serie = resumo["serie"]
    p = resumo["pontuacao"]
    latencias = {f"p{q}": [(s["s"], s[f"p{q}"]) for s in serie if s["req"]] for q in (50, 75, 95, 99)}
    latencias["max"] = [(s["s"], s["max"]) for s in serie if s["req"]]
    taxa = {"req/s": [(s["s"], s["req"]) for s in serie], "KO/s": [(s["s"], s["ko"]) for s in serie]}
    motivos = "".join(f"<li>{html.escape(k)}: {v}</li>" for k, v in sorted(resumo["motivos_ko"].items()))
    return f"""<!DOCTYPE html>
<html lang="pt-BR"><head><meta charset="utf-8"><title>crebito: carga oficial</title>
<style>
body {{ font-family: sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
td, th {{ border: 1px solid #ccc; padding: 3px 8px; text-align: right; }}
.usd {{ font-size: 1.6em; font-weight: bold; }}
</style></head><body>
<h1>crebito: simulação oficial</h1>
<p>Parâmetros: {html.escape(json.dumps(resumo["parametros"]))}; duração {resumo["duracao_s"]} s;
{resumo["total"]} requisições, {resumo["ko"]} KO.</p>
<p class="usd">USD {p["usd"]:.2f}</p>
<p>{p["pct_ok_abaixo_250ms"]:.3f}% respondidas com o status esperado em menos de 250 ms
(multa USD {p["multa_lentidao"]:.2f}); {p["inconsistencias"]} saldos inconsistentes
(multa USD {p["multa_inconsistencias"]:.2f}).</p>
{html_tabela(resumo)}
<ul>{motivos}</ul>
{grafico("Latência por segundo (início da requisição)", latencias, "ms (escala log)", log=True)}
{grafico("Requisições por segundo", taxa, "req/s")}
<p>CPU da própria carga: {resumo["cpu_da_carga"]["cpu_s"]} s
({resumo["cpu_da_carga"]["pct_de_um_nucleo"]}% de um núcleo).</p>
</body></html>
"""
