"""Flame graphs of the stack under the official load: a fresh native stack in
its budget (as orcamento.py), the official load test (carga.py) against it,
py-spy on each API instance and its workers and, where perf works, perf on
PostgreSQL. The flame graphs are written beside the load report and linked
from it; the per-second record (registro.py) is drawn in it too.

    sudo .venv/bin/python bench/perfil.py                 # the full official profile (4 minutes)
    sudo .venv/bin/python bench/perfil.py --curto         # a few seconds
    options: --rampa S --platô S --escala F --taxa HZ (100; 500 with --curto) --sem-nativo, and orcamento.py's

Writes chamas-api01.svg, chamas-api02.svg (py-spy: only the samples that hold
the GIL, so the Python code's own CPU, with native frames) and
chamas-postgres.svg (perf, CPU clock), beside relatorio.html. Profiling slows
the stack: its latencies are not the official figures.
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import chamas
import pilha
import registro
import relatorio

AQUI = os.path.dirname(os.path.abspath(__file__))


def _py_spy():
    exe = os.path.join(pilha.RAIZ, ".venv", "bin", "py-spy")
    return exe if os.path.exists(exe) else shutil.which("py-spy")


class Gravador:
    """A profiler running beside the load until parar(), which stops it with
    SIGINT (both py-spy and perf write their output then) and says whether
    its output file is there."""

    def __init__(self, cmd, destino):
        self.destino = destino
        self.log = open(destino + ".log", "w")
        self.processo = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)

    def parar(self):
        if self.processo.poll() is None:
            self.processo.send_signal(signal.SIGINT)
        try:
            self.processo.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self.processo.kill()
            self.processo.wait()
        self.log.close()
        return os.path.exists(self.destino) and os.path.getsize(self.destino) > 0


def py_spy(pid, destino, taxa, nativo):
    """py-spy on an API instance's master and, through --subprocesses, its workers."""
    cmd = [_py_spy(), "record", "--pid", str(pid), "--subprocesses", "--gil", "--rate", str(taxa)]
    cmd += ["--format", "flamegraph", "--output", destino]
    if nativo:
        cmd.append("--native")  # bjoern's and libpq's C frames, under the Python ones
    return Gravador(cmd, destino)


def perf(pids, destino, taxa):
    """perf on the postmaster and the processes it has now: the API's sessions
    (each worker's, opened at start) and the background processes. perf -p
    does not follow a process forked later (an autovacuum worker)."""
    cmd = ["perf", "record", "-e", "cpu-clock", "-F", str(taxa), "-g", "-p", ",".join(map(str, pids)), "-o", destino]
    return Gravador(cmd, destino)


def papeis_do_banco(p):
    """{pid: role} of the database's processes (registro.papel): the flame
    graph's roots then tell the API's sessions from the background processes
    and from the record's own session."""
    r = {}
    for i, pid in enumerate(pilha.arvore(p.pid("postgres"))):
        try:
            with open(f"/proc/{pid}/cmdline") as f:
                cmd = f.read().replace("\0", " ").strip()
        except OSError:
            continue
        r[pid] = registro.papel("postgres", cmd, i == 0)
    return r


def chamas_do_perf(dados, destino, papeis):
    r = subprocess.run(["perf", "script", "-i", dados], capture_output=True, text=True)
    pilhas = chamas.colapsar_perf(r.stdout, papeis)
    if not pilhas:
        return f"perf script sem amostras: {r.stderr[-300:]}"
    with open(destino, "w") as f:
        f.write(chamas.svg(pilhas, "PostgreSQL: CPU por pilha de chamadas (perf)"))
    return None


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rampa", type=float, default=120)
    ap.add_argument("--platô", "--plato", dest="plato", type=float, default=120)
    ap.add_argument("--curto", "--short", action="store_true", help="a few seconds: --rampa 3 --platô 3")
    ap.add_argument("--escala", type=float, default=1.0)
    ap.add_argument("--taxa", type=int, default=None, help="samples per second of each profiler (100; --curto 500)")
    ap.add_argument("--sem-nativo", action="store_true", help="py-spy without native (C) frames")
    pilha.opcoes_do_orcamento(ap)
    args = ap.parse_args(argv)
    if args.curto:
        args.rampa, args.plato = 3, 3
    # The workers hold the GIL for a few % of the time: a few seconds need a
    # faster sampling to get a readable graph.
    args.taxa = args.taxa or (500 if args.curto else 100)
    if not _py_spy():
        sys.exit("perfil: py-spy não encontrado (bash stack/install.sh instala o de requirements-dev.txt)")
    saida = pilha.pasta_de_saida(args, "perfil")
    erros = {}

    with pilha.PilhaNoOrcamento(args.memoria_total, args.compose, args.pg_conf, args.workers, saida, args.arvore) as pn:
        p = pn.pilha
        perfis = {
            api: py_spy(p.pid(api), os.path.join(saida, f"chamas-{api}.svg"), args.taxa, not args.sem_nativo)
            for api in pilha.PYTHON
        }
        dados_perf = os.path.join(saida, "perf-postgres.data")
        if shutil.which("perf"):
            perfis["postgres"] = perf(pilha.arvore(p.pid("postgres")), dados_perf, args.taxa)
        else:
            erros["postgres"] = "perf não instalado"
        # After perf: the record's own sessions, forked later, stay out of its graph.
        gravador = registro.RegistroPorSegundo(p, pn.cgrupos)
        gravador.iniciar()
        try:
            time.sleep(1)  # py-spy attaches to every worker before the first request
            cmd = [sys.executable, os.path.join(AQUI, "carga.py"), "--url", p.url, "--saida", saida]
            cmd += ["--rampa", str(args.rampa), "--platô", str(args.plato), "--escala", str(args.escala)]
            rc = subprocess.run(cmd).returncode
            papeis = papeis_do_banco(p)
        finally:
            # Stopped before the stack, also on Ctrl-C: each writes what it sampled.
            for nome, g in perfis.items():
                if not g.parar():
                    with open(g.log.name) as f:
                        erros[nome] = f.read()[-500:]
            gravado = gravador.parar()

    if "postgres" in perfis and "postgres" not in erros:
        erro = chamas_do_perf(dados_perf, os.path.join(saida, "chamas-postgres.svg"), papeis)
        if erro:
            erros["postgres"] = erro
    with open(os.path.join(saida, "carga.json")) as f:
        carga = json.load(f)
    gravado["deslocamento_s"] = round(carga["inicio_epoch"] - gravado["inicio_epoch"], 3)
    gravado["inicio_fase3_s"] = carga["inicio_fase3_s"]
    pilha.salvar_json(os.path.join(saida, "registro.json"), gravado)
    relatorio.escrever(saida, carga, gravado)
    for nome in (*pilha.PYTHON, "postgres"):
        svg = os.path.join(saida, f"chamas-{nome}.svg")
        print(f"{nome}: {svg}" if os.path.exists(svg) else f"{nome}: sem gráfico de chamas ({erros.get(nome, '?')})")
    print(f"relatório em {saida}/relatorio.html")
    return rc


if __name__ == "__main__":
    sys.exit(main())
