"""Flame graphs from perf: `perf script`'s samples folded into stacks, and
those drawn as a self-contained SVG (one box per frame, its width the share
of samples, callers below callees; a box's title names its samples).

py-spy draws its own; this is for what py-spy cannot see, PostgreSQL."""

import collections
import hashlib
import html
import os
import re

CABECALHO = re.compile(r"^(?P<comm>.+?)\s+(?P<pid>\d+)(?:/\d+)?\s+(?:\[\d+\]\s+)?[\d.]+:")
ALTURA_QUADRO = 16


def colapsar_perf(texto, papeis=None):
    """{"comm;outermost;...;innermost": samples} from `perf script` output:
    a header line per sample, then its frames innermost first, then a blank.
    `papeis` ({pid: name}) names a process's root frame instead of its comm."""
    papeis = papeis or {}
    pilhas = collections.Counter()
    comm, quadros = None, []

    def fechar():
        if comm is not None:
            pilhas[";".join([comm, *reversed(quadros)])] += 1

    for linha in texto.splitlines():
        if not linha.strip():
            fechar()
            comm, quadros = None, []
        elif not linha[0].isspace():
            fechar()
            m = CABECALHO.match(linha)
            comm, quadros = (papeis.get(int(m["pid"]), m["comm"]) if m else linha.split()[0]), []
        else:
            _, _, resto = linha.strip().partition(" ")
            simbolo, _, dso = resto.rpartition(" (")
            simbolo = re.sub(r"\+0x[0-9a-f]+$", "", simbolo)
            if simbolo in ("", "[unknown]"):
                dso = os.path.basename(dso.rstrip(")"))
                if dso in ("", "[unknown]"):
                    continue  # a broken unwind's last address: nothing to show
                # No symbol: the library it ran in still says something.
                simbolo = f"[{dso}]"
            quadros.append(simbolo)
    fechar()
    return pilhas


def _cor(nome):
    """Warm colours, stable per name; the kernel's frames in orange."""
    h = int(hashlib.md5(nome.encode()).hexdigest()[:4], 16)
    if nome.startswith(("__x64_sys", "do_syscall", "entry_SYSCALL")) or "[kernel" in nome:
        return f"rgb(240,{140 + h % 50},40)"
    return f"rgb({205 + h % 50},{60 + h % 120},{40 + h % 30})"


def svg(pilhas, titulo, largura=1200):
    """The flame graph of folded stacks as an SVG document."""
    arvore = [0, {}]
    profundidade = 0
    for pilha, n in pilhas.items():
        no = arvore
        no[0] += n
        quadros = pilha.split(";")
        profundidade = max(profundidade, len(quadros))
        for q in quadros:
            no = no[1].setdefault(q, [0, {}])
            no[0] += n
    total = arvore[0] or 1
    altura = (profundidade + 1) * ALTURA_QUADRO + 40
    partes = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{largura}" height="{altura}" font-family="monospace"'
        ' font-size="11">',
        f'<text x="4" y="16" font-size="14" font-family="sans-serif">{html.escape(titulo)}'
        f" ({arvore[0]} amostras)</text>",
    ]

    def desenhar(filhos, x, nivel):
        for nome, (n, netos) in sorted(filhos.items()):
            w = n / total * largura
            if w >= 0.3:
                y = altura - (nivel + 1) * ALTURA_QUADRO
                rotulo = nome if len(nome) * 7 <= w - 4 else nome[: max(0, int((w - 4) / 7) - 2)] + ".."
                partes.append(
                    f"<g><title>{html.escape(nome)} ({n} amostras, {100 * n / total:.2f}%)</title>"
                    f'<rect x="{x:.1f}" y="{y}" width="{w:.1f}" height="{ALTURA_QUADRO - 1}" fill="{_cor(nome)}"/>'
                    + (f'<text x="{x + 2:.1f}" y="{y + 11}">{html.escape(rotulo)}</text>' if w > 25 else "")
                    + "</g>"
                )
                desenhar(netos, x, nivel + 1)
            x += w

    desenhar(arvore[1], 0.0, 0)
    partes.append("</svg>")
    return "\n".join(partes)
