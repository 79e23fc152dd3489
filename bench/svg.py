"""Inline SVG charts for the load report: lines over time and bars of a
distribution, drawn here so the HTML needs no script and no external asset.

Every chart is an <svg class="grafico" id="..."> whose drawn marks carry the
class "marca": what a browser test looks for in the rendered page."""

import html
import math

CORES = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf")
# The same margins and width for every chart over time, so their seconds line up on the page.
LARGURA, MARGEM_E, MARGEM_D, MARGEM_T, MARGEM_B = 900, 60, 170, 30, 35


def _cabeca(ident, titulo, largura, altura, rotulo_y, h):
    return [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="grafico" id="{ident}" width="{largura}" height="{altura}"'
        ' font-family="sans-serif" font-size="11">',
        f'<text x="{MARGEM_E}" y="18" font-size="13" font-weight="bold">{html.escape(titulo)}</text>',
        f'<text x="14" y="{MARGEM_T + h / 2}" transform="rotate(-90 14 {MARGEM_T + h / 2})" '
        f'text-anchor="middle">{html.escape(rotulo_y)}</text>',
    ]


def marcas_redondas(maximo, n=4):
    """Ticks 0, d, 2d... up to at least `maximo`, d a round step (1, 2, 2.5 or 5 × 10^k)."""
    bruto = (maximo or 1) / n
    ordem = 10 ** math.floor(math.log10(bruto))
    passo = next(m * ordem for m in (1, 2, 2.5, 5, 10) if m * ordem >= bruto)
    return [passo * i for i in range(math.ceil((maximo or 1) / passo - 1e-9) + 1)]


def _escala_y(valores, log, y_teto, h):
    """(function value -> pixel y, tick values) for a linear or log10 axis."""
    if log:
        positivos = [max(v, 0.01) for v in valores]
        lo = math.floor(math.log10(min(positivos)))
        hi = max(math.ceil(math.log10(max(positivos))), lo + 1)

        def py(y):
            return MARGEM_T + h - (math.log10(max(y, 0.01)) - lo) / (hi - lo) * h

        return py, [10**e for e in range(lo, hi + 1)]
    marcas = marcas_redondas(max([*valores, y_teto or 0]))
    y_max = marcas[-1]

    def py(y):
        return MARGEM_T + h - y / y_max * h

    return py, marcas


def linhas(ident, titulo, series, rotulo_y, x_max, altura=260, log=False, referencia=None):
    """Lines over the run's seconds: `series` maps a name to [(second, value)];
    every chart given the same x_max gets the same x axis, 0 to a round
    number of seconds at or past x_max. `referencia` draws a dashed
    horizontal line (a quota's or a limit's 100 %) and keeps it in view."""
    w, h = LARGURA - MARGEM_E - MARGEM_D, altura - MARGEM_T - MARGEM_B
    pontos = [y for s in series.values() for _, y in s]
    if not pontos:
        return f'<p class="sem-dados">{html.escape(titulo)}: sem dados</p>'
    marcas_x = marcas_redondas(x_max, 6)
    x_max = marcas_x[-1]
    py, marcas = _escala_y(pontos, log, referencia, h)

    def px(x):
        return MARGEM_E + min(max(x, 0), x_max) / x_max * w

    partes = _cabeca(ident, titulo, LARGURA, altura, rotulo_y, h)
    partes.append(f'<rect x="{MARGEM_E}" y="{MARGEM_T}" width="{w}" height="{h}" fill="none" stroke="#999"/>')
    for m in marcas:
        y = py(m)
        rotulo = f"{m:g}" if log else f"{m:.3g}"
        partes.append(f'<line x1="{MARGEM_E}" x2="{MARGEM_E + w}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eee"/>')
        partes.append(f'<text x="{MARGEM_E - 4}" y="{y + 4:.1f}" text-anchor="end">{rotulo}</text>')
    for x in marcas_x:
        partes.append(f'<text x="{px(x):.1f}" y="{MARGEM_T + h + 15}" text-anchor="middle">{x:g}s</text>')
    if referencia is not None:
        y = py(referencia)
        tracejado = 'stroke="#000" stroke-dasharray="4 3"'
        partes.append(f'<line x1="{MARGEM_E}" x2="{MARGEM_E + w}" y1="{y:.1f}" y2="{y:.1f}" {tracejado}/>')
    for i, (nome, s) in enumerate(series.items()):
        cor = CORES[i % len(CORES)]
        dentro = [(x, y) for x, y in s if 0 <= x <= x_max]
        caminho = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in dentro)
        partes.append(
            f'<polyline class="marca" fill="none" stroke="{cor}" stroke-width="1.3" points="{caminho}">'
            f"<title>{html.escape(nome)}</title></polyline>"
        )
        ly = MARGEM_T + 14 * i + 8
        partes.append(f'<line x1="{MARGEM_E + w + 10}" x2="{MARGEM_E + w + 30}" y1="{ly}" y2="{ly}" stroke="{cor}"/>')
        partes.append(f'<text x="{MARGEM_E + w + 34}" y="{ly + 4}">{html.escape(nome)}</text>')
    partes.append("</svg>")
    return "\n".join(partes)


def barras(ident, titulo, de_ms, largura_ms, ok, ko, altura=220):
    """A response-time distribution as Gatling draws it: one bar per slot of
    `largura_ms` from `de_ms`, its height the share of the group's requests,
    OK and KO apart. A slot with any request is at least one pixel high, so
    the tail stays visible beside a tall mode."""
    w, h = LARGURA - MARGEM_E - MARGEM_D, altura - MARGEM_T - MARGEM_B
    total = sum(ok) + sum(ko)
    if not total:
        return f'<p class="sem-dados">{html.escape(titulo)}: sem dados</p>'
    pct_ok = [100 * n / total for n in ok]
    pct_ko = [100 * n / total for n in ko]
    marcas = marcas_redondas(max(max(pct_ok), max(pct_ko)))
    teto = marcas[-1]
    n = len(ok)
    passo = w / n
    partes = _cabeca(ident, titulo, LARGURA, altura, "% das requisições", h)
    partes.append(f'<rect x="{MARGEM_E}" y="{MARGEM_T}" width="{w}" height="{h}" fill="none" stroke="#999"/>')
    for v in marcas:
        y = MARGEM_T + h - v / teto * h
        partes.append(f'<line x1="{MARGEM_E}" x2="{MARGEM_E + w}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eee"/>')
        partes.append(f'<text x="{MARGEM_E - 4}" y="{y + 4:.1f}" text-anchor="end">{v:.3g}</text>')
    for i in range(0, n, max(1, n // 10)):
        x = MARGEM_E + i * passo + passo / 2
        partes.append(f'<text x="{x:.1f}" y="{MARGEM_T + h + 15}" text-anchor="middle">{de_ms + i * largura_ms}</text>')
    partes.append(f'<text x="{MARGEM_E + w}" y="{MARGEM_T + h + 30}" text-anchor="end">ms (Gatling)</text>')
    for lado, pcts, contagens, cor in (("OK", pct_ok, ok, CORES[0]), ("KO", pct_ko, ko, CORES[3])):
        for i, (pct, c) in enumerate(zip(pcts, contagens, strict=True)):
            if not c:
                continue
            alto = max(1.0, pct / teto * h)
            faixa = f"{de_ms + i * largura_ms}" + (f"–{de_ms + (i + 1) * largura_ms - 1}" if largura_ms > 1 else "")
            partes.append(
                f'<rect class="marca" x="{MARGEM_E + i * passo + 0.5:.1f}" y="{MARGEM_T + h - alto:.1f}"'
                f' width="{max(passo - 1, 1):.1f}" height="{alto:.1f}" fill="{cor}" fill-opacity="0.8">'
                f"<title>{lado} {faixa} ms: {c} ({pct:.2f}%)</title></rect>"
            )
    for i, (lado, cor) in enumerate((("OK", CORES[0]), ("KO", CORES[3]))):
        ly = MARGEM_T + 14 * i + 8
        partes.append(f'<rect x="{MARGEM_E + w + 10}" y="{ly - 5}" width="20" height="10" fill="{cor}"/>')
        partes.append(f'<text x="{MARGEM_E + w + 34}" y="{ly + 4}">{lado}</text>')
    partes.append("</svg>")
    return "\n".join(partes)
