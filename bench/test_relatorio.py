"""Tests of the load report (relatorio.py, svg.py, exportar.py) and of the
flame graphs (perfil.py): the summary exported as JSON and Markdown agrees
with the replay's own counts, the KO reasons read as sentences, the page
renders in a real browser (headless Chromium) with every chart drawn, and a
short profile yields flame graphs of server.py's functions."""

import json
import os
import random
import re
import shutil
import struct
import subprocess
import sys
import zlib

import carga
import chamas
import pilha
import pytest
import relatorio

AQUI = os.path.dirname(os.path.abspath(__file__))
COMPONENTES = ("postgres", "api01", "api02", "haproxy")
GRAFICOS_NO_TEMPO = ("latencia", "taxa", "cpu", "memoria", "sessoes")
# Each open-model scenario's peak rate (users/s), as carga.py schedules them.
PICOS = {"debitos": 220, "creditos": 110, "extratos": 10}


def _registro_sintetico(n=3000, semente=7):
    """A replay's record with known outcomes: every group, a few KOs of two kinds."""
    aleatorio = random.Random(semente)
    r = carga.Registro()
    for i in range(n):
        grupo = aleatorio.choice(carga.GRUPOS)
        inicio = r.inicio_ns + i * 3_000_000
        lat = int(aleatorio.expovariate(1 / 1.5e6)) + 300_000
        if i % 97 == 0:
            r.anotar(grupo, inicio, inicio + lat, 502, "status 502, esperado 200", False, "GET /clientes/1/extrato")
        elif i % 131 == 0:
            r.anotar(grupo, inicio, inicio + lat, 200, "saldo abaixo de menos o limite (inconsistência)", True)
        else:
            r.anotar(grupo, inicio, inicio + lat, 200, None, True)
    return r


def _resumo(r):
    resumo = carga.resumir(r, 10.0, {"cpu_s": 1.0, "pct_de_um_nucleo": 10.0})
    resumo["parametros"] = {"url": "http://127.0.0.1:1", "escala": 1, "rampa": 3, "plato": 3}
    resumo["serie"] = carga.serie_temporal(r)
    resumo["inicio_epoch"] = r.inicio_epoch
    resumo["inicio_fase3_s"] = 0.5
    return resumo


def _gravado_sintetico(resumo, segundos=12):
    """A per-second record as registro.py keeps it, starting 1.5 s before the load."""
    aleatorio = random.Random(3)
    segs = []
    for s in range(segundos):
        segs.append(
            {
                "s": s,
                "cgrupo": {
                    c: {"cpu_ms": aleatorio.uniform(10, 200), "mem_mb": aleatorio.uniform(5, 25)} for c in COMPONENTES
                },
                "cpu_ms": {"postgres:sessoes_api": 50.0, "api01:workers": 20.0},
                "amostras_esperas": 20,
                "esperas": {"api:CPU:-": aleatorio.randint(1, 30), "api:Lock:transactionid": aleatorio.randint(0, 4)},
            }
        )
    limites = {"postgres": [0.8, 400], "api01": [0.25, 60], "api02": [0.25, 60], "haproxy": [0.2, 30]}
    return {"inicio_epoch": resumo["inicio_epoch"] - 1.5, "segundos": segs, "limites": limites}


# -- the summary --------------------------------------------------------------------


def test_resumo_json_e_markdown_conferem_com_o_registro(tmp_path):
    r = _registro_sintetico()
    relatorio.escrever(str(tmp_path), _resumo(r))
    with open(tmp_path / "resumo.json") as f:
        exportado = json.load(f)
    assert exportado["total"] == len(r.ok) and exportado["ko"] == r.ok.count(False)
    for grupo in carga.GRUPOS:
        idx = [i for i, g in enumerate(r.grupo) if g == grupo]
        e = exportado["grupos"][grupo]
        assert e["n"] == len(idx)
        assert e["ko"] == sum(1 for i in idx if not r.ok[i])
        assert e["ms"]["max"] == max(r.ms_inteiros[i] for i in idx)
    assert exportado["grupos"]["all"]["n"] == len(r.ok)
    # One sentence per (group, reason), their counts adding up to the KOs.
    contagens = [int(frase.split()[0]) for frase in exportado["ko_em_frases"]]
    assert sum(contagens) == exportado["ko"]
    md = (tmp_path / "resumo.md").read_text()
    for grupo, e in exportado["grupos"].items():
        assert re.search(rf"^\| {grupo} \| {e['n']} \| {e['ko']} \|", md, re.M), md
    assert f"USD {exportado['pontuacao']['usd']:.2f}" in md


def test_distribuicao_como_o_gatling():
    r = _registro_sintetico()
    resumo = _resumo(r)
    for grupo, d in resumo["distribuicao"].items():
        e = resumo["grupos"][grupo]
        assert len(d["ok"]) <= carga.SLOTS
        assert sum(d["ok"]) + sum(d["ko"]) == e["n"] and sum(d["ko"]) == e["ko"]
        assert d["de_ms"] == e["ms"]["min"]
        assert (
            d["de_ms"] + (len(d["ok"]) - 1) * d["largura_ms"]
            <= e["ms"]["max"]
            < d["de_ms"] + len(d["ok"]) * d["largura_ms"]
        )
    # A wide range: 100 slots of equal width, max in the last.
    d = carga.distribuicao([0, 1, 2, 1000], [True, True, False, True])
    assert d["largura_ms"] == 11 and len(d["ok"]) == 91 and d["ok"][-1] == 1 and d["ko"][0] == 1


def test_motivos_de_ko_em_frases():
    r = carga.Registro()
    for _ in range(3):
        r.anotar("debitos", 0, 1, 500, "status 500, esperado 200 ou 422", False, "POST /clientes/1/transacoes: x")
    r.anotar("extratos", 0, 1, 0, carga.motivo_de_conexao(ConnectionRefusedError(111, "Connection refused")), False)
    frases = [m["frase"] for m in carga.frases_de_ko(r)]
    assert frases == [
        "3 requisições de débito: status 500, esperado 200 ou 422 (a primeira: POST /clientes/1/transacoes: x)",
        "1 requisição de extrato: conexão recusada",
    ]
    # No Python object printed raw into a reason.
    falha = carga.Falha("o saldo do extrato difere do que a última transação respondeu", "cliente 1: saldo 3")
    assert not any(c in str(falha) + falha.exemplo for c in "{}[]")


def _item(descricao, tipo, valor):
    return {"descricao": descricao, "tipo": tipo, "valor": valor, "realizada_em": "2024-01-01T00:00:00Z"}


def test_corrida_da_simulacao_apartada_das_outras_falhas():
    toma, devolve = _item("toma", "c", 1), _item("devolve", "d", 1)
    da_carga = _item("K9zrR03vO9", "d", 6144)
    esperados = [("devolve", "d", 1), ("toma", "c", 1)]
    carga.checar_itens(4, [devolve, toma], esperados)
    # A load entry above or between the validation's own, which are all there in order: the race.
    for lista in ([da_carga, devolve, toma], [devolve, da_carga, toma]):
        with pytest.raises(carga.Corrida):
            carga.checar_itens(4, lista, esperados)
    # The validation's own entries missing or out of order: a failure of the API, not the race.
    for lista in ([toma, devolve], [devolve, _item("toma", "c", 2)], [da_carga, devolve, _item("outra", "c", 1)]):
        with pytest.raises(carga.Falha) as e:
            carga.checar_itens(4, lista, esperados)
        assert not isinstance(e.value, carga.Corrida), lista

    limite = carga.LIMITES[4]
    carga.checar_inicial(4, limite, {"saldo": {"total": 0, "limite": limite}, "ultimas_transacoes": []})
    antes = {"saldo": {"total": -6144, "limite": limite}, "ultimas_transacoes": [da_carga]}
    with pytest.raises(carga.Corrida):
        carga.checar_inicial(4, limite, antes)
    # Client 1 after the bursts: the load's entry above the first phases' own.
    validacao = [_item("validacao", "c", 1), _item("validacao", "d", 1)] * 5
    with pytest.raises(carga.Corrida):
        saldo = {"total": -6144, "limite": carga.LIMITES[1]}
        carga.checar_inicial(1, carga.LIMITES[1], {"saldo": saldo, "ultimas_transacoes": [da_carga, *validacao[:9]]})
    # A balance that the entries shown do not add up to is not explained by the race.
    for saldo in ({"total": -6000, "limite": limite}, {"total": -6144, "limite": 1}):
        with pytest.raises(carga.Falha) as e:
            carga.checar_inicial(4, limite, {**antes, "saldo": saldo})
        assert not isinstance(e.value, carga.Corrida), saldo


# -- the page in a browser ---------------------------------------------------------------

MEDIR = """<script>
window.addEventListener('load', () => {
  const linhas = [];
  for (const g of document.querySelectorAll('svg.grafico')) {
    const caixa = g.getBoundingClientRect();
    const desenhadas = [...g.querySelectorAll('.marca')].filter(m => {
      const b = m.getBBox();
      return b.width > 0 || b.height > 0;
    }).length;
    linhas.push([g.id, Math.round(caixa.width), Math.round(caixa.height), desenhadas].join(' '));
  }
  const pre = document.createElement('pre');
  pre.id = 'medidas';
  pre.textContent = linhas.join('\\n');
  document.body.appendChild(pre);
});
</script>"""


def _chromium(*args, pasta):
    exe = shutil.which("chromium")
    assert exe, "chromium ausente: bash stack/install.sh o instala"
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={pasta}/chromium", *args]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout


def graficos_desenhados(html_path, pasta):
    """{chart id: (width, height, marks with a non-empty box)} as Chromium lays the page out."""
    medido = os.path.join(pasta, "medido.html")
    with open(html_path) as f:
        pagina = f.read()
    with open(medido, "w") as f:
        f.write(pagina.replace("</body>", MEDIR + "</body>"))
    dom = _chromium("--virtual-time-budget=5000", "--dump-dom", f"file://{medido}", pasta=pasta)
    achado = re.search(r'<pre id="medidas">(.*?)</pre>', dom, re.S)
    assert achado, dom[-2000:]
    r = {}
    for linha in achado[1].strip().splitlines():
        ident, largura, altura, marcas = linha.split()
        r[ident] = (int(largura), int(altura), int(marcas))
    return r


def _pixels(png):
    """(width, height, rows of RGB(A) bytes) of an 8-bit RGB or RGBA PNG."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    i, dados = 8, b""
    while i < len(png):
        n, tipo = struct.unpack(">I4s", png[i : i + 8])
        corpo = png[i + 8 : i + 8 + n]
        if tipo == b"IHDR":
            largura, altura, bits, cor = struct.unpack(">IIBB", corpo[:10])
            assert bits == 8 and cor in (2, 6), (bits, cor)
            bpp = 3 if cor == 2 else 4
        elif tipo == b"IDAT":
            dados += corpo
        i += 12 + n
    cru = zlib.decompress(dados)
    passo = largura * bpp
    linhas, anterior = [], bytearray(passo)
    for y in range(altura):
        filtro, linha = cru[y * (passo + 1)], bytearray(cru[y * (passo + 1) + 1 : (y + 1) * (passo + 1)])
        for x in range(passo):
            a = linha[x - bpp] if x >= bpp else 0
            b = anterior[x]
            c = anterior[x - bpp] if x >= bpp else 0
            if filtro == 1:
                linha[x] = (linha[x] + a) & 255
            elif filtro == 2:
                linha[x] = (linha[x] + b) & 255
            elif filtro == 3:
                linha[x] = (linha[x] + (a + b) // 2) & 255
            elif filtro == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                linha[x] = (linha[x] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        linhas.append(bytes(linha))
        anterior = linha
    return largura, altura, bpp, linhas


def tela_nao_vazia(html_path, pasta, altura=4000):
    """A screenshot of the page: (share of non-white pixels, distinct colours)."""
    png = os.path.join(pasta, "tela.png")
    _chromium(f"--screenshot={png}", f"--window-size=1100,{altura}", f"file://{html_path}", pasta=pasta)
    with open(png, "rb") as f:
        largura, alt, bpp, linhas = _pixels(f.read())
    cores, marcados = set(), 0
    for linha in linhas[::3]:
        for x in range(0, largura * bpp, bpp * 3):
            rgb = linha[x : x + 3]
            cores.add(rgb)
            marcados += rgb != b"\xff\xff\xff"
    return marcados / (len(linhas[::3]) * len(range(0, largura * bpp, bpp * 3))), len(cores)


def conferir_no_navegador(html_path, pasta, esperados):
    desenhados = graficos_desenhados(html_path, pasta)
    for ident in esperados:
        assert ident in desenhados, (ident, desenhados)
        largura, altura, marcas = desenhados[ident]
        assert largura > 100 and altura > 100 and marcas > 0, (ident, desenhados[ident])
    fracao, cores = tela_nao_vazia(html_path, pasta)
    assert fracao > 0.02 and cores > 20, (fracao, cores)


def test_relatorio_no_navegador(tmp_path):
    """Every chart of a report with a record is drawn by a real browser, and
    a chart with nothing to draw fails the check."""
    resumo = _resumo(_registro_sintetico())
    (tmp_path / "chamas-api01.svg").write_text(chamas.svg({"app;responder;chamar": 3}, "teste"))
    relatorio.escrever(str(tmp_path), resumo, _gravado_sintetico(resumo))
    pagina = (tmp_path / "relatorio.html").read_text()
    # Self-contained: nothing fetched, the only link the flame graph beside it.
    assert not any(x in pagina for x in ("src=", "<link", "@import", "url(", "https://"))
    assert re.findall(r'href="([^"]*)"', pagina) == ["chamas-api01.svg"]
    esperados = [*GRAFICOS_NO_TEMPO, *(f"dist-{g}" for g in carga.GRUPOS)]
    conferir_no_navegador(str(tmp_path / "relatorio.html"), str(tmp_path), esperados)
    # A broken chart (its marks drawn outside any box) is caught.
    quebrado = tmp_path / "quebrado.html"
    quebrado.write_text(re.sub(r'points="[^"]*"', 'points="NaN,NaN"', pagina))
    desenhados = graficos_desenhados(str(quebrado), str(tmp_path))
    assert desenhados["latencia"][2] == 0, desenhados


def test_relatorio_sem_registro_diz_o_que_falta(tmp_path):
    relatorio.escrever(str(tmp_path), _resumo(_registro_sintetico(300)))
    pagina = (tmp_path / "relatorio.html").read_text()
    assert 'class="sem-registro"' in pagina and 'id="cpu"' not in pagina and 'id="latencia"' in pagina


def test_colapsar_perf():
    texto = (
        "postgres 123 4567.890: 1010101 cpu-clock:ppp:\n"
        "\t  aa ExecInterpExpr+0x12 (/usr/lib/postgresql/15/bin/postgres)\n"
        "\t  bb PostgresMain+0x99 (/usr/lib/postgresql/15/bin/postgres)\n"
        "\t   0 [unknown] ([unknown])\n\n"
        "postgres 123 4567.891: 1010101 cpu-clock:ppp:\n"
        "\t  cc [unknown] (/usr/lib/x86_64-linux-gnu/libc.so.6)\n\n"
    )
    assert chamas.colapsar_perf(texto) == {"postgres;PostgresMain;ExecInterpExpr": 1, "postgres;[libc.so.6]": 1}
    # Named by role when its pid is known.
    assert chamas.colapsar_perf(texto, {123: "sessoes_api"})["sessoes_api;PostgresMain;ExecInterpExpr"] == 1


# -- on a real stack ---------------------------------------------------------------------------


@pytest.mark.skipif(os.geteuid() != 0, reason="py-spy, perf and the cgroups need root (CI runs as root)")
def test_perfil_curto(tmp_path):
    """perfil.py --curto: flame graphs of server.py's functions beside the
    report, linked from it; the report drawn with the record; its summary
    agreeing with what the replay sent and counted."""
    comando = [sys.executable, os.path.join(AQUI, "perfil.py"), "--curto", "--saida", str(tmp_path)]
    r = subprocess.run(comando, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    for api in pilha.PYTHON:
        grafico = (tmp_path / f"chamas-{api}.svg").read_text()
        funcoes = set(re.findall(r"(\w+) \(server\.py:\d+\)", grafico))
        assert {"app", "responder"} <= funcoes, (api, funcoes, r.stdout[-2000:])
    pagina = (tmp_path / "relatorio.html").read_text()
    links = re.findall(r'href="([^"]*)"', pagina)
    assert {"chamas-api01.svg", "chamas-api02.svg"} <= set(links), links
    if shutil.which("perf"):
        assert "chamas-postgres.svg" in links, r.stdout[-2000:]
        assert "PostgresMain" in (tmp_path / "chamas-postgres.svg").read_text()

    with open(tmp_path / "resumo.json") as f:
        exportado = json.load(f)
    with open(tmp_path / "carga.json") as f:
        completo = json.load(f)
    chegadas = {g: len(carga.tempos_de_chegada(1, pico, 3, 3)) for g, pico in PICOS.items()}
    for grupo, n in chegadas.items():
        assert exportado["grupos"][grupo]["n"] == n
    assert exportado["grupos"]["validacoes"]["n"] == 123
    assert exportado["total"] == sum(chegadas.values()) + 123 == sum(s["req"] for s in completo["serie"])
    assert exportado["ko"] == sum(s["ko"] for s in completo["serie"]) == completo["ko"]
    assert exportado["grupos"] == {
        g: {k: e[k] for k in ("n", "ko", "ms", "ms_0_1")} for g, e in completo["grupos"].items()
    }
    with open(tmp_path / "registro.json") as f:
        gravado = json.load(f)
    esperados = ["latencia", "taxa", "sessoes", *(f"dist-{g}" for g in ("debitos", "creditos", "extratos"))]
    if gravado["limites"] and any(s.get("cgrupo") for s in gravado["segundos"]):
        esperados += ["cpu", "memoria"]
    conferir_no_navegador(str(tmp_path / "relatorio.html"), str(tmp_path), esperados)
