"""Scale of the distributed topology, as ratios measured side by side.

Three stacks at once, started by the launcher: single-node, Citus with one
worker and Citus with two, each seeded with the same many clients
(crebito.semear) and each database node (the one cluster, the coordinator,
every worker) confined to the same CPU quota in a cgroup of its own. pgbench
runs the official mix (debito : credito : extrato = 220 : 110 : 10) over
random clients 1..N+5 straight against the nodes the API instances talk to:
the one cluster, the one worker, or both workers (one pgbench each, as api01
and api02 each have theirs). No HTTP, Python or HAProxy in the way: the
database nodes are what is measured. The stacks take turns, round after
round, so the noise of the shared machine falls on all of them alike.

Reports per stack the TPS and the CPU ms per transaction of all its database
nodes (their cgroups' counters), with the medians of the rounds and the
ratios two workers : one worker and one worker : single-node.

    .venv/bin/python bench/escala.py [--contas 100000] [--cpus 0.5] [-T 20] [-c 8] [--rodadas 3]
"""

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile

import pilha

AQUI = os.path.dirname(os.path.abspath(__file__))
TOPOLOGIAS = {"unico": 0, "citus1": 1, "citus2": 2}
MIX = (("debito.sql", 220), ("credito.sql", 110), ("extrato.sql", 10))


def scripts(contas, pasta):
    """The mix's pgbench scripts, drawing the client from all the accounts."""
    args = []
    for nome, peso in MIX:
        with open(os.path.join(AQUI, nome)) as f:
            texto = f.read()
        assert "random(1, 5)" in texto, nome
        destino = os.path.join(pasta, nome)
        with open(destino, "w") as f:
            f.write(texto.replace("random(1, 5)", f"random(1, {contas + 5})"))
        args += ["-f", f"{destino}@{peso}"]
    return args


def alvos(p):
    """The nodes the API instances would use: the workers, or the one cluster."""
    nos = p.nos()
    return [n["nome"] for n in nos if n["papel"] == "worker"] or [nos[0]["nome"]]


def grupo(topologia, no):
    return f"{topologia}-{no}"


def rodar(nome, p, cg, mix, segundos, clientes):
    """pgbench against each target node at once; (TPS, CPU ms per transaction of every node)."""
    nos = [n["nome"] for n in p.nos()]
    antes = {no: cg.cpu_s(grupo(nome, no)) for no in nos}
    procs = [
        subprocess.Popen(
            ["pgbench", "-n", "-M", "prepared", *mix, "-T", str(segundos), "-c", str(clientes), "-j", "1", *p.pg(alvo)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for alvo in alvos(p)
    ]
    tps, transacoes = 0.0, 0
    for proc in procs:
        saida, erro = proc.communicate()
        if proc.returncode != 0:
            sys.exit(f"pgbench falhou em {nome}:\n{erro}")
        tps += float(re.search(r"tps = ([\d.]+)", saida).group(1))
        transacoes += int(re.search(r"number of transactions actually processed: (\d+)", saida).group(1))
        falhas = re.search(r"number of failed transactions: (\d+)", saida)
        if falhas and int(falhas.group(1)):
            sys.exit(f"{nome}: {falhas.group(1)} transações falharam")
    cpu = sum(cg.cpu_s(grupo(nome, no)) - antes[no] for no in nos)
    return tps, 1000 * cpu / transacoes


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--contas", type=int, default=100000, help="clients seeded besides the five")
    ap.add_argument("--cpus", type=float, default=0.5, help="CPU quota of each database node")
    ap.add_argument("-T", "--segundos", type=int, default=20)
    ap.add_argument("-c", "--clientes", type=int, default=8, help="pgbench clients per target node")
    ap.add_argument("--rodadas", type=int, default=3)
    args = ap.parse_args()

    pilhas = {nome: pilha.Pilha(citus_workers=w) for nome, w in TOPOLOGIAS.items()}
    cg = None
    try:
        for nome, p in pilhas.items():
            pilha.log(f"{nome}: iniciando")
            p.iniciar(limite=180)
            subprocess.run(
                ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", *p.pg(), "-c", f"select crebito.semear({args.contas})"]
                + ["-c", "vacuum analyze"],
                check=True,
                stdout=subprocess.DEVNULL,
            )
        limites = {grupo(nome, n["nome"]): (args.cpus, 2048) for nome, p in pilhas.items() for n in p.nos()}
        cg = pilha.Cgrupos(limites, nome="crebito-escala")
        if cg.modo is None:
            sys.exit("sem cgroups graváveis não há cota de CPU a comparar")
        cg.criar()
        tabela = pilha.processos()
        for nome, p in pilhas.items():
            for n in p.nos():
                cg.mover(grupo(nome, n["nome"]), pilha.arvore(p.pid(n["nome"]), tabela))
        with tempfile.TemporaryDirectory(prefix="crebito-escala-") as pasta:
            mix = scripts(args.contas, pasta)
            for nome, p in pilhas.items():
                rodar(nome, p, cg, mix, 5, args.clientes)  # warm-up: caches, connections, plans
            medidas = {nome: [] for nome in pilhas}
            ordem = list(pilhas)
            for r in range(args.rodadas):
                for nome in ordem:
                    tps, ms = rodar(nome, pilhas[nome], cg, mix, args.segundos, args.clientes)
                    medidas[nome].append((tps, ms))
                    print(f"rodada {r + 1} {nome:<7} {tps:>8.1f} TPS  {ms:.3f} ms de CPU por transação", flush=True)
                ordem = ordem[1:] + ordem[:1]
    finally:
        for p in pilhas.values():
            p.parar()
        if cg is not None:
            cg.remover()

    med = {
        nome: (statistics.median(t for t, _ in m), statistics.median(c for _, c in m)) for nome, m in medidas.items()
    }
    print(
        f"\n{args.contas} contas, {args.cpus} CPU por nó, pgbench -c {args.clientes} por nó-alvo, "
        f"{args.segundos}s x {args.rodadas} rodadas (medianas):"
    )
    for nome, (tps, ms) in med.items():
        print(f"  {nome:<7} {tps:>8.1f} TPS  {ms:.3f} ms de CPU por transação (todos os nós)")
    razoes = [m2 / m1 for (m1, _), (m2, _) in zip(medidas["citus1"], medidas["citus2"], strict=True)]
    por_rodada = ", ".join(f"{x:.2f}" for x in razoes)
    print(f"  2 workers / 1 worker: {med['citus2'][0] / med['citus1'][0]:.2f}x (por rodada: {por_rodada})")
    print(f"  1 worker / nó único: {med['citus1'][0] / med['unico'][0]:.2f}x")
    print(f"  CPU por transação, citus2 / nó único: {med['citus2'][1] / med['unico'][1]:.2f}x")


if __name__ == "__main__":
    main()
