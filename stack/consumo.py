"""The CPU and memory of each process of a stack, for Prometheus: a tiny
exporter that reads /proc on each scrape and nothing else, so nothing is
added to a request's path (the API instances are not asked anything).

    consumo.py 127.0.0.1:9256 <var> api01 api02 haproxy postgres pg1=<pgdata> ...

Each name is a process the launcher recorded in <var>/<name>.pid; its figures
are those of its whole tree (an API instance's master and workers, the
postmaster and its backends), with the label `processo` (Prometheus keeps
`instance` for the target it scraped). With `=<pgdata>`, also the tree of the
postmaster of that data directory, which the process runs but detaches (an HA
node's Patroni). A name with <var>/<name>.cgroup instead (docker/projeto.py
writes one per container) holds a cgroup directory: its figures are those of
every process in that group, read from its cgroup.procs on each scrape, so a
restarted container's new processes are found (the engine puts them in the
same group: its path is the container's id):

    process_cpu_seconds_total              user and system CPU, reaped children included
    process_resident_memory_bytes          sum of the tree's resident sets (shared pages once per process)
    process_resident_private_memory_bytes  the part of it no other process maps (anonymous pages)
    process_processes                      processes in the tree

Reads only what any user may read (/proc/<pid>/stat, statm, children): started
as root, it switches to CREBITO_USUARIO once its port is bound.
"""

import http.server
import os
import pwd
import sys

TICKS = os.sysconf("SC_CLK_TCK")
PAGINA = os.sysconf("SC_PAGE_SIZE")
METRICAS = (
    ("process_cpu_seconds_total", "counter", "User and system CPU time of the process tree, in seconds."),
    ("process_resident_memory_bytes", "gauge", "Sum of the resident set sizes of the process tree, in bytes."),
    ("process_resident_private_memory_bytes", "gauge", "Resident memory of the process tree not shared, in bytes."),
    ("process_processes", "gauge", "Processes in the tree."),
)


def arvore(raiz):
    """raiz and its descendants (those that exit meanwhile left out)."""
    pids = [raiz]
    for pid in pids:
        try:
            for tarefa in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{tarefa}/children") as f:
                    pids.extend(int(c) for c in f.read().split())
        except OSError:
            continue
    return pids


def medir(pid):
    """(cpu seconds incl. reaped children, resident bytes, private resident bytes) of one process."""
    with open(f"/proc/{pid}/stat") as f:
        campos = f.read().rsplit(")", 1)[1].split()
    with open(f"/proc/{pid}/statm") as f:
        _, residente, compartilhada = (int(x) for x in f.read().split()[:3])
    # utime, stime, cutime, cstime: a child that exited and was reaped inside
    # the tree (a backend, a replaced worker) still counts.
    cpu = sum(int(x) for x in campos[11:15]) / TICKS
    return cpu, residente * PAGINA, (residente - compartilhada) * PAGINA


def _roda_em(pid, pgdata):
    """Whether pid is a postgres started on pgdata (its backends rename themselves)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            args = f.read().decode(errors="replace").split("\0")
    except OSError:
        return False
    return "-D" in args[:-1] and args[args.index("-D") + 1] == pgdata


def _postmaster(pgdata, conhecido):
    """The postmaster on pgdata: `conhecido` (the last one found) while it
    runs there, else found in /proc; None when there is none."""
    if conhecido and _roda_em(conhecido, pgdata):
        return conhecido
    return next((int(n) for n in os.listdir("/proc") if n.isdigit() and _roda_em(n, pgdata)), None)


POSTMASTERS = {}  # pgdata -> pid last found


def do_grupo(var, nome):
    """Every process of the cgroup <var>/<nome>.cgroup names ([] when there is
    none, or the group is gone: a container stopped)."""
    try:
        with open(os.path.join(var, f"{nome}.cgroup")) as f, open(os.path.join(f.read().strip(), "cgroup.procs")) as g:
            return [int(p) for p in g.read().split()]
    except (OSError, ValueError):
        return []


def da_arvore(var, nome, pgdata):
    """The tree of the process <var>/<nome>.pid names, and of the postmaster
    on pgdata when given ([] when none is recorded)."""
    try:
        with open(os.path.join(var, f"{nome}.pid")) as f:
            raizes = [int(f.read())]
    except (OSError, ValueError):
        return []
    if pgdata:
        POSTMASTERS[pgdata] = _postmaster(pgdata, POSTMASTERS.get(pgdata))
        if POSTMASTERS[pgdata] and POSTMASTERS[pgdata] not in arvore(raizes[0]):
            raizes.append(POSTMASTERS[pgdata])
    return [p for raiz in raizes for p in arvore(raiz)]


def figuras(var, nomes):
    """{nome: (cpu, rss, private, processes)} of each recorded process that is running."""
    resultado = {}
    for item in nomes:
        nome, _, pgdata = item.partition("=")
        soma, quantos = [0.0, 0, 0], 0
        for pid in da_arvore(var, nome, pgdata) or do_grupo(var, nome):
            try:
                medida = medir(pid)
            except (OSError, ValueError, IndexError):
                continue
            soma = [a + b for a, b in zip(soma, medida, strict=True)]
            quantos += 1
        if quantos:
            resultado[nome] = (*soma, quantos)
    return resultado


def texto(var, nomes):
    """The Prometheus text exposition of every figure."""
    medidas = figuras(var, nomes)
    linhas = []
    for i, (metrica, tipo, ajuda) in enumerate(METRICAS):
        linhas += [f"# HELP {metrica} {ajuda}", f"# TYPE {metrica} {tipo}"]
        linhas += [f'{metrica}{{processo="{nome}"}} {valores[i]}' for nome, valores in medidas.items()]
    return "\n".join(linhas) + "\n"


def servidor(endereco, var, nomes):
    class Pedido(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the name http.server calls
            if self.path.split("?", 1)[0] != "/metrics":
                self.send_error(404)
                return
            corpo = texto(var, nomes).encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(corpo)))
            self.end_headers()
            self.wfile.write(corpo)

        def log_message(self, *args):
            pass  # one line per scrape would be all the log holds

    host, porta = endereco.rsplit(":", 1)
    return http.server.HTTPServer((host, int(porta)), Pedido)


def main():
    endereco, var, *nomes = sys.argv[1:]
    escuta = servidor(endereco, var, nomes)
    usuario = os.environ.get("CREBITO_USUARIO")
    if usuario:
        info = pwd.getpwnam(usuario)
        os.setgroups([])
        os.setgid(info.pw_gid)
        os.setuid(info.pw_uid)
    try:
        escuta.serve_forever()
    except KeyboardInterrupt:
        pass  # Ctrl-C reaches it with `make docker`, which runs it in its own process group


if __name__ == "__main__":
    main()
