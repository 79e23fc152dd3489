"""Scale of the distributed topology, as ratios measured side by side.

Three stacks at once, started by the launcher: single-node, Citus with one
worker and Citus with two, each seeded with the same many clients
(crebito.semear) and each database node (the one cluster, the coordinator,
every worker) confined to the same CPU quota in a cgroup of its own. A load
driver (processes calling server.py's prepared statements over libpq: on a
cluster whose calls go to their client's node, the _local ones) runs
the official mix (debito : credito : extrato = 220 : 110 : 10) straight
against the nodes the API instances talk to: the one cluster, the one
worker, or both workers (`-c` connections to each). No HTTP or HAProxy in
the way: the database nodes are what is measured, and the driver runs
outside their quota. Three ways of picking the client of a call on a
cluster:
- `qualquer`: any client, on any worker, through Citus (api.transacao), as
  the API sent them before it routed: a call for a client of the other
  worker is passed to it whole (delegation);
- `dono`: each worker gets only the clients it holds, as a router that knows
  the shard map would send them;
- `api`: any client, each call sent by the code server.py routes with
  (roteamento.py: the map from api.shards(), hashint4 in Python), every
  driver connection holding one session per worker.
With `--http`, the load goes through the stack a user of `make citus` gets
instead: wrk with the official mix (bench/mix.lua, any seeded client) against
HAProxy and both API instances, which route each call themselves; only the
database nodes are confined, the API and HAProxy run free, so the nodes are
what saturates.
With `--base DIR` (another checkout, e.g. a worktree of the commit to compare
with), a Citus stack of two workers started by DIR's launcher, server and
schema takes its turn beside them, as `base`.
The stacks take turns, round after round, so the noise of the shared machine
falls on all of them alike.

Reports per stack and mode the calls per second and the CPU ms per call of all
its database nodes (their cgroups' counters), the medians of the rounds, and
the ratios two workers : one worker and one worker : single-node, each the
median of the rounds' own ratios.

    .venv/bin/python bench/escala.py [--contas 100000] [--cpus 0.25] [-T 20] [-c 16] [--rodadas 3] [--http]
                                     [--base DIR]
"""

import argparse
import multiprocessing
import random
import statistics
import subprocess
import sys
import time

import pilha
import saturacao
from psycopg import pq

sys.path.insert(0, pilha.RAIZ)
import roteamento  # noqa: E402
import server  # noqa: E402

# (stack, Citus workers, how a call's client is picked). One worker holds
# every client: its calls go as the API's routing sends them.
CASOS = (
    ("unico", 0, "qualquer"),
    ("citus1", 1, "api"),
    ("citus2", 2, "qualquer"),
    ("citus2-dono", 2, "dono"),
    ("citus2-api", 2, "api"),
)
# Through HTTP the API routes each call itself (server.py).
CASOS_HTTP = (("unico", 0, "http"), ("citus1", 1, "http"), ("citus2", 2, "http"))
MIX = (("debito", 220), ("credito", 110), ("extrato", 10))


def sessao(conninfo, statements):
    """A session with the API's statements, in server.py's own text."""
    conn = pq.PGconn.connect(conninfo)
    assert conn.status == pq.ConnStatus.OK, conn.get_error_message()
    for nome in (b"transacao", b"extrato"):
        conn.prepare(nome, statements[nome][0])
    return conn


def roteador(conninfos, statements):
    """Mode `api`: a session on every node and server.py's way of picking one."""
    conns = {porta: sessao(c, statements) for porta, c in conninfos.items()}
    linhas = next(iter(conns.values())).exec_(b"select minimo, maximo, endereco, porta from api.shards()")
    mapa = roteamento.Mapa(
        [[int(linhas.get_value(i, j)) if j != 2 else "" for j in range(4)] for i in range(linhas.ntuples)]
    )
    return lambda cliente: conns[mapa.no(int(cliente))[1]], list(conns.values())


def chamar(conninfos, modo, clientes, segundos, semente, pronto, comecar, saida):
    """One driver calling the mix for `segundos` once `comecar` is set;
    puts (calls, failures). `conninfos`: {port: conninfo} of the node it
    calls, or (mode `api`) of every node it routes between. Connecting, and
    the first calls that fill a new session's caches, come before, outside
    what is measured."""
    # Calls sent to their client's node go as the API sends them there.
    statements = server.STATEMENTS if modo == "qualquer" else server.STATEMENTS_CITUS
    if modo == "api":
        conn_de, conns = roteador(conninfos, statements)
    else:
        conns = [sessao(c, statements) for c in conninfos.values()]
        conn_de = lambda cliente: conns[0]  # noqa: E731
    aleatorio = random.Random(semente)
    # As an API session that has served a while: every statement planned, on
    # a cluster for every shard it calls (crebito.shard_local prepares the
    # statements per shard), by debits no limit allows, which change nothing.
    recusado = b'{"valor": 9223372036854775807, "tipo": "d", "descricao": "aquecer"}'
    for _ in range(300):
        cliente = str(aleatorio.choice(clientes)).encode()
        conn_de(cliente).exec_prepared(b"transacao", [cliente, recusado, None])
        conn_de(cliente).exec_prepared(b"extrato", [cliente])
    pronto.put(True)
    comecar.wait()
    chamadas = falhas = 0
    fim = time.monotonic() + segundos
    while time.monotonic() < fim:
        sorteio = aleatorio.randrange(sum(p for _, p in MIX))
        cliente = str(aleatorio.choice(clientes)).encode()
        conn = conn_de(cliente)
        if sorteio < MIX[0][1] + MIX[1][1]:
            tipo = "d" if sorteio < MIX[0][1] else "c"
            valor = aleatorio.randint(1, 10000)
            corpo = f'{{"valor": {valor}, "tipo": "{tipo}", "descricao": "{aleatorio.randrange(10**10):010d}"}}'
            r = conn.exec_prepared(b"transacao", [cliente, corpo.encode(), None])
        else:
            r = conn.exec_prepared(b"extrato", [cliente])
        chamadas += 1
        if r.status != pq.ExecStatus.TUPLES_OK or r.get_value(0, 0) not in (b"200", b"422"):
            falhas += 1
    for conn in conns:
        conn.finish()
    saida.put((chamadas, falhas))


def alvos(p):
    """The nodes the API instances would use: the workers, or the one cluster."""
    nos = p.nos()
    return [n for n in nos if n["papel"] == "worker"] or [nos[0]]


def donos(p, contas):
    """{node name: [its clients]}, from the coordinator's shard map."""
    porta_nome = {n["porta"]: n["nome"] for n in p.nos()}

    def linhas(consulta):
        r = subprocess.run(
            ["psql", "-X", "-A", "-t", "-F", " ", *p.pg(), "-c", consulta], capture_output=True, text=True
        )
        return [tuple(map(int, linha.split())) for linha in r.stdout.splitlines()]

    shards = dict(linhas("select shardid, nodeport from citus_shards where table_name = 'crebito.cliente'::regclass"))
    mapa = {}
    for cliente, shard in linhas(
        "select id, get_shard_id_for_distribution_column('crebito.cliente', id) from crebito.cliente"
    ):
        mapa.setdefault(porta_nome[shards[shard]], []).append(cliente)
    assert sum(map(len, mapa.values())) == contas + 5, "shard map incomplete"
    return mapa


def grupo(topologia, no):
    return f"{topologia}-{no}"


def conninfo(no):
    return f"host={no['pgrun']} port={no['porta']} dbname=crebito user=postgres".encode()


def rodar(nome, p, cg, clientes_por_no, segundos, conexoes, modo):
    """The driver against each target node at once (or wrk against the
    stack's HTTP port); (calls/s, CPU ms per call of every node together,
    {node: CPUs it used on average})."""
    nos = [n["nome"] for n in p.nos()]
    if modo == "http":
        antes = {no: cg.cpu_s(grupo(nome, no)) for no in nos}
        clientes = max(next(iter(clientes_por_no.values())))
        w = saturacao.wrk(p.url, conexoes * len(alvos(p)), segundos, 2, str(clientes))
        chamadas = w["requisicoes"]
        falhas = sum(w[k] for k in ("erros_status", "erros_conexao", "erros_leitura", "erros_timeout"))
    else:
        chamadas, falhas, antes = rodar_driver(nome, p, cg, clientes_por_no, segundos, conexoes, modo)
    if falhas:
        sys.exit(f"{nome}: {falhas} chamadas falharam")
    segundos = segundos if modo != "http" else w["duracao_us"] / 1e6
    cpus = {no: round((cg.cpu_s(grupo(nome, no)) - antes[no]) / segundos, 3) for no in nos}
    return chamadas / segundos, 1000 * sum(cpus.values()) * segundos / chamadas, cpus


def rodar_driver(nome, p, cg, clientes_por_no, segundos, conexoes, modo):
    """`conexoes` driver processes per target node (mode `api`: in all),
    started and connected before the clock starts; (calls, failures, CPU
    seconds of each node before)."""
    nos = [n["nome"] for n in p.nos()]
    pronto, comecar, saida = multiprocessing.Queue(), multiprocessing.Event(), multiprocessing.Queue()
    procs = []
    # Mode `api`: `conexoes` drivers in all, each with a session on every node,
    # so each node has as many sessions as in the other modes, as the API's
    # processes each hold one on every worker.
    for alvo in alvos(p)[:1] if modo == "api" else alvos(p):
        destinos = {n["porta"]: conninfo(n) for n in alvos(p)} if modo == "api" else {alvo["porta"]: conninfo(alvo)}
        for i in range(conexoes):
            semente = hash((nome, alvo["nome"], i))
            args = (destinos, modo, clientes_por_no[alvo["nome"]], segundos, semente, pronto, comecar, saida)
            procs.append(multiprocessing.Process(target=chamar, args=args))
    for proc in procs:
        proc.start()
    for _ in procs:
        pronto.get()
    antes = {no: cg.cpu_s(grupo(nome, no)) for no in nos}
    comecar.set()
    resultados = [saida.get() for _ in procs]
    for proc in procs:
        proc.join()
    return sum(c for c, _ in resultados), sum(f for _, f in resultados), antes


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--contas", type=int, default=100000, help="clients seeded besides the five")
    ap.add_argument("--cpus", type=float, default=0.25, help="CPU quota of each database node")
    ap.add_argument("-T", "--segundos", type=int, default=20)
    ap.add_argument("-c", "--conexoes", type=int, default=16, help="driver connections per target node")
    ap.add_argument("--rodadas", type=int, default=3)
    ap.add_argument("--aquecimento", type=int, default=5, help="seconds of unmeasured load per case first")
    ap.add_argument("--http", action="store_true", help="wrk through HAProxy and the API instead of the driver")
    ap.add_argument("--base", help="checkout whose two-worker Citus stack runs beside, as `base`")
    args = ap.parse_args()
    lista = CASOS_HTTP if args.http else CASOS
    if args.base:
        lista += (("base", 2, "http" if args.http else "api"),)

    pilhas = {}
    cg = None
    try:
        for caso, workers, _ in lista:
            pilha_nome = caso.split("-")[0]
            if pilha_nome in pilhas:
                continue
            # The driver talks to the nodes itself: one API worker per instance
            # then, so the API's idle sessions (one per worker on every node)
            # leave max_connections to the driver and to Citus's own.
            p = pilhas[pilha_nome] = pilha.Pilha(
                citus_workers=workers,
                workers=None if args.http else 1,
                arvore=args.base if pilha_nome == "base" else None,
            )
            pilha.log(f"{pilha_nome}: iniciando a pilha em {p.var}, porta {p.porta}")
            p.iniciar(limite=180)
            subprocess.run(
                ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", *p.pg(), "-c", f"select crebito.semear({args.contas})"]
                + ["-c", "vacuum analyze"],
                check=True,
                stdout=subprocess.DEVNULL,
            )
        todos = list(range(1, args.contas + 6))
        casos = {}
        for caso, _, modo in lista:
            p = pilhas[caso.split("-")[0]]
            mapa = donos(p, args.contas) if modo == "dono" else {n["nome"]: todos for n in alvos(p)}
            casos[caso] = (caso.split("-")[0], p, mapa, modo)
        limites = {grupo(nome, n["nome"]): (args.cpus, 2048) for nome, p in pilhas.items() for n in p.nos()}
        cg = pilha.Cgrupos(limites, nome="crebito-escala")
        if cg.modo is None:
            sys.exit("sem cgroups graváveis não há cota de CPU a comparar")
        cg.criar()
        tabela = pilha.processos()
        for nome, p in pilhas.items():
            for n in p.nos():
                cg.mover(grupo(nome, n["nome"]), pilha.arvore(p.pid(n["nome"]), tabela))
        for nome, p, mapa, modo in casos.values():
            rodar(nome, p, cg, mapa, args.aquecimento, args.conexoes, modo)  # caches, plans
        medidas = {caso: [] for caso in casos}
        ordem = list(casos)
        for r in range(args.rodadas):
            for caso in ordem:
                nome, p, mapa, modo = casos[caso]
                por_s, ms, cpus = rodar(nome, p, cg, mapa, args.segundos, args.conexoes, modo)
                # On a busy machine a node may get less than its quota: what it
                # would carry at the full quota, at the CPU per call it showed.
                na_cota = por_s * args.cpus / max(cpus[n] for n in mapa)
                medidas[caso].append((por_s, ms, na_cota))
                print(
                    f"rodada {r + 1} {caso:<12} {por_s:>8.1f} chamadas/s ({na_cota:>6.1f} na cota)"
                    f"  {ms:.3f} ms de CPU por chamada  CPUs por nó {cpus}",
                    flush=True,
                )
            ordem = ordem[1:] + ordem[:1]
    finally:
        for p in pilhas.values():
            p.parar()
        if cg is not None:
            cg.remover()

    def mediana(caso, i):
        return statistics.median(m[i] for m in medidas[caso])

    print(
        f"\n{'HTTP (wrk), ' if args.http else ''}{args.contas} contas, {args.cpus} CPU por nó,"
        f" {args.conexoes} conexões por nó-alvo, "
        f"{args.segundos}s x {args.rodadas} rodadas (medianas):"
    )
    for caso in medidas:
        print(
            f"  {caso:<12} {mediana(caso, 0):>8.1f} chamadas/s ({mediana(caso, 2):>6.1f} na cota)"
            f"  {mediana(caso, 1):.3f} ms de CPU por chamada (todos os nós)"
        )

    def razao(rotulo, de, sobre, i):
        # Per round: the stacks of one round ran minutes apart at most, so the
        # machine's drift between rounds falls out of each ratio.
        razoes = [b[i] / a[i] for a, b in zip(medidas[sobre], medidas[de], strict=True)]
        por_rodada = ", ".join(f"{x:.2f}" for x in razoes)
        print(f"  {rotulo}: {statistics.median(razoes):.2f}x (por rodada: {por_rodada})")

    for dois in (c for c in medidas if c.startswith("citus2") or c == "base"):
        for i, rotulo in ((0, "medido"), (2, "na cota")):
            razao(f"{dois} / citus1, {rotulo}", dois, "citus1", i)
    razao("citus1 / unico, na cota", "citus1", "unico", 2)
    for caso in (c for c in medidas if c != "unico"):
        razao(f"CPU por chamada, {caso} / unico", caso, "unico", 1)


if __name__ == "__main__":
    main()
