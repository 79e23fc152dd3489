"""The high-availability topology (`make ha`) beside single-node, under the
official profile (carga.py), alternated round by round.

    sudo .venv/bin/python bench/ha.py                      # 3 rounds, the full profile
    sudo .venv/bin/python bench/ha.py --rampa 30 --platô 30 --rodadas 1

HA runs outside the challenge's budget (etcd, two PostgreSQL nodes and their
Patroni), so both stacks run here as they run, with no cgroup, and each
process tree the launcher started (one pid file each) is measured from /proc.
Per run: CPU per request, by process and in all; p99 and max; the commit
latency that synchronous replication adds, two ways:
- under load, the primary's pg_stat_replication.flush_lag (from the local
  flush to the standby's flush report), sampled every half second;
- idle, after the load: sequential POSTs on one keep-alive connection, so
  each write's latency is one commit with nothing queued in front of it.
Both stacks must end with an empty api.auditoria().
"""

import argparse
import glob
import http.client
import json
import os
import statistics
import subprocess
import sys
import threading
import time

import pilha

AQUI = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(pilha.RAIZ, "stack"))
import patroni  # noqa: E402
import topologia  # noqa: E402

FLUSH_LAG = (
    "select coalesce(extract(epoch from flush_lag) * 1000, -1) from pg_stat_replication where sync_state = 'sync'"
)


def cpu_por_processo(p):
    """{name: CPU seconds} of every process the launcher started (one pid file
    each), with the tree of the postmaster a Patroni runs: Patroni detaches it."""
    tabela = pilha.processos()
    raizes = {}
    for arquivo in glob.glob(os.path.join(p.var, "*.pid")):
        with open(arquivo) as f:
            raizes[os.path.basename(arquivo)[:-4]] = [int(f.read())]
    for no in topologia.ler(p.var):
        try:
            with open(os.path.join(no.pgdata, "postmaster.pid")) as f:
                postmaster = int(f.readline())
        except (OSError, ValueError):
            continue
        if postmaster not in pilha.arvore(raizes[no.nome][0], tabela):
            raizes[no.nome].append(postmaster)
    return {nome: sum(pilha.cpu_arvore(r, tabela) for r in rs) for nome, rs in raizes.items()}


def psql(p, no, sql):
    r = subprocess.run(["psql", "-X", "-A", "-t", *p.pg(no.nome), "-c", sql], capture_output=True, text=True)
    return r.stdout.strip() if r.returncode == 0 else None


def primario(p):
    nos = topologia.ler(p.var)
    return patroni.primario(nos) if topologia.ha(nos) else nos[0]


def esperar_standby_sincrono(p, limite=90):
    fim = time.monotonic() + limite
    while time.monotonic() < fim:
        no = primario(p)
        if no is not None and psql(p, no, FLUSH_LAG):
            return
        time.sleep(0.5)
    raise RuntimeError(f"no synchronous standby within {limite}s")


class AtrasoDoStandby(threading.Thread):
    """flush_lag of the synchronous standby, in ms, every half second."""

    def __init__(self, p):
        super().__init__(daemon=True)
        self.p, self.parar, self.ms = p, threading.Event(), []
        self.no = primario(p)

    def run(self):
        while not self.parar.wait(0.5):
            valor = psql(self.p, self.no, FLUSH_LAG)
            if valor and float(valor) >= 0:
                self.ms.append(float(valor))


def sonda_ociosa(p, n):
    """Latencies (ms) of n sequential POSTs, one at a time, on one connection."""
    conn = http.client.HTTPConnection("127.0.0.1", p.porta, timeout=10)
    ms = []
    for i in range(n):
        corpo = json.dumps({"valor": 1, "tipo": "c" if i % 2 else "d", "descricao": "sonda"})
        t0 = time.perf_counter()
        conn.request("POST", f"/clientes/{i % 5 + 1}/transacoes", corpo, {"Content-Type": "application/json"})
        resposta = conn.getresponse()
        resposta.read()
        ms.append(1000 * (time.perf_counter() - t0))
        if resposta.status not in (200, 422):
            raise RuntimeError(f"sonda: {resposta.status}")
    conn.close()
    return sorted(ms)


def auditoria(p):
    env = dict(os.environ, CREBITO_VAR=p.var)
    cmd = [sys.executable, os.path.join(pilha.RAIZ, "stack", "launcher.py"), "--auditoria"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    return r.returncode, r.stdout.count("\n")


def rodada(ha, args, saida):
    p = pilha.Pilha(ha=ha)
    try:
        p.iniciar(limite=120)
        if ha:
            esperar_standby_sincrono(p)
        atraso = AtrasoDoStandby(p) if ha else None
        cpu0 = cpu_por_processo(p)
        if atraso:
            atraso.start()
        carga_saida = os.path.join(saida, "carga")
        cmd = [sys.executable, os.path.join(AQUI, "carga.py"), "--url", p.url, "--saida", carga_saida]
        subprocess.run([*cmd, "--rampa", str(args.rampa), "--platô", str(args.plato)], stdout=subprocess.DEVNULL)
        cpu1 = cpu_por_processo(p)
        if atraso:
            atraso.parar.set()
            atraso.join()
        with open(os.path.join(carga_saida, "carga.json")) as f:
            carga = json.load(f)
        sonda = sonda_ociosa(p, args.sonda)
        rc, violacoes = auditoria(p)
    finally:
        p.parar(os.path.join(saida, "pilha.log"))
    n = carga["total"]
    cpu = {nome: round(1000 * (cpu1[nome] - cpu0.get(nome, 0)) / n, 4) for nome in sorted(cpu1)}
    return {
        "requisicoes": n,
        "usd": carga["pontuacao"]["usd"],
        "ko": carga["ko"],
        "ms": carga["grupos"]["all"]["ms"],
        "cpu_ms_por_requisicao": round(sum(cpu.values()), 4),
        "cpu_ms_por_processo": cpu,
        "flush_lag_ms": (
            {"mediana": round(statistics.median(atraso.ms), 3), "max": round(max(atraso.ms), 3), "n": len(atraso.ms)}
            if atraso and atraso.ms
            else None
        ),
        "sonda_ms": {"p50": round(statistics.median(sonda), 3), "p99": round(sonda[int(0.99 * (len(sonda) - 1))], 3)},
        "auditoria": {"saida": rc, "violacoes": violacoes},
    }


def linha(nome, r):
    lag = r["flush_lag_ms"]
    return (
        f"{nome:<6} USD {r['usd']:>9.2f} KO {r['ko']:>3}  p99 {r['ms']['p99']:>3} ms  max {r['ms']['max']:>4} ms"
        f"  CPU {r['cpu_ms_por_requisicao']:.4f} ms/req ("
        + ", ".join(f"{n} {v:.4f}" for n, v in r["cpu_ms_por_processo"].items())
        + f")  POST ocioso p50 {r['sonda_ms']['p50']:.2f} ms"
        + (f"  flush_lag mediana {lag['mediana']:.2f} ms, max {lag['max']:.2f} ms" if lag else "")
        + f"  auditoria {r['auditoria']['saida']}"
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rampa", type=float, default=120)
    ap.add_argument("--platô", "--plato", dest="plato", type=float, default=120)
    ap.add_argument("--rodadas", type=int, default=3)
    ap.add_argument("--sonda", type=int, default=400, help="sequential POSTs after the load (idle commit latency)")
    ap.add_argument("--saida", default=None, help="folder for the figures (default: bench/results/ha-<date>)")
    args = ap.parse_args()
    saida = pilha.pasta_de_saida(args, "ha")
    rodadas = []
    for n in range(args.rodadas):
        r = {}
        # Alternated, and each round in the other order, so drift falls on both.
        for nome in ("unico", "ha") if n % 2 == 0 else ("ha", "unico"):
            pasta = os.path.join(saida, f"{n + 1}-{nome}")
            os.makedirs(pasta, exist_ok=True)
            pilha.log(f"rodada {n + 1}: {nome}")
            r[nome] = rodada(nome == "ha", args, pasta)
            print(f"rodada {n + 1}: {linha(nome, r[nome])}", flush=True)
        rodadas.append(r)
    pilha.salvar_json(os.path.join(saida, "ha.json"), {"args": vars(args), "rodadas": rodadas})

    def mediana(f):
        return statistics.median(f(r) for r in rodadas)

    print()
    print(
        f"mediana de {len(rodadas)} pares: CPU ha/unico"
        f" {mediana(lambda r: r['ha']['cpu_ms_por_requisicao'] / r['unico']['cpu_ms_por_requisicao']):.2f}"
        f" ({mediana(lambda r: r['ha']['cpu_ms_por_requisicao']):.4f} / "
        f"{mediana(lambda r: r['unico']['cpu_ms_por_requisicao']):.4f} ms/req);"
        f" p99 {mediana(lambda r: r['ha']['ms']['p99'])} / {mediana(lambda r: r['unico']['ms']['p99'])} ms;"
        f" max {mediana(lambda r: r['ha']['ms']['max'])} / {mediana(lambda r: r['unico']['ms']['max'])} ms;"
        f" POST ocioso p50 +{mediana(lambda r: r['ha']['sonda_ms']['p50'] - r['unico']['sonda_ms']['p50']):.2f} ms"
    )
    print(f"figuras em {saida}/ha.json")
    return 0 if all(r[t]["auditoria"]["saida"] == 0 for r in rodadas for t in r) else 1


if __name__ == "__main__":
    sys.exit(main())
