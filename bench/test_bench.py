"""Tests of the benchmark tools themselves: `.venv/bin/pytest bench`.

The arrival schedule and the score must match the official simulation, the
process-tree and cgroup helpers must find and confine real processes, and a
short load run against a real fresh stack must check and report what the
official test checks."""

import glob
import json
import os
import re
import signal
import subprocess
import sys
import time

import carga
import corrida
import pilha
import pisos
import pytest


def test_chegadas_da_simulacao_oficial():
    debitos = carga.tempos_de_chegada(1, 220, 120, 120)
    creditos = carga.tempos_de_chegada(1, 110, 120, 120)
    extratos = carga.tempos_de_chegada(1, 10, 120, 120)
    # (1 + pico) / 2 * 120 s of ramp, then pico * 120 s of plateau.
    assert len(debitos) == 13260 + 26400
    assert len(creditos) == 6660 + 13200
    assert len(extratos) == 660 + 1200
    # With the validation phases, "about 61,500 requests in all".
    assert len(debitos) + len(creditos) + len(extratos) == 61380
    assert debitos == sorted(debitos)
    assert debitos[0] == 0 and debitos[-1] < 240
    # The rate ramps: about 1/s at the start, about 220/s at the end of the ramp.
    assert 0.5 < debitos[1] - debitos[0] < 1.0
    assert sum(1 for t in debitos if 119 <= t < 120) in range(218, 221)
    assert sum(1 for t in debitos if 200 <= t < 201) == 220


def test_escala_multiplica_as_taxas():
    assert len(carga.tempos_de_chegada(2, 440, 10, 10)) == 2 * len(carga.tempos_de_chegada(1, 220, 10, 10))


def test_percentil_por_posicao_mais_proxima():
    valores = list(range(1, 101))
    assert carga.percentil(valores, 50) == 50
    assert carga.percentil(valores, 99) == 99
    assert carga.percentil([7], 99) == 7
    assert carga.percentil([], 99) == 0


def _registro(n_rapidos_ok, n_lentos, inconsistencias=0):
    r = carga.Registro()
    for i in range(n_rapidos_ok):
        r.anotar("debitos", i * 1_000_000, i * 1_000_000 + 1_500_000, 200, None, True)
    for _ in range(n_lentos):
        r.anotar("creditos", 0, 300_000_000, 200, None, True)
    r.inconsistencias = inconsistencias
    return r


def test_pontuacao_oficial():
    perfeito = carga.resumir(_registro(100, 0), 1.0, {})
    assert perfeito["pontuacao"]["usd"] == 100000
    # 97% under 250 ms: fine (98 - 97) * 1000.
    lento = carga.resumir(_registro(97, 3), 1.0, {})
    assert lento["pontuacao"]["pct_ok_abaixo_250ms"] == 97.0
    assert lento["pontuacao"]["usd"] == 99000
    inconsistente = carga.resumir(_registro(100, 0, inconsistencias=2), 1.0, {})
    assert inconsistente["pontuacao"]["usd"] == round(100000 - 2 * 803.01, 2)


def test_milissegundos_inteiros_como_o_gatling():
    r = carga.Registro()
    # 0.4 ms crossing a millisecond boundary counts 1 ms; 0.9 ms inside one counts 0.
    r.anotar("extratos", 999_800_000, 1_000_200_000, 200, None, True)
    r.anotar("extratos", 2_000_000_000, 2_000_900_000, 200, None, True)
    assert r.ms_inteiros == [1, 0]


def test_orcamento_do_compose_soma_o_limite_do_desafio():
    limites, _ = pilha.orcamento()
    assert set(limites) == set(pilha.COMPONENTES)
    assert sum(cpu for cpu, _ in limites.values()) <= 1.5 + 1e-9
    assert sum(mb for _, mb in limites.values()) <= 550 + 1e-9
    escalado = pilha.escalar_memoria(limites, 200)
    assert abs(sum(mb for _, mb in escalado.values()) - 200) < 1e-6


def test_megabytes():
    assert pilha._megabytes("400MB") == 400
    assert pilha._megabytes("1g") == 1024
    with pytest.raises(ValueError):
        pilha._megabytes("muito")


def test_arvore_e_cpu_de_processos():
    filho = subprocess.Popen([sys.executable, "-c", "import time; sum(range(3_000_000)); time.sleep(30)"])
    try:
        time.sleep(0.5)
        assert filho.pid in pilha.arvore(os.getpid())
        assert pilha.cpu_arvore(filho.pid) > 0
        assert pilha.pss_kb([filho.pid]) > 0
    finally:
        filho.kill()
        filho.wait()


def test_cgrupo_confina_um_processo():
    cg = pilha.Cgrupos({"api01": (0.1, 50)}, nome="crebito-bench-teste")
    if cg.modo is None:
        # Not writable here: the tool must say so and still run unconfined.
        assert not os.access("/sys/fs/cgroup/memory/cgroup.procs", os.W_OK)
        return
    filho = subprocess.Popen(["sleep", "30"])
    try:
        cg.criar()
        cg.mover("api01", [filho.pid])
        with open(f"/proc/{filho.pid}/cgroup") as f:
            assert cg.base in f.read()
        assert cg.cpu_s("api01") is not None
    finally:
        filho.kill()
        filho.wait()
        cg.remover()
    assert not any(os.path.exists(c) for c in cg._dirs("api01").values())


def test_carga_curta_contra_a_pilha_real(tmp_path):
    p = pilha.Pilha()
    try:
        p.iniciar()
        resumo = carga.main(["--url", p.url, "--rampa", "3", "--platô", "2", "--saida", str(tmp_path)])
        # pilha.pg()'s arguments, as bench/pgbench.py gives them to pgbench, name the
        # database without its debug log (-d is --debug to pgbench), which writes
        # every command sent and slows the client being measured.
        aqui = os.path.dirname(os.path.abspath(__file__))
        comando = ["pgbench", "-n", "-M", "prepared", "-t", "2", "-f", os.path.join(aqui, "extrato.sql"), *p.pg()]
        banco = subprocess.run(comando, capture_output=True, text=True)
    finally:
        p.parar()
    assert "actually processed: 2/2" in banco.stdout, banco.stdout + banco.stderr
    assert "pghost:" not in banco.stderr  # the debug log's first line
    assert resumo["pontuacao"]["inconsistencias"] == 0
    for grupo in ("debitos", "creditos", "extratos"):
        assert resumo["grupos"][grupo]["ko"] == 0, resumo["motivos_ko"]
    # A validation may only fail by the simulation's race (carga.Corrida).
    assert resumo["grupos"]["validacoes"]["ko"] == resumo["ko_da_corrida"], resumo["motivos_ko"]
    # Validation phases: 25 + 1 + 25 + 1 + 1 (client 6) + 5 clients x 14 requests.
    assert resumo["grupos"]["validacoes"]["n"] == 123
    assert resumo["total"] == 123 + len(carga.tempos_de_chegada(1, 220, 3, 2)) + len(
        carga.tempos_de_chegada(1, 110, 3, 2)
    ) + len(carga.tempos_de_chegada(1, 10, 3, 2))
    with open(tmp_path / "carga.json") as f:
        assert json.load(f)["total"] == resumo["total"]
    html = (tmp_path / "relatorio.html").read_text()
    assert "<svg" in html and "<polyline" in html
    # Self-contained: nothing to fetch.
    assert not any(x in html for x in ("src=", "href=", "<link", "@import"))


def test_carga_sozinha_desenha_cpu_e_memoria_de_cada_componente(tmp_path, monkeypatch):
    """carga.py run alone, beside a stack it finds (CREBITO_VAR's), reads that
    stack's processes exporter every second: each component's CPU and memory
    go into registro.json, against compose.yml's limits, and into the report."""
    p = pilha.Pilha()
    try:
        p.iniciar()
        monkeypatch.setenv("CREBITO_VAR", p.var)
        args = ["--url", p.url, "--escala", "0.2", "--rampa", "3", "--platô", "3", "--saida", str(tmp_path)]
        carga.main(args)
        curta = ["--escala", "0.2", "--rampa", "1", "--platô", "1", "--intervalo", "60"]
        nenhum = tmp_path / "nenhum"
        carga.main(["--url", p.url, *curta, "--saida", str(nenhum), "--metricas", "nenhum"])
        # A stack's exporter is read only under load through its own HAProxy.
        outra = tmp_path / "outra"
        carga.main(["--url", f"http://127.0.0.1:{pilha.porta_livre()}", *curta, "--saida", str(outra)])
    finally:
        p.parar()
    with open(tmp_path / "registro.json") as f:
        gravado = json.load(f)
    limites, _ = pilha.orcamento()
    assert gravado["limites"] == {n: list(v) for n, v in limites.items()}
    segundos = gravado["segundos"]
    assert len(segundos) >= 5, segundos
    for componente in pilha.COMPONENTES:
        assert all(0 < s["cgrupo"][componente]["mem_mb"] < limites[componente][1] for s in segundos), componente
    cpu = {c: sum(s["cgrupo"][c]["cpu_ms"] or 0 for s in segundos) for c in pilha.COMPONENTES}
    assert cpu["postgres"] > 0 and cpu["api01"] + cpu["api02"] > 0, cpu
    html = (tmp_path / "relatorio.html").read_text()
    assert 'class="sem-registro"' not in html
    for grafico in ("cpu", "memoria"):
        trecho = html.split(f'id="{grafico}"', 1)[1].split("</svg>", 1)[0]
        assert trecho.count("<polyline") == len(pilha.COMPONENTES), grafico
        for componente in pilha.COMPONENTES:
            assert f">{componente} (" in trecho, (grafico, componente)
    for pasta in (nenhum, outra):
        assert not (pasta / "registro.json").exists(), pasta
        assert 'class="sem-registro"' in (pasta / "relatorio.html").read_text(), pasta


def test_sigterm_para_a_pilha_e_remove_os_cgroups(tmp_path):
    """A tool stopped with SIGTERM mid-run stops its stack and leaves no cgroup behind."""
    aqui = os.path.dirname(os.path.abspath(__file__))
    comando = [sys.executable, os.path.join(aqui, "orcamento.py"), "--rampa", "1", "--platô", "120"]
    ferramenta = subprocess.Popen(
        [*comando, "--saida", str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        var = None
        for linha in ferramenta.stdout:
            achado = re.search(r"iniciando a pilha em (\S+),", linha)
            if achado:
                var = achado[1]
            if "fase 3" in linha:
                break
        assert var is not None
        with open(os.path.join(var, "postgres.pid")) as f:
            postmaster = int(f.read())
        ferramenta.send_signal(signal.SIGTERM)
        assert ferramenta.wait(timeout=60) == 128 + signal.SIGTERM
    finally:
        if ferramenta.poll() is None:
            ferramenta.kill()
    assert not os.path.exists(var)
    assert not os.path.exists(f"/proc/{postmaster}")
    grupo = f"crebito-bench-{ferramenta.pid}"
    assert glob.glob(f"/sys/fs/cgroup/{grupo}") + glob.glob(f"/sys/fs/cgroup/*/{grupo}") == []


@pytest.mark.skipif(os.geteuid() != 0, reason="the CPU quotas are cgroups, writable by root only (CI runs as root)")
@pytest.mark.parametrize(
    "http, casos",
    [(False, ("unico", "citus1", "citus2", "citus2-dono", "citus2-api")), (True, ("unico", "citus1", "citus2"))],
    ids=["driver", "http"],
)
def test_escala_curta_nas_tres_pilhas(http, casos):
    """A short escala.py run, with its own driver and through HTTP: every
    stack and way of picking clients answers without failures, the ratios are
    reported and no stack or cgroup is left."""
    aqui = os.path.dirname(os.path.abspath(__file__))
    escala = os.path.join(aqui, "escala.py")
    comando = [sys.executable, escala, "--contas", "200", "-T", "1", "--rodadas", "1", "-c", "2", "--aquecimento", "1"]
    r = subprocess.run(comando + ["--http"] * http, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    for caso in casos:
        linha = re.search(rf"^rodada 1 {caso}\s+([\d.]+) chamadas/s", r.stdout, re.M)
        assert linha and float(linha[1]) > 0, r.stdout
    assert re.search(rf"{casos[-1]} / citus1, na cota: [\d.]+x", r.stdout)
    assert re.search(r"CPU por chamada, citus2 / unico: [\d.]+x", r.stdout)
    assert not glob.glob("/sys/fs/cgroup/*/crebito-escala-*") + glob.glob("/sys/fs/cgroup/crebito-escala-*")
    # Each stack's data directory was removed with it.
    pastas = re.findall(r"iniciando a pilha em (\S+),", r.stderr)
    assert len(pastas) == 3
    assert not any(os.path.exists(var) for var in pastas)


def test_registro_mostra_a_espera_por_uma_trava_e_a_explica(tmp_path):
    """A POST held behind a row lock shows up in the per-second record as the
    API's session waiting on a lock, and the stall it causes in the latency
    series is attributed to it."""
    import threading
    import urllib.request

    import psycopg
    import registro

    p = pilha.Pilha()
    try:
        p.iniciar()
        gravador = registro.RegistroPorSegundo(p)
        gravador.iniciar()
        fim = time.monotonic() + 2.2
        while time.monotonic() < fim:
            urllib.request.urlopen(f"{p.url}/clientes/2/extrato", timeout=5).read()
        args = p.pg()
        dsn = f"host={args[1]} port={args[3]} dbname=crebito user=postgres"
        with psycopg.connect(dsn) as trava:
            trava.execute("select from crebito.cliente where id = 1 for update")
            corpo = json.dumps({"valor": 1, "tipo": "c", "descricao": "preso"}).encode()
            pedido = urllib.request.Request(f"{p.url}/clientes/1/transacoes", data=corpo, method="POST")
            resposta = []
            t = threading.Thread(target=lambda: resposta.append(urllib.request.urlopen(pedido, timeout=10).status))
            inicio = time.time()
            t.start()
            time.sleep(1.5)
        t.join()
        time.sleep(2.2)
        gravado = gravador.parar()
    finally:
        p.parar()
    assert resposta == [200]
    assert gravado["erros"] == []
    segundos = gravado["segundos"]
    esperando = [s for s in segundos if any(k.startswith("api:Lock:") for k in s.get("esperas", {}))]
    assert esperando, segundos
    assert sum(s.get("sonda", {}).get("n", 0) for s in segundos) >= 30
    com_cpu = [s for s in segundos if "cpu_ms" in s]
    assert any(s["cpu_ms"].get("postgres:sessoes_api", 0) > 0 for s in com_cpu)
    assert any(s["pg"]["wal_bytes"] > 0 and s["pg"]["commits"] > 0 for s in com_cpu)
    # A latency series with the stall at the second the request started.
    s_trava = int(inicio - gravado["inicio_epoch"])
    serie = [
        {"s": s, "req": 10, "ko": 0, "p50": 1, "p75": 1, "p95": 1, "p99": 1, "max": 1500 if s == s_trava else 1}
        for s in range(len(segundos))
    ]
    achados = registro.episodios(serie, gravado)["achados"]
    assert [a["tipo"] for a in achados] == ["pico"]
    assert any(e.startswith("sessões da API em Lock") for e in achados[0]["eventos"]), achados


def test_sinais_de_um_segundo():
    import registro

    calmo = {"maquina_pct": {"steal": 0.5}, "pg": {"segmentos": 5, "wal_flushes": 10, "wal_flush_ms": 1.0}}
    assert registro.sinais(calmo, calmo) == []
    agitado = {
        "estrangulado": {"postgres": {"periodos": 3, "ms": 40.0}},
        "maquina_pct": {"steal": 12.0},
        "sonda": {"n": 10, "fsync_max_ms": 30.0, "fsync_soma_ms": 40.0, "atraso_max_ms": 0.1},
        "pg": {"segmentos": 6, "wal_flushes": 10, "wal_flush_ms": 50.0, "checkpoints": 1, "autovacuums": 1},
        "esperas": {"autovacuum worker:CPU:-": 4, "api:LWLock:WALWrite": 2, "api:Lock:transactionid": 2},
    }
    texto = " | ".join(t for _, t in registro.sinais(agitado, calmo))
    for esperado in (
        "cgroup postgres estrangulado",
        "steal 12.0%",
        "fdatasync da sonda 30.0 ms",
        "flush do WAL 5.0 ms",
        "checkpoint",
        "autovacuum terminou",
        "segmento de WAL novo",
        "autovacuum ativo",
        "sessões da API em Lock:transactionid",
    ):
        assert esperado in texto, texto
    # Two samples of the group commit's queue are ordinary, not an event.
    assert "WALWrite" not in texto


@pytest.mark.skipif(os.geteuid() != 0, reason="the floors run in cgroups, writable by root only (CI runs as root)")
def test_pisos_curtos(tmp_path):
    """Each floor serves a short profile in its cgroup and reports a CPU cost
    per request; the multiples divide a stack run's figures by them."""
    aqui = os.path.dirname(os.path.abspath(__file__))
    comando = [sys.executable, os.path.join(aqui, "pisos.py"), "--rampa", "2", "--platô", "2", "--saida", str(tmp_path)]
    r = subprocess.run(comando, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    with open(tmp_path / "pisos.json") as f:
        medidos = json.load(f)
    esperados = {"haproxy": ["haproxy"], "api": ["haproxy", "api01", "api02"], "postgres": ["postgres"]}
    for nome, componentes in esperados.items():
        assert medidos[nome]["requisicoes"] > 100, medidos
        for c in componentes:
            assert medidos[nome]["cpu_ms_por_requisicao"][c] > 0, medidos
    # The API floor's requests were answered by the workers, not by HAProxy's error pages.
    with open(tmp_path / "api" / "carga.json") as f:
        motivos = json.load(f)["motivos_ko"]
    assert not [m for m in motivos if m.startswith(("status 4", "status 5", "conexão"))], motivos
    assert not glob.glob("/sys/fs/cgroup/*/crebito-pisos-*")
    # A run whose every component used 1 ms of CPU per request.
    orcamento = {"cpu_ms_por_componente": dict.fromkeys(("postgres", "api01", "api02", "haproxy"), 1.0)}
    m = pisos.multiplos(orcamento, medidos)
    assert m["postgres"]["multiplo"] == round(1.0 / medidos["postgres"]["cpu_ms_por_requisicao"]["postgres"], 2)


@pytest.mark.skipif(os.geteuid() != 0, reason="cgroups are writable by root only (CI runs as root)")
def test_pares_curtos_contra_a_propria_arvore(tmp_path):
    """One short pair, this checkout against itself as the baseline: both
    runs are reported, with their record's stalls, and the ratios computed."""
    aqui = os.path.dirname(os.path.abspath(__file__))
    comando = [sys.executable, os.path.join(aqui, "pares.py"), "--base", pilha.RAIZ, "--pares", "1"]
    comando += ["--rampa", "2", "--platô", "2", "--sem-pisos", "--saida", str(tmp_path)]
    r = subprocess.run(comando, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    with open(tmp_path / "pares.json") as f:
        pares = json.load(f)
    for lado in ("arvore", "base"):
        (run,) = pares["runs"][lado]
        assert run["usd"] == 100000 and run["cpu_ms"] > 0, run
    assert len(pares["resumo"]["cpu_ms"]["razoes"]) == 1
    for lado in ("1-arvore", "1-base"):
        with open(tmp_path / lado / "registro.json") as f:
            assert json.load(f)["segundos"]


def test_corrida_some_quando_a_carga_comeca_depois_das_validacoes(tmp_path):
    # Each round starts from the five clients again (the validations expect
    # balance 0), and with the load a second late (a validation takes some
    # 30 ms) no validation meets it.
    resumo = corrida.main(
        ["--vezes", "2", "--workers-citus", "0", "--atraso-da-carga", "1000", "--saida", str(tmp_path)]
    )
    assert resumo == {"unico": {"vezes": 2, "sem_ko": 2, "ko": 0, "ko_da_corrida": 0}}
    with open(tmp_path / "corrida.json") as f:
        assert json.load(f)["resumo"] == resumo
