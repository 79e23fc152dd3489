"""What the benchmark tools share: starting a fresh native stack with the
launcher, finding each component's process tree, confining each component to
a cgroup with the budget compose.yml declares, and measuring CPU and memory.

Components: postgres (the postmaster and its backends), api01 and api02 (an
instance's master and its workers), haproxy. The launcher itself is not part
of the budgeted stack (compose has no such process) and is reported apart.
"""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

RAIZ = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMPONENTES = ("postgres", "api01", "api02", "haproxy")
PYTHON = ("api01", "api02")
# The budget when compose.yml is absent or unreadable: (CPUs, MB).
ORCAMENTO_PADRAO = {"haproxy": (0.2, 30), "api01": (0.25, 60), "api02": (0.25, 60), "postgres": (0.8, 400)}
SERVICO_COMPOSE = {"db": "postgres", "postgres": "postgres", "api01": "api01", "api02": "api02", "haproxy": "haproxy"}
TICKS = os.sysconf("SC_CLK_TCK")


def log(msg):
    print(f"bench: {msg}", file=sys.stderr, flush=True)


# -- the budget -------------------------------------------------------------------


def _megabytes(texto):
    m = re.fullmatch(r"\s*([\d.]+)\s*([kKmMgG]?)[bB]?\s*", str(texto))
    if not m:
        raise ValueError(f"memória ilegível: {texto!r}")
    fator = {"": 1 / 2**20, "k": 1 / 1024, "m": 1, "g": 1024}[m.group(2).lower()]
    return float(m.group(1)) * fator


def orcamento(compose=None):
    """{component: (cpus, MB)} from compose.yml's deploy.resources.limits, or
    the challenge's split when the file is not there (yet)."""
    compose = compose or os.path.join(RAIZ, "compose.yml")
    if not os.path.exists(compose):
        log(f"{compose} não existe: usando o orçamento padrão {ORCAMENTO_PADRAO}")
        return dict(ORCAMENTO_PADRAO), "padrão"
    try:
        import yaml

        with open(compose) as f:
            servicos = yaml.safe_load(f)["services"]
        lido = {}
        for nome, servico in servicos.items():
            componente = SERVICO_COMPOSE.get(nome)
            limites = (((servico or {}).get("deploy") or {}).get("resources") or {}).get("limits") or {}
            if componente and "cpus" in limites and "memory" in limites:
                lido[componente] = (float(limites["cpus"]), _megabytes(limites["memory"]))
        if set(lido) != set(COMPONENTES):
            raise ValueError(f"serviços com limites: {sorted(lido)}")
        return lido, compose
    except Exception as e:  # noqa: BLE001 - any unreadable compose falls back, loudly
        log(f"não consegui ler os limites de {compose} ({e}): usando o orçamento padrão")
        return dict(ORCAMENTO_PADRAO), "padrão"


def escalar_memoria(limites, total_mb):
    soma = sum(mb for _, mb in limites.values())
    return {nome: (cpu, mb * total_mb / soma) for nome, (cpu, mb) in limites.items()}


# -- processes ----------------------------------------------------------------------


def _stat(pid):
    """(ppid, utime+stime+cutime+cstime in seconds) from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as f:
        campos = f.read().rsplit(")", 1)[1].split()
    return int(campos[1]), sum(int(x) for x in campos[11:15]) / TICKS


def processos():
    """{pid: (ppid, cpu seconds incl. reaped children)} of every process."""
    tabela = {}
    for nome in os.listdir("/proc"):
        if nome.isdigit():
            try:
                tabela[int(nome)] = _stat(nome)
            except (OSError, IndexError, ValueError):
                pass
    return tabela


def arvore(raiz, tabela=None):
    """The pids of `raiz` and all its descendants."""
    tabela = tabela if tabela is not None else processos()
    filhos = {}
    for pid, (ppid, _) in tabela.items():
        filhos.setdefault(ppid, []).append(pid)
    resultado, pilha = [], [raiz]
    while pilha:
        pid = pilha.pop()
        if pid in tabela:
            resultado.append(pid)
            pilha.extend(filhos.get(pid, ()))
    return resultado


def cpu_arvore(raiz, tabela=None):
    """CPU seconds of a process tree: its live members plus, through each
    parent's cutime/cstime, every descendant that has exited and been reaped
    (PostgreSQL backends, replaced workers)."""
    tabela = tabela if tabela is not None else processos()
    return sum(tabela[p][1] for p in arvore(raiz, tabela))


def pss_kb(pids):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for linha in f:
                    if linha.startswith("Pss:"):
                        total += int(linha.split()[1])
                        break
        except OSError:
            pass
    return total


# -- the stack --------------------------------------------------------------------


def porta_livre():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Pilha:
    """A native stack in a fresh data directory, started by stack/launcher.py."""

    def __init__(self, porta=None, pg_conf=None, workers=None, citus_workers=0, arvore=None, ha=False):
        self.citus_workers = citus_workers
        self.ha = ha
        # The tree whose launcher, server and schema run: this one, or another
        # checkout (a baseline commit's worktree) measured by this tree's tools.
        self.arvore = os.path.abspath(arvore or RAIZ)
        self.var = tempfile.mkdtemp(prefix="crebito-bench-")
        os.chmod(self.var, 0o755)  # PostgreSQL runs as `postgres` when we are root
        self.porta = porta or porta_livre()
        self.pg_conf = pg_conf
        self.workers = workers
        self.launcher = None
        self.log = None
        self.tempo_ate_200 = None
        self._sigterm_anterior = None

    @property
    def url(self):
        return f"http://127.0.0.1:{self.porta}"

    def iniciar(self, limite=60, a_cada_espera=None):
        """Starts the stack; returns the seconds from launch to the first 200
        of GET /clientes/1/extrato (the official readiness probe).
        `a_cada_espera()` runs between probes (to confine processes early)."""
        env = dict(os.environ, CREBITO_VAR=self.var, CREBITO_PORT=str(self.porta))
        env.pop("CREBITO_PG_CONF", None)
        if self.pg_conf:
            env["CREBITO_PG_CONF"] = os.path.abspath(self.pg_conf)
        if self.workers:
            env["CREBITO_WORKERS"] = str(self.workers)
        env["CREBITO_CITUS_WORKERS"] = str(self.citus_workers)
        env["CREBITO_HA"] = "1" if self.ha else "0"
        self.log = open(os.path.join(self.var, "stack.log"), "w")
        # A SIGTERM to the tool (kill, a timeout) unwinds like Ctrl-C, so the
        # code that stops this stack and removes its cgroups still runs.
        self._sigterm_anterior = signal.signal(signal.SIGTERM, _sair_com_sigterm)
        t0 = time.perf_counter()
        self.launcher = subprocess.Popen(
            [os.path.join(RAIZ, ".venv", "bin", "python"), os.path.join(self.arvore, "stack", "launcher.py")],
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        url = f"{self.url}/clientes/1/extrato"
        while time.perf_counter() - t0 < limite:
            if self.launcher.poll() is not None:
                raise RuntimeError(f"o launcher saiu com {self.launcher.returncode}; veja {self.log.name}")
            try:
                with urllib.request.urlopen(url, timeout=1) as r:
                    if r.status == 200:
                        self.tempo_ate_200 = time.perf_counter() - t0
                        return self.tempo_ate_200
            except OSError:
                pass
            if a_cada_espera is not None:
                a_cada_espera()
            time.sleep(0.02)
        raise RuntimeError(f"sem 200 em {limite}s; veja {self.log.name}")

    def pid(self, nome):
        with open(os.path.join(self.var, f"{nome}.pid")) as f:
            return int(f.read())

    def pids(self, tabela=None):
        tabela = tabela if tabela is not None else processos()
        return {nome: arvore(self.pid(nome), tabela) for nome in COMPONENTES}

    def nos(self):
        """The database nodes the launcher recorded: coordinator (or the only node)
        first; a tree older than topologia.json has one, in pgrun."""
        try:
            with open(os.path.join(self.var, "topologia.json")) as f:
                return json.load(f)["nos"]
        except FileNotFoundError:
            return [{"nome": "postgres", "pgrun": os.path.join(self.var, "pgrun"), "porta": 5432}]

    def pg(self, no=None):
        """Arguments for psql/pgbench to reach the database (a node by name,
        default the coordinator or the only node), through its unix socket. The
        database goes by position, where both read it: pgbench takes -d for
        --debug, which logs every command it sends."""
        n = next(n for n in self.nos() if n["nome"] == no) if no else self.nos()[0]
        return ["-h", n["pgrun"], "-p", str(n["porta"]), "-U", "postgres", "crebito"]

    def parar(self, guardar_log=None):
        if self.launcher is not None and self.launcher.poll() is None:
            self.launcher.send_signal(signal.SIGTERM)
            try:
                self.launcher.wait(timeout=40)
            except subprocess.TimeoutExpired:
                self.launcher.kill()
                self.launcher.wait()
        if self.log is not None:
            self.log.close()
            if guardar_log:
                shutil.copyfile(self.log.name, guardar_log)
        shutil.rmtree(self.var, ignore_errors=True)
        if self._sigterm_anterior is not None:
            signal.signal(signal.SIGTERM, self._sigterm_anterior)
            self._sigterm_anterior = None


def _sair_com_sigterm(signum, frame):
    raise SystemExit(128 + signum)


# -- cgroups -------------------------------------------------------------------------


def _escrever(caminho, valor):
    with open(caminho, "w") as f:
        f.write(str(valor))


def _ler(caminho):
    with open(caminho) as f:
        return f.read().strip()


class Cgrupos:
    """One cgroup per component with its CPU quota and memory limit.

    v1 (cpu, cpuacct and memory hierarchies under /sys/fs/cgroup) or v2 (a
    writable unified /sys/fs/cgroup); `modo` is None when neither is writable,
    and then nothing is limited (CPU is still measured from /proc)."""

    V1 = "/sys/fs/cgroup"
    PERIODO_US = 100_000

    def __init__(self, limites, nome="crebito-bench"):
        self.limites = limites
        self.base = f"{nome}-{os.getpid()}"
        self.modo = self._detectar()
        self.criados = []

    def _detectar(self):
        v1 = [os.path.join(self.V1, c) for c in ("cpu", "cpuacct", "memory")]
        if all(os.access(os.path.join(h, "cgroup.procs"), os.W_OK) for h in v1):
            return "v1"
        if os.path.exists(os.path.join(self.V1, "cgroup.controllers")) and os.access(
            os.path.join(self.V1, "cgroup.subtree_control"), os.W_OK
        ):
            return "v2"
        log("cgroups não graváveis (nem v1 nem v2): rodando SEM limites de CPU e memória; CPU medida em /proc")
        return None

    def _dirs(self, componente):
        if self.modo == "v1":
            return {h: os.path.join(self.V1, h, self.base, componente) for h in ("cpu", "cpuacct", "memory")}
        return {"v2": os.path.join(self.V1, self.base, componente)}

    def criar(self):
        if self.modo is None:
            return
        if self.modo == "v2":
            raiz = os.path.join(self.V1, self.base)
            os.makedirs(raiz)
            self.criados.append(raiz)
            _escrever(os.path.join(self.V1, "cgroup.subtree_control"), "+cpu +memory")
            _escrever(os.path.join(raiz, "cgroup.subtree_control"), "+cpu +memory")
        else:
            for h in ("cpu", "cpuacct", "memory"):
                raiz = os.path.join(self.V1, h, self.base)
                os.makedirs(raiz)
                self.criados.append(raiz)
        for componente, (cpus, mb) in self.limites.items():
            d = self._dirs(componente)
            quota = int(cpus * self.PERIODO_US)
            limite = int(mb * 2**20)
            for caminho in d.values():
                os.makedirs(caminho)
                self.criados.append(caminho)
            if self.modo == "v1":
                _escrever(os.path.join(d["cpu"], "cpu.cfs_period_us"), self.PERIODO_US)
                _escrever(os.path.join(d["cpu"], "cpu.cfs_quota_us"), quota)
                try:
                    # Charge the pages a process already has to its new group (deprecated on new kernels).
                    _escrever(os.path.join(d["memory"], "memory.move_charge_at_immigrate"), 3)
                except OSError:
                    pass
                _escrever(os.path.join(d["memory"], "memory.limit_in_bytes"), limite)
            else:
                _escrever(os.path.join(d["v2"], "cpu.max"), f"{quota} {self.PERIODO_US}")
                _escrever(os.path.join(d["v2"], "memory.max"), limite)

    def mover(self, componente, pids):
        """Moves whole processes in; children forked later inherit the group."""
        if self.modo is None:
            return
        for caminho in self._dirs(componente).values():
            for pid in pids:
                try:
                    _escrever(os.path.join(caminho, "cgroup.procs"), pid)
                except OSError:  # exited meanwhile
                    pass

    def zerar_picos(self):
        if self.modo == "v1":
            for componente in self.limites:
                _escrever(os.path.join(self._dirs(componente)["memory"], "memory.max_usage_in_bytes"), 0)
                _escrever(os.path.join(self._dirs(componente)["cpuacct"], "cpuacct.usage"), 0)
        elif self.modo == "v2":
            for componente in self.limites:
                try:
                    _escrever(os.path.join(self._dirs(componente)["v2"], "memory.peak"), 0)
                except OSError:
                    pass

    def cpu_s(self, componente):
        if self.modo == "v1":
            return int(_ler(os.path.join(self._dirs(componente)["cpuacct"], "cpuacct.usage"))) / 1e9
        if self.modo == "v2":
            stat = _ler(os.path.join(self._dirs(componente)["v2"], "cpu.stat"))
            return int(re.search(r"usage_usec (\d+)", stat).group(1)) / 1e6
        return None

    def pico_mb(self, componente):
        try:
            if self.modo == "v1":
                return int(_ler(os.path.join(self._dirs(componente)["memory"], "memory.max_usage_in_bytes"))) / 2**20
            if self.modo == "v2":
                return int(_ler(os.path.join(self._dirs(componente)["v2"], "memory.peak"))) / 2**20
        except OSError:
            return None
        return None

    def uso_mb(self, componente):
        """Memory charged to the group now (page cache included, as the limit counts it)."""
        try:
            if self.modo == "v1":
                return int(_ler(os.path.join(self._dirs(componente)["memory"], "memory.usage_in_bytes"))) / 2**20
            if self.modo == "v2":
                return int(_ler(os.path.join(self._dirs(componente)["v2"], "memory.current"))) / 2**20
        except OSError:
            return None
        return None

    def eventos(self, componente):
        """Throttling and memory-limit events: how often the budget bit."""
        r = {}
        try:
            if self.modo == "v1":
                d = self._dirs(componente)
                stat = dict(linha.split() for linha in _ler(os.path.join(d["cpu"], "cpu.stat")).splitlines())
                r["periodos_estrangulados"] = int(stat.get("nr_throttled", 0))
                r["estrangulado_s"] = int(stat.get("throttled_time", 0)) / 1e9
                r["falhas_de_memoria"] = int(_ler(os.path.join(d["memory"], "memory.failcnt")))
                oom = dict(
                    linha.split() for linha in _ler(os.path.join(d["memory"], "memory.oom_control")).splitlines()
                )
                r["oom_kill"] = int(oom.get("oom_kill", 0))
            elif self.modo == "v2":
                d = self._dirs(componente)["v2"]
                stat = dict(linha.split() for linha in _ler(os.path.join(d, "cpu.stat")).splitlines())
                r["periodos_estrangulados"] = int(stat.get("nr_throttled", 0))
                r["estrangulado_s"] = int(stat.get("throttled_usec", 0)) / 1e6
                ev = dict(linha.split() for linha in _ler(os.path.join(d, "memory.events")).splitlines())
                r["falhas_de_memoria"] = int(ev.get("max", 0))
                r["oom_kill"] = int(ev.get("oom_kill", 0))
        except OSError:
            pass
        return r

    def remover(self):
        """Moves any process left back to the root and removes the groups."""
        for caminho in reversed(self.criados):
            procs = os.path.join(caminho, "cgroup.procs")
            raiz = os.path.join(caminho.split(self.base)[0], "cgroup.procs")
            try:
                for pid in _ler(procs).split():
                    try:
                        _escrever(raiz, pid)
                    except OSError:
                        pass
            except OSError:
                pass
            for _ in range(50):
                try:
                    os.rmdir(caminho)
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.1)
        self.criados = []


# -- measuring ------------------------------------------------------------------------


def _menos(a, b):
    return round(a - b, 3) if isinstance(a, float) else a - b


class Medidor:
    """Samples the stack every second during a run: PSS per component (the
    peak of the per-component sum) and CPU per component from /proc, with
    the cgroup counters when they exist."""

    def __init__(self, pilha, cgrupos, intervalo=1.0, a_cada_amostra=None):
        self.a_cada_amostra = a_cada_amostra
        self.pilha = pilha
        self.cgrupos = cgrupos
        self.intervalo = intervalo
        self.pss_pico_kb = dict.fromkeys(COMPONENTES, 0)
        self.pss_total_pico_kb = 0
        self.amostras = []
        self._parar = threading.Event()
        self._thread = None
        self.cpu0 = None
        self.cpu1 = None

    def _cpu_proc(self):
        tabela = processos()
        r = {nome: cpu_arvore(self.pilha.pid(nome), tabela) for nome in COMPONENTES}
        # Its own time only: its children (the components) never exit while measured.
        r["launcher"] = tabela.get(self.pilha.launcher.pid, (0, 0.0))[1]
        return r

    def _amostrar(self):
        t0 = time.monotonic()
        while not self._parar.wait(self.intervalo):
            if self.a_cada_amostra is not None:
                self.a_cada_amostra()
            try:
                pids = self.pilha.pids()
            except OSError:
                continue
            pss = {nome: pss_kb(p) for nome, p in pids.items()}
            for nome, kb in pss.items():
                self.pss_pico_kb[nome] = max(self.pss_pico_kb[nome], kb)
            self.pss_total_pico_kb = max(self.pss_total_pico_kb, sum(pss.values()))
            self.amostras.append({"t": round(time.monotonic() - t0, 1), "pss_kb": pss})

    def iniciar(self):
        self.cgrupos.zerar_picos()
        # Throttling counters cannot be reset: the run's share is a difference.
        self.eventos0 = {nome: self.cgrupos.eventos(nome) for nome in COMPONENTES}
        self.cpu0 = self._cpu_proc()
        self.t0 = time.monotonic()
        self._thread = threading.Thread(target=self._amostrar, daemon=True)
        self._thread.start()

    def parar(self):
        self.cpu1 = self._cpu_proc()
        self.duracao = time.monotonic() - self.t0
        self._parar.set()
        self._thread.join()

    def resultado(self, requisicoes):
        """Per component: CPU seconds, peak memory, peak PSS; and the stack's
        CPU milliseconds per request."""
        comp = {}
        for nome in COMPONENTES:
            cpu_proc = self.cpu1[nome] - self.cpu0[nome]
            cpu_cg = self.cgrupos.cpu_s(nome)
            limite = self.cgrupos.limites.get(nome)
            comp[nome] = {
                "cpu_s_proc": round(cpu_proc, 2),
                "cpu_s_cgroup": None if cpu_cg is None else round(cpu_cg, 2),
                "limite_cpus": limite[0] if limite else None,
                "limite_mb": round(limite[1], 1) if limite else None,
                "pico_mb_cgroup": None if self.cgrupos.pico_mb(nome) is None else round(self.cgrupos.pico_mb(nome), 1),
                "pss_pico_mb": round(self.pss_pico_kb[nome] / 1024, 1),
                **{k: _menos(v, self.eventos0[nome].get(k, 0)) for k, v in self.cgrupos.eventos(nome).items()},
            }
        # The cgroup counter when there is one (it sees every thread and exited child).
        cpu = {n: (c["cpu_s_cgroup"] if c["cpu_s_cgroup"] is not None else c["cpu_s_proc"]) for n, c in comp.items()}
        total = sum(cpu.values())
        python = sum(cpu[n] for n in PYTHON)
        por_requisicao = {n: round(1000 * v / requisicoes, 4) for n, v in cpu.items()} if requisicoes else {}
        return {
            "duracao_s": round(self.duracao, 1),
            "requisicoes": requisicoes,
            "componentes": comp,
            "cpu_s_pilha": round(total, 2),
            "cpu_ms_por_requisicao": round(1000 * total / requisicoes, 4) if requisicoes else None,
            "cpu_ms_por_requisicao_python": round(1000 * python / requisicoes, 4) if requisicoes else None,
            "cpu_ms_por_componente": por_requisicao,
            "fracao_python_pct": round(100 * python / total, 1) if total else None,
            "cpu_s_launcher": round(self.cpu1["launcher"] - self.cpu0["launcher"], 2),
            "pss_total_pico_mb": round(self.pss_total_pico_kb / 1024, 1),
            "cpus_medias_da_pilha": round(total / self.duracao, 3) if self.duracao else None,
            "limites_aplicados": self.cgrupos.modo is not None,
        }


class AmostradorEsperas:
    """Samples what the API's database sessions are doing (pg_stat_activity:
    on CPU, idle waiting for their worker, waiting for the WAL or for a row
    lock) every `intervalo` seconds, to tell where a request's time goes."""

    SQL = (
        "select coalesce(wait_event_type, 'CPU') || ':' || coalesce(wait_event, '-') || ':' || state"
        " from pg_stat_activity where application_name = 'crebito'"
    )

    def __init__(self, pilha, intervalo=0.05):
        self.pilha = pilha
        self.intervalo = intervalo
        self.contagem = {}
        self.amostras = 0
        self._parar = threading.Event()
        self._thread = None

    def _rodar(self):
        import psycopg

        dsn = f"host={self.pilha.var}/pgrun port=5432 dbname=crebito user=postgres application_name=bench"
        with psycopg.connect(dsn, autocommit=True) as conn:
            while not self._parar.wait(self.intervalo):
                for (estado,) in conn.execute(self.SQL):
                    self.contagem[estado] = self.contagem.get(estado, 0) + 1
                self.amostras += 1

    def iniciar(self):
        self._thread = threading.Thread(target=self._rodar, daemon=True)
        self._thread.start()

    def parar(self):
        self._parar.set()
        self._thread.join()
        total = sum(self.contagem.values()) or 1
        return {
            "amostras": self.amostras,
            "pct": {k: round(100 * v / total, 1) for k, v in sorted(self.contagem.items(), key=lambda x: -x[1])},
        }


def perf_banco(pids, segundos, destino):
    """perf's CPU-clock profile of the database processes: top symbols by own
    time and the shares of kernel, postgres and plpgsql. None without perf."""
    if not shutil.which("perf"):
        return None
    dados = destino + ".data"
    r = subprocess.run(
        ["perf", "record", "-e", "cpu-clock", "-F", "999", "-g", "-p", ",".join(map(str, pids)), "-o", dados]
        + ["--", "sleep", str(segundos)],
        capture_output=True,
        text=True,
    )
    if r.returncode != 0:
        return {"erro": r.stderr[-300:]}
    resultado = {}
    for chave, ordem in (("dso", "dso"), ("simbolos", "symbol")):
        rel = subprocess.run(
            ["perf", "report", "-i", dados, "--no-children", "--sort", ordem, "--stdio", "-g", "none"],
            capture_output=True,
            text=True,
        )
        linhas = [x.strip() for x in rel.stdout.splitlines() if x.strip() and not x.startswith("#")]
        resultado[chave] = linhas[:25]
    return resultado


def tabela_orcamento(r):
    linhas = [
        f"{'componente':<10}{'limite':>14}{'CPU s':>9}{'CPU s /proc':>12}{'pico MB':>9}{'PSS pico':>9}"
        f"{'estrangul.':>11}{'falhas mem':>11}{'OOM kill':>9}"
    ]
    for nome, c in r["componentes"].items():
        limite = f"{c['limite_cpus']}/{c['limite_mb']}MB" if r["limites_aplicados"] else "nenhum"
        cg = "-" if c["cpu_s_cgroup"] is None else f"{c['cpu_s_cgroup']:.2f}"
        pico = "-" if c["pico_mb_cgroup"] is None else f"{c['pico_mb_cgroup']:.1f}"
        linhas.append(
            f"{nome:<10}{limite:>14}{cg:>9}{c['cpu_s_proc']:>12.2f}{pico:>9}{c['pss_pico_mb']:>9.1f}"
            f"{c.get('periodos_estrangulados', '-'):>11}{c.get('falhas_de_memoria', '-'):>11}"
            f"{c.get('oom_kill', '-'):>9}"
        )
    linhas.append(
        f"pilha: {r['cpu_s_pilha']:.2f} CPU s em {r['duracao_s']} s ({r['cpus_medias_da_pilha']} CPUs em média),"
        f" {r['requisicoes']} requisições => {r['cpu_ms_por_requisicao']} ms de CPU por requisição"
        f" (Python {r['cpu_ms_por_requisicao_python']} ms, {r['fracao_python_pct']}%);"
        f" PSS total no pico {r['pss_total_pico_mb']} MB; launcher (fora do orçamento) {r['cpu_s_launcher']} CPU s"
    )
    return "\n".join(linhas)


class PilhaNoOrcamento:
    """A fresh stack, each component moved into its cgroup; stopped and
    cleaned up on exit, whatever happens."""

    def __init__(self, memoria_total=None, compose=None, pg_conf=None, workers=None, saida=None, arvore=None):
        self.saida = saida
        limites, self.fonte_orcamento = orcamento(compose)
        if memoria_total:
            limites = escalar_memoria(limites, memoria_total)
        self.limites = limites
        self.pilha = Pilha(pg_conf=pg_conf, workers=workers, arvore=arvore)
        self.cgrupos = Cgrupos(limites)
        self.pids_iniciais = None

    def __enter__(self):
        try:
            log(f"iniciando a pilha em {self.pilha.var}, porta {self.pilha.porta}")
            self.cgrupos.criar()
            # Each component enters its group as soon as its pid file appears, so
            # the memory it touches while starting is charged to the group too.
            t = self.pilha.iniciar(a_cada_espera=self.confinar)
            log(f"primeiro 200 em {t:.2f} s")
            self.confinar()
            self.pids_iniciais = {nome: self.pilha.pid(nome) for nome in COMPONENTES}
            if self.cgrupos.modo:
                resumo = ", ".join(f"{n} {c} CPU/{mb:.0f}MB" for n, (c, mb) in self.limites.items())
                log(f"cgroups {self.cgrupos.modo} ({self.fonte_orcamento}): {resumo}")
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def confinar(self):
        tabela = processos()
        for nome in COMPONENTES:
            try:
                raiz = self.pilha.pid(nome)
            except (OSError, ValueError):
                continue
            self.cgrupos.mover(nome, arvore(raiz, tabela))

    def reiniciados(self):
        """Components the launcher restarted (put back in their group by the
        sampler within a second, as a restarted container keeps its limits)."""
        return [n for n in COMPONENTES if self.pilha.pid(n) != self.pids_iniciais[n]]

    def __exit__(self, *exc):
        try:
            self.pilha.parar(os.path.join(self.saida, "pilha.log") if self.saida else None)
        finally:
            self.cgrupos.remover()


def salvar_json(caminho, dados):
    with open(caminho, "w") as f:
        json.dump(dados, f, indent=1, ensure_ascii=False)


def opcoes_do_orcamento(ap):
    """The options every tool that runs the stack in its budget shares."""
    ap.add_argument("--memoria-total", type=float, default=None, help="scale the memory limits to this total (MB)")
    ap.add_argument("--compose", default=None, help="compose file with the limits (default: compose.yml)")
    ap.add_argument("--workers", type=int, default=None, help="CREBITO_WORKERS per instance (default: launcher's)")
    ap.add_argument("--pg-conf", default=None, help="extra PostgreSQL settings file")
    ap.add_argument("--saida", default=None, help="folder for the figures (default: bench/results/<tool>-<date>)")
    ap.add_argument("--arvore", default=None, help="run this checkout's stack (e.g. a baseline worktree) instead")


def pasta_de_saida(args, ferramenta):
    """--saida, or a new dated folder under bench/results."""
    aqui = os.path.dirname(os.path.abspath(__file__))
    saida = args.saida or os.path.join(aqui, "results", f"{ferramenta}-" + time.strftime("%Y%m%d-%H%M%S"))
    os.makedirs(saida, exist_ok=True)
    return saida
