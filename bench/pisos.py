"""The floors: what each component costs per request doing its own job alone,
under the same load profile as a stack run, each in its budget cgroup.

    sudo .venv/bin/python bench/pisos.py [--rampa 120 --platô 120] [--saida DIR]

- haproxy: HAProxy (haproxy.cfg's global and defaults) answering every request
  itself (bench/piso-haproxy.cfg), driven by carga.py;
- api: HAProxy in front of the API instances' workers (server.py, socket per
  worker, as natively) that answer without a database (bench/eco.py), driven
  by carga.py;
- postgres: PostgreSQL alone running the same calls with pgbench (the official
  mix debito : credito : extrato = 220 : 110 : 10, six connections like the
  API's six workers), at the profile's average rate over the ramp and then at
  its plateau rate, so it makes as many calls as carga.py sends requests.

Prints and saves (pisos.json) each floor's CPU milliseconds per request by
component. orcamento.py --pisos pisos.json then reports each component of a
stack run as a multiple of its floor.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import carga
import pgbench
import pilha

AQUI = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(pilha.RAIZ, "stack"))
import launcher  # noqa: E402

# A request of the official mix, by scenario's plateau rate (users/s).
MIX = {"debitos": 220, "creditos": 110, "extratos": 10}


def rodar_carga(url, args, saida):
    cmd = [sys.executable, os.path.join(AQUI, "carga.py"), "--url", url, "--rampa", str(args.rampa)]
    cmd += ["--platô", str(args.plato), "--saida", saida]
    subprocess.run(cmd, stdout=subprocess.DEVNULL, check=False)
    with open(os.path.join(saida, "carga.json")) as f:
        return json.load(f)["total"]


class Processos:
    """Processes started here, each in its component's cgroup; all stopped on exit."""

    def __init__(self, componentes):
        limites, _ = pilha.orcamento()
        self.cgrupos = pilha.Cgrupos({c: limites[c] for c in componentes}, nome="crebito-pisos")
        self.dir = tempfile.mkdtemp(prefix="crebito-pisos-")
        self.procs = {}

    def __enter__(self):
        self.cgrupos.criar()
        return self

    def iniciar(self, componente, cmd, env):
        proc = subprocess.Popen(cmd, env=dict(os.environ, **env), stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        self.procs[componente] = proc
        self.cgrupos.mover(componente, [proc.pid])
        return proc

    def confinar(self):
        tabela = pilha.processos()
        for componente, proc in self.procs.items():
            self.cgrupos.mover(componente, pilha.arvore(proc.pid, tabela))

    def __exit__(self, *exc):
        for proc in self.procs.values():
            proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.cgrupos.remover()
        shutil.rmtree(self.dir, ignore_errors=True)


def haproxy_cmd(*extra):
    return ["haproxy", "-db", "-f", os.path.join(pilha.RAIZ, "haproxy.cfg"), *extra]


def esperar(porta):
    if not launcher.esperar_200(porta):
        raise RuntimeError(f"127.0.0.1:{porta} não respondeu")


def por_requisicao(cgrupos, requisicoes):
    return {c: round(1000 * cgrupos.cpu_s(c) / requisicoes, 4) for c in cgrupos.limites}


def piso_haproxy(args, saida):
    with Processos(["haproxy"]) as p:
        porta = pilha.porta_livre()
        # haproxy.cfg's own frontend and servers listen on and point at nothing.
        env = {"CREBITO_BIND": os.path.join(p.dir, "ninguem.sock"), "CREBITO_PISO_BIND": f"127.0.0.1:{porta}"}
        env.update({f"CREBITO_API0{i}_1": os.path.join(p.dir, f"api0{i}.sock") for i in (1, 2)})
        p.iniciar("haproxy", haproxy_cmd("-f", os.path.join(AQUI, "piso-haproxy.cfg")), env)
        esperar(porta)
        url = f"http://127.0.0.1:{porta}"
        p.cgrupos.zerar_picos()
        n = rodar_carga(url, args, os.path.join(saida, "haproxy"))
        return {"requisicoes": n, "cpu_ms_por_requisicao": por_requisicao(p.cgrupos, n)}


def piso_api(args, saida):
    workers = args.workers
    with Processos(["haproxy", "api01", "api02"]) as p:
        porta = pilha.porta_livre()
        env = {"CREBITO_BIND": f"127.0.0.1:{porta}"}
        for inst in ("api01", "api02"):
            p.iniciar(
                inst,
                [sys.executable, os.path.join(AQUI, "eco.py")],
                {"CREBITO_LISTEN": f"unix:{p.dir}/{inst}-{{worker}}.sock", "CREBITO_WORKERS": str(workers)},
            )
            env.update({f"CREBITO_{inst.upper()}_{w}": f"{p.dir}/{inst}-{w}.sock" for w in range(1, workers + 1)})
        # HAProxy once every worker accepts, as the launcher starts it: a worker
        # still starting would be answered 503 for by HAProxy, not by itself.
        sockets = [v for k, v in env.items() if k.startswith("CREBITO_API")]
        fim = time.monotonic() + 30
        while not all(map(launcher.Stack._aceita, sockets)) and time.monotonic() < fim:
            time.sleep(0.01)
        p.iniciar("haproxy", haproxy_cmd(), env)
        esperar(porta)
        url = f"http://127.0.0.1:{porta}"
        p.confinar()
        p.cgrupos.zerar_picos()
        n = rodar_carga(url, args, os.path.join(saida, "api"))
        return {"requisicoes": n, "cpu_ms_por_requisicao": por_requisicao(p.cgrupos, n)}


def piso_postgres(args, saida):
    """pgbench at the ramp's average rate for the ramp, then at the plateau's."""
    n_rampa = sum(len(carga.tempos_de_chegada(1, pico, args.rampa, 0)) for pico in MIX.values())
    pico = sum(MIX.values())
    fases = [(n_rampa / args.rampa, args.rampa), (pico, args.plato)]
    with pilha.PilhaNoOrcamento(saida=None) as pn:
        p = pn.pilha
        transacoes, cpu_s = 0, 0.0
        for taxa, segundos in fases:
            r = pgbench.rodar(p.pg(), int(segundos), 6, 2, p.pid("postgres"), pn.cgrupos, taxa=taxa)
            transacoes += r["transacoes"]
            cpu_s += r["cpu_s_banco"]
    return {"requisicoes": transacoes, "cpu_ms_por_requisicao": {"postgres": round(1000 * cpu_s / transacoes, 4)}}


PISOS = {"haproxy": piso_haproxy, "api": piso_api, "postgres": piso_postgres}


def multiplos(orcamento, pisos):
    """Each component's CPU per request in a stack run (orcamento.json) as a
    multiple of its floor: HAProxy of the HAProxy floor, the API instances of
    the API floor's, PostgreSQL of pgbench's."""
    ms = orcamento["cpu_ms_por_componente"]
    piso_api_ms = sum(pisos["api"]["cpu_ms_por_requisicao"][i] for i in ("api01", "api02"))
    linhas = {
        "haproxy": (ms["haproxy"], pisos["haproxy"]["cpu_ms_por_requisicao"]["haproxy"]),
        "api": (ms["api01"] + ms["api02"], piso_api_ms),
        "postgres": (ms["postgres"], pisos["postgres"]["cpu_ms_por_requisicao"]["postgres"]),
    }
    return {
        nome: {"ms": round(a, 4), "piso_ms": round(b, 4), "multiplo": round(a / b, 2) if b else None}
        for nome, (a, b) in linhas.items()
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rampa", type=float, default=120)
    ap.add_argument("--platô", "--plato", dest="plato", type=float, default=120)
    ap.add_argument("--workers", type=int, default=3, help="API workers per instance (the API floor)")
    ap.add_argument("--so", default=",".join(PISOS), help="which floors, comma-separated")
    ap.add_argument("--saida", default=None)
    args = ap.parse_args()
    saida = pilha.pasta_de_saida(args, "pisos")
    resultado = {"parametros": {"rampa": args.rampa, "plato": args.plato, "workers": args.workers}}
    for nome in args.so.split(","):
        pilha.log(f"piso {nome}")
        resultado[nome] = PISOS[nome](args, saida)
        print(f"piso {nome}: {resultado[nome]['requisicoes']} requisições,", end=" ")
        print(", ".join(f"{c} {v} ms" for c, v in resultado[nome]["cpu_ms_por_requisicao"].items()), flush=True)
    pilha.salvar_json(os.path.join(saida, "pisos.json"), resultado)
    print(f"figuras em {saida}/pisos.json")


if __name__ == "__main__":
    main()
