"""The ceiling: PostgreSQL alone running the official mix as direct calls of
the API functions (debito.sql : credito.sql : extrato.sql = 220 : 110 : 10),
with no HTTP, no Python and no HAProxy in the way.

    .venv/bin/python bench/pgbench.py [-T 30] [-c 4] [--var $CREBITO_VAR]
    .venv/bin/python bench/pgbench.py --nova [--orcamento]   # a fresh stack (in its cgroups)

Prints TPS, latency average and p99 (from pgbench's per-transaction log) and
the database's CPU per transaction: utime+stime of the postmaster's process
tree from /proc (exited backends count through the postmaster's cutime), or
the cgroup's counter with `--orcamento`. pgbench's own CPU is reported apart.
"""

import argparse
import glob
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile

import pilha

AQUI = os.path.dirname(os.path.abspath(__file__))


def rodar(pg_args, segundos, clientes, threads, postmaster, cgrupos=None, taxa=None):
    """One pgbench run of the mix; `taxa` limits it to that many calls per second."""
    log_dir = tempfile.mkdtemp(prefix="crebito-pgbench-")
    cmd = [
        "pgbench",
        "-M",
        "prepared",
        "-n",
        "-f",
        os.path.join(AQUI, "debito.sql") + "@220",
        "-f",
        os.path.join(AQUI, "credito.sql") + "@110",
        "-f",
        os.path.join(AQUI, "extrato.sql") + "@10",
        "-T",
        str(segundos),
        "-c",
        str(clientes),
        "-j",
        str(threads),
        "-l",
        "--log-prefix",
        os.path.join(log_dir, "tx"),
        *pg_args,
    ]
    if taxa:
        cmd[cmd.index("-T") : cmd.index("-T")] = ["-R", f"{taxa:.1f}"]
    if cgrupos is not None:
        cgrupos.zerar_picos()
    cpu0 = pilha.cpu_arvore(postmaster)
    filhos0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, cwd=log_dir)
        filhos1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu1 = pilha.cpu_arvore(postmaster)
        if r.returncode != 0:
            sys.exit(f"pgbench falhou:\n{r.stderr}")
        latencias = []
        for arquivo in glob.glob(os.path.join(log_dir, "tx*")):
            with open(arquivo) as f:
                for linha in f:
                    latencias.append(int(linha.split()[2]))  # microseconds
    finally:
        shutil.rmtree(log_dir, ignore_errors=True)
    latencias.sort()
    tps = float(re.search(r"tps = ([\d.]+)", r.stdout).group(1))
    transacoes = int(re.search(r"number of transactions actually processed: (\d+)", r.stdout).group(1))
    falhas = re.search(r"number of failed transactions: (\d+)", r.stdout)
    cpu_db = cpu1 - cpu0
    if cgrupos is not None and cgrupos.modo:
        cpu_db = cgrupos.cpu_s("postgres")
    cpu_pgbench = (filhos1.ru_utime - filhos0.ru_utime) + (filhos1.ru_stime - filhos0.ru_stime)
    return {
        "clientes": clientes,
        "segundos": segundos,
        "transacoes": transacoes,
        "falhas": int(falhas.group(1)) if falhas else None,
        "tps": round(tps, 1),
        "latencia_media_ms": round(sum(latencias) / len(latencias) / 1000, 3) if latencias else None,
        "latencia_p99_ms": round(latencias[int(0.99 * (len(latencias) - 1))] / 1000, 3) if latencias else None,
        "latencia_max_ms": round(latencias[-1] / 1000, 3) if latencias else None,
        "cpu_s_banco": round(cpu_db, 2),
        "cpu_ms_por_transacao": round(1000 * cpu_db / transacoes, 4) if transacoes else None,
        "cpus_medias_do_banco": round(cpu_db / segundos, 3),
        "cpu_s_pgbench": round(cpu_pgbench, 2),
    }


def imprimir(r):
    print(
        f"c={r['clientes']:<3} {r['tps']:>8.1f} TPS  média {r['latencia_media_ms']} ms  p99 {r['latencia_p99_ms']} ms"
        f"  max {r['latencia_max_ms']} ms  falhas {r['falhas']}  banco {r['cpu_s_banco']} CPU s"
        f" = {r['cpu_ms_por_transacao']} ms/transação ({r['cpus_medias_do_banco']} CPUs)"
        f"  pgbench {r['cpu_s_pgbench']} CPU s",
        flush=True,
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-T", "--segundos", type=int, default=30)
    ap.add_argument("-c", "--clientes", default="4", help="clients; a comma list runs one after another (1,2,4,8)")
    ap.add_argument("-j", "--threads", type=int, default=1)
    ap.add_argument("--var", default=os.environ.get("CREBITO_VAR"), help="data directory of a running stack")
    ap.add_argument("--nova", action="store_true", help="start a fresh stack for the run (and stop it after)")
    ap.add_argument("--orcamento", action="store_true", help="with --nova: each component in its budget cgroup")
    ap.add_argument("--memoria-total", type=float, default=None)
    args = ap.parse_args()
    clientes = [int(c) for c in args.clientes.split(",")]

    if args.nova:
        contexto = pilha.PilhaNoOrcamento(args.memoria_total) if args.orcamento else None
        p = contexto.pilha if contexto else pilha.Pilha()
        try:
            if contexto:
                contexto.__enter__()
            else:
                p.iniciar()
            cg = contexto.cgrupos if contexto else None
            for c in clientes:
                imprimir(rodar(p.pg(), args.segundos, c, min(args.threads, c), p.pid("postgres"), cg))
        finally:
            if contexto:
                contexto.__exit__(None, None, None)
            else:
                p.parar()
        return
    if not args.var:
        sys.exit("diga onde está a pilha: --var DIR (ou CREBITO_VAR), ou use --nova")
    with open(os.path.join(args.var, "postgres.pid")) as f:
        postmaster = int(f.read())
    pg_args = ["-h", os.path.join(args.var, "pgrun"), "-p", "5432", "-U", "postgres", "crebito"]
    for c in clientes:
        imprimir(rodar(pg_args, args.segundos, c, min(args.threads, c), postmaster))


if __name__ == "__main__":
    main()
