"""A self-contained HTML report of a load run (carga.py): tables and inline
SVG charts, no external assets, so the file can be archived or mailed as is.

With the per-second record of bench/registro.py (orcamento.py and perfil.py
keep one; carga.py alone, each component's CPU and memory from the stack's
processes exporter), the report also draws, on the latency's time axis, each
component's CPU against its quota, its memory against its limit, and the
database's active sessions and lock waits. Flame graphs found beside the
report (chamas-*.svg, from perfil.py) are linked from it. Beside it too:
the summary table as resumo.json and resumo.md.

    .venv/bin/python bench/relatorio.py DIR [--registro registro.json]   # draws DIR/carga.json again
"""

import argparse
import glob
import html
import json
import os

import exportar
import svg

PERCENTIS = ("p50", "p75", "p95", "p99")
GRUPOS = ("debitos", "creditos", "extratos", "validacoes")


def html_tabela(resumo):
    cab = ("grupo", "n", "KO", "p50", "p75", "p95", "p99", "max", "média", "p50", "p75", "p95", "p99", "max", "média")
    linhas = [
        '<table id="resumo"><tr><th colspan=3></th><th colspan=6>ms inteiros (como o Gatling)</th>'
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


# -- the per-second record, on the load's time axis ---------------------------------


def _cpu_ms(seg):
    """CPU ms of each component in one recorded second: its cgroup's counter
    when recorded, else the sum of its processes (from /proc)."""
    r = {n: v["cpu_ms"] for n, v in (seg.get("cgrupo") or {}).items() if v.get("cpu_ms") is not None}
    if r:
        return r
    for chave, ms in (seg.get("cpu_ms") or {}).items():
        componente = chave.split(":")[0]
        r[componente] = r.get(componente, 0.0) + ms
    return r


def _sessoes(seg):
    """Average database sessions in the second: the API's active ones, those
    of them waiting on a lock (heavyweight, or an LWLock such as WALWrite) or
    on I/O, and the other active processes (autovacuum, checkpointer...)."""
    amostras = seg.get("amostras_esperas")
    if not amostras:
        return None
    esperas = seg.get("esperas") or {}

    def media(filtro):
        return round(sum(n for k, n in esperas.items() if filtro(k)) / amostras, 2)

    return {
        "API ativas": media(lambda k: k.startswith("api:")),
        "API em Lock": media(lambda k: k.startswith("api:Lock:")),
        "API em LWLock": media(lambda k: k.startswith("api:LWLock:")),
        "API em E/S": media(lambda k: k.startswith("api:IO:")),
        "outros processos": media(lambda k: not k.startswith("api:")),
    }


def graficos_do_registro(gravado, inicio_epoch, x_max):
    """The charts of the record, each a list of SVG or paragraphs."""
    deslocamento = gravado.get("deslocamento_s")
    if deslocamento is None:
        deslocamento = inicio_epoch - gravado["inicio_epoch"]
    limites = gravado.get("limites") or {}
    cpu, memoria, sessoes = {}, {}, {}
    for seg in gravado["segundos"]:
        x = seg["s"] - deslocamento
        for nome, ms in _cpu_ms(seg).items():
            # A share of the quota, or of one core when there is none.
            cota = limites[nome][0] if nome in limites else 1.0
            cpu.setdefault(nome, []).append((x, round(ms / (10 * cota), 1)))
        for nome, v in (seg.get("cgrupo") or {}).items():
            if v.get("mem_mb") is not None and nome in limites:
                memoria.setdefault(nome, []).append((x, round(100 * v["mem_mb"] / limites[nome][1], 1)))
        for nome, valor in (_sessoes(seg) or {}).items():
            sessoes.setdefault(nome, []).append((x, valor))

    def rotulo(nome, i, unidade):
        return f"{nome} ({limites[nome][i]:g} {unidade})" if nome in limites else nome

    cpu = {rotulo(n, 0, "CPU"): s for n, s in sorted(cpu.items())}
    memoria = {rotulo(n, 1, "MB"): s for n, s in sorted(memoria.items())}
    eixo_cpu = "% da cota de CPU" if limites else "% de um núcleo"
    # carga.py alone records, from the processes exporter, the processes' own memory.
    fonte_memoria = gravado.get("memoria", "cgroup")
    return [
        svg.linhas("cpu", "CPU de cada componente", cpu, eixo_cpu, x_max, referencia=100),
        svg.linhas(
            "memoria", f"Memória de cada componente ({fonte_memoria})", memoria, "% do limite", x_max, referencia=100
        ),
        svg.linhas("sessoes", "Sessões do PostgreSQL (média no segundo)", sessoes, "sessões", x_max),
    ]


# -- the page ---------------------------------------------------------------------------


def gerar(resumo, gravado=None, chamas=()):
    serie = resumo["serie"]
    p = resumo["pontuacao"]
    x_max = max((s["s"] for s in serie), default=0) + 1
    latencias = {q: [(s["s"], s[q]) for s in serie if s["req"]] for q in PERCENTIS}
    latencias["max"] = [(s["s"], s["max"]) for s in serie if s["req"]]
    taxa = {"req/s": [(s["s"], s["req"]) for s in serie], "KO/s": [(s["s"], s["ko"]) for s in serie]}
    motivos = "".join(f"<li>{html.escape(m['frase'])}</li>" for m in resumo.get("ko_em_frases", []))
    no_tempo = [
        svg.linhas("latencia", "Latência por segundo (início da requisição)", latencias, "ms (log)", x_max, log=True),
        svg.linhas("taxa", "Requisições por segundo", taxa, "req/s", x_max),
    ]
    if gravado and gravado.get("segundos"):
        no_tempo += graficos_do_registro(gravado, resumo["inicio_epoch"], x_max)
    else:
        no_tempo.append(
            '<p class="sem-registro">Sem registro por segundo (registro.json): CPU, memória e sessões do banco'
            " aparecem quando a carga roda por bench/orcamento.py ou bench/perfil.py, ou sozinha ao lado do"
            " exportador de processos da pilha (carga.py --metricas).</p>"
        )
    distribuicoes = []
    for g in GRUPOS:
        d = resumo.get("distribuicao", {}).get(g)
        if d:
            e = resumo["grupos"][g]
            titulo = f"{g}: {e['n']} requisições, {e['ko']} KO, p50 {e['ms']['p50']} ms, max {e['ms']['max']} ms"
            distribuicoes.append(svg.barras(f"dist-{g}", titulo, d["de_ms"], d["largura_ms"], d["ok"], d["ko"]))
    perfis = ""
    if chamas:
        itens = "".join(f'<li><a href="{html.escape(c)}">{html.escape(c)}</a></li>' for c in chamas)
        perfis = f'<h2>Perfis (gráficos de chamas)</h2><ul id="chamas">{itens}</ul>'
    return f"""<!DOCTYPE html>
<html lang="pt-BR"><head><meta charset="utf-8"><title>crebito: carga oficial</title>
<style>
body {{ font-family: sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
td, th {{ border: 1px solid #ccc; padding: 3px 8px; text-align: right; }}
.usd {{ font-size: 1.6em; font-weight: bold; }}
svg.grafico {{ display: block; margin: 0.5em 0; }}
</style></head><body>
<h1>crebito: simulação oficial</h1>
<p>Parâmetros: {html.escape(json.dumps(resumo["parametros"]))}; duração {resumo["duracao_s"]} s;
{resumo["total"]} requisições, {resumo["ko"]} KO.</p>
<p class="usd">USD {p["usd"]:.2f}</p>
<p>{p["pct_ok_abaixo_250ms"]:.3f}% respondidas com o status esperado em menos de 250 ms
(multa USD {p["multa_lentidao"]:.2f}); {p["inconsistencias"]} saldos inconsistentes
(multa USD {p["multa_inconsistencias"]:.2f}).</p>
{html_tabela(resumo)}
<p>A mesma tabela em resumo.json e resumo.md, ao lado deste arquivo.</p>
<ul id="motivos">{motivos}</ul>
<h2>Ao longo da carga</h2>
{"".join(no_tempo)}
<h2>Distribuição das latências por grupo</h2>
{"".join(distribuicoes)}
{perfis}
<p>CPU da própria carga: {resumo["cpu_da_carga"]["cpu_s"]} s
({resumo["cpu_da_carga"]["pct_de_um_nucleo"]}% de um núcleo).</p>
</body></html>
"""


def escrever(pasta, resumo, gravado=None):
    """relatorio.html, resumo.json and resumo.md in `pasta`, linking the
    flame graphs already there."""
    chamas = sorted(os.path.basename(c) for c in glob.glob(os.path.join(pasta, "chamas-*.svg")))
    with open(os.path.join(pasta, "relatorio.html"), "w") as f:
        f.write(gerar(resumo, gravado, chamas))
    exportar.escrever(os.path.join(pasta, "resumo.json"), os.path.join(pasta, "resumo.md"), resumo)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("pasta", help="folder with carga.json")
    ap.add_argument("--registro", default=None, help="registro.json (default: beside carga.json or one folder up)")
    args = ap.parse_args(argv)
    with open(os.path.join(args.pasta, "carga.json")) as f:
        resumo = json.load(f)
    candidatos = (
        [args.registro] if args.registro else [os.path.join(args.pasta, p, "registro.json") for p in ("", "..")]
    )
    gravado = None
    for caminho in candidatos:
        if os.path.exists(caminho):
            with open(caminho) as f:
                gravado = json.load(f)
            break
    escrever(args.pasta, resumo, gravado)
    print(f"relatório em {os.path.join(args.pasta, 'relatorio.html')}")


if __name__ == "__main__":
    main()
