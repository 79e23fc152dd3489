"""The per-second record kept beside every load run: what each process, each
component's cgroup, the machine, its disk and PostgreSQL did in each second,
so that a stall in the latency series can be laid beside what caused it.

Three samplers run in the bench's own process, outside the stack's cgroups:
- every second: CPU of every process of the stack by role (from /proc), the
  cgroups' throttling (cpu.stat) and their CPU and memory in use, the
  machine's CPU split (steal, iowait) and
  pressure stall times (/proc/pressure), memory reclaim (/proc/vmstat), and
  PostgreSQL's counters: WAL written, flushes and their time, segments in
  pg_wal, checkpoints, autovacuum and autoanalyze runs, commits;
- 20 times a second: what every non-idle database process waits for
  (pg_stat_activity), the API's sessions apart, so lock waits, WAL flushes
  and autovacuum show up as samples per second;
- 10 times a second: a probe that writes and fdatasyncs 8 kB on the stack's
  filesystem (the disk every commit waits for) and how late it woke up (the
  machine's scheduling lag as a process outside the stack sees it).

The database connection's backend is moved out of the stack's cgroups, so the
record's own queries are not billed to the stack's CPU.
"""

import os
import threading
import time

import pilha

PERIODO_PROBE = 0.1
ESPERAS_POR_S = 20
CONTADORES_PG = """
select
    w.wal_bytes::bigint, w.wal_write, w.wal_sync, w.wal_sync_time,
    (select count(*) from pg_catalog.pg_ls_waldir() where name ~ '^[0-9A-F]{24}$'),
    b.checkpoints_timed + b.checkpoints_req, b.buffers_checkpoint, b.buffers_backend,
    (select coalesce(sum(autovacuum_count), 0)::bigint from pg_catalog.pg_stat_user_tables),
    (select coalesce(sum(autoanalyze_count), 0)::bigint from pg_catalog.pg_stat_user_tables),
    (select xact_commit from pg_catalog.pg_stat_database where datname = current_database())
from pg_catalog.pg_stat_wal as w, pg_catalog.pg_stat_bgwriter as b
"""
NOMES_PG = (
    "wal_bytes",
    "wal_escritas",
    "wal_flushes",
    "wal_flush_ms",
    "segmentos",
    "checkpoints",
    "buffers_checkpoint",
    "buffers_backend",
    "autovacuums",
    "autoanalyzes",
    "commits",
)
# Gauges are reported as they are; every other counter as its change in the second.
MEDIDAS_PG = {"segmentos"}
# What each process outside the API's sessions waits for, unless it is its
# own idle loop (wait_event_type Activity).
ESPERAS_SQL = """
select case when usename = 'crebito_api' then 'api' else backend_type end,
       coalesce(wait_event_type, 'CPU') || ':' || coalesce(wait_event, '-')
from pg_catalog.pg_stat_activity
where pid <> pg_catalog.pg_backend_pid()
  and (state = 'active' or (state is null and wait_event_type is distinct from 'Activity'))
"""


def _ler(caminho):
    with open(caminho) as f:
        return f.read()


def _processo(pid):
    """(own CPU s, reaped children's CPU s, command line) of a process."""
    campos = _ler(f"/proc/{pid}/stat").rsplit(")", 1)[1].split()
    proprio = (int(campos[11]) + int(campos[12])) / pilha.TICKS
    filhos = (int(campos[13]) + int(campos[14])) / pilha.TICKS
    return proprio, filhos, _ler(f"/proc/{pid}/cmdline").replace("\0", " ").strip()


# PostgreSQL's background processes, by the start of their title.
FUNDO = {
    "checkpointer": "checkpointer",
    "background writer": "bgwriter",
    "walwriter": "walwriter",
    "autovacuum": "autovacuum",
    "logical replication": "logical",
}


def papel(componente, cmd, raiz):
    """A process's role within its component: postgres's background processes
    by name, its sessions by role (the API's, or another such as this record's)."""
    if componente == "postgres":
        if raiz:
            return "postmaster"
        nome = cmd.removeprefix("postgres: ")
        if nome.startswith("crebito_api "):
            return "sessoes_api"
        return next((p for titulo, p in FUNDO.items() if nome.startswith(titulo)), "outras_sessoes")
    return "mestre" if raiz else "workers"


def cpu_por_papel(pids_por_componente):
    """{component:role: CPU s} of the stack's live processes; a root's reaped
    children (exited backends, autovacuum workers) count as component:encerrados."""
    r = {}
    for componente, pids in pids_por_componente.items():
        for i, pid in enumerate(pids):
            try:
                proprio, filhos, cmd = _processo(pid)
            except (OSError, IndexError, ValueError):
                continue
            chave = f"{componente}:{papel(componente, cmd, i == 0)}"
            r[chave] = r.get(chave, 0.0) + proprio
            if i == 0:
                r[f"{componente}:encerrados"] = r.get(f"{componente}:encerrados", 0.0) + filhos
    return r


def cpu_da_maquina():
    """The machine's /proc/stat CPU counters, in ticks."""
    nomes = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
    campos = _ler("/proc/stat").splitlines()[0].split()[1:9]
    return dict(zip(nomes, map(int, campos), strict=True))


def pressao():
    """Stall time counters (µs) of /proc/pressure: some and full, per resource."""
    r = {}
    for recurso in ("cpu", "io", "memory"):
        try:
            for linha in _ler(f"/proc/pressure/{recurso}").splitlines():
                tipo, *campos = linha.split()
                r[f"{recurso}_{tipo}"] = int(dict(c.split("=") for c in campos)["total"])
        except (OSError, KeyError, ValueError):
            pass
    return r


def recuperacao():
    """Pages scanned by memory reclaim (kswapd and direct), and major faults."""
    r = {"reclaim_paginas": 0, "faltas_maiores": 0}
    for linha in _ler("/proc/vmstat").splitlines():
        nome, valor = linha.split()
        if nome.startswith("pgscan_"):
            r["reclaim_paginas"] += int(valor)
        elif nome == "pgmajfault":
            r["faltas_maiores"] = int(valor)
    return r


def _cpu_ms(antes, depois):
    """A cgroup's CPU ms between two readings; none when the counter went back
    (Medidor.iniciar resets it), which is not CPU."""
    if antes is None or depois is None or depois < antes:
        return None
    return round(1000 * (depois - antes), 1)


def _diferenca(a, b):
    return {k: round(a[k] - b.get(k, 0), 4) for k in a}


class RegistroPorSegundo:
    """Start with iniciar(), end with parar(), which returns the seconds."""

    def __init__(self, p, cgrupos=None):
        self.pilha = p
        self.cgrupos = cgrupos
        self.segundos = {}  # second -> dict, filled by the three samplers
        self._trava = threading.Lock()
        self._parar = threading.Event()
        self._threads = []
        self.t0 = None
        self.inicio_epoch = None
        self.erros = []

    def _segundo(self, agora=None):
        s = int((agora if agora is not None else time.monotonic()) - self.t0)
        return self.segundos.setdefault(s, {"s": s})

    def _conectar(self):
        import psycopg

        no = self.pilha.nos()[0]
        conn = psycopg.connect(
            f"host={no['pgrun']} port={no['porta']} dbname=crebito user=postgres application_name=bench-registro",
            autocommit=True,
        )
        pid = conn.execute("select pg_catalog.pg_backend_pid()").fetchone()[0]
        if self.cgrupos is not None and self.cgrupos.modo == "v1":
            # Out of the stack's cgroups: this session is the bench's, not the stack's.
            for h in ("cpu", "cpuacct", "memory"):
                try:
                    with open(os.path.join(self.cgrupos.V1, h, "cgroup.procs"), "w") as f:
                        f.write(str(pid))
                except OSError:
                    pass
        return conn

    def _cgrupos(self):
        r = {}
        if self.cgrupos is None or not self.cgrupos.modo:
            return r
        for nome in self.cgrupos.limites:
            e = self.cgrupos.eventos(nome)
            r[nome] = (e.get("periodos_estrangulados", 0), e.get("estrangulado_s", 0.0))
        return r

    def _uso(self):
        """{component: (cgroup CPU s, memory MB)}: what the load report draws
        against each component's quota and limit."""
        if self.cgrupos is None or not self.cgrupos.modo:
            return {}
        return {nome: (self.cgrupos.cpu_s(nome), self.cgrupos.uso_mb(nome)) for nome in self.cgrupos.limites}

    def _por_segundo(self):
        conn = self._conectar()
        # pg_stat_wal counts the flushes' time only with this on (a clock read
        # around each write and flush); the stack under measurement is a fresh,
        # throwaway one.
        conn.execute("alter system set track_wal_io_timing = on")
        conn.execute("select pg_catalog.pg_reload_conf()")
        anterior = None
        while True:
            try:
                pids = self.pilha.pids()
                atual = {
                    "cpu": cpu_por_papel(pids),
                    "maquina": cpu_da_maquina(),
                    "pressao": pressao(),
                    "vm": recuperacao(),
                    "pg": dict(zip(NOMES_PG, conn.execute(CONTADORES_PG).fetchone(), strict=True)),
                    "cg": self._cgrupos(),
                    "uso": self._uso(),
                }
            except Exception as e:  # noqa: BLE001 - the record must not end the run
                self.erros.append(repr(e))
                atual = None
            agora = time.monotonic()
            if atual is not None and anterior is not None:
                with self._trava:
                    self._anotar(self._segundo(agora - 0.5), anterior, atual)
            if atual is not None:
                anterior = atual
            if self._parar.wait(1.0 - (time.monotonic() - self.t0) % 1.0):
                break
        conn.close()

    def _anotar(self, seg, a, b):
        seg["cpu_ms"] = {k: round(1000 * v, 1) for k, v in _diferenca(b["cpu"], a["cpu"]).items() if v > 0}
        ticks = _diferenca(b["maquina"], a["maquina"])
        total = sum(ticks.values()) or 1
        seg["maquina_pct"] = {k: round(100 * v / total, 1) for k, v in ticks.items()}
        seg["pressao_ms"] = {k: round(v / 1000, 1) for k, v in _diferenca(b["pressao"], a["pressao"]).items()}
        seg["vm"] = _diferenca(b["vm"], a["vm"])
        pg = {k: (b["pg"][k] if k in MEDIDAS_PG else b["pg"][k] - a["pg"][k]) for k in NOMES_PG}
        pg["wal_flush_ms"] = round(float(pg["wal_flush_ms"]), 2)
        seg["pg"] = pg
        seg["estrangulado"] = {
            nome: {"periodos": n - a["cg"][nome][0], "ms": round(1000 * (t - a["cg"][nome][1]), 1)}
            for nome, (n, t) in b["cg"].items()
            if nome in a["cg"] and n > a["cg"][nome][0]
        }
        seg["cgrupo"] = {
            nome: {
                "cpu_ms": _cpu_ms(a["uso"].get(nome, (None,))[0], cpu),
                "mem_mb": None if mb is None else round(mb, 1),
            }
            for nome, (cpu, mb) in b["uso"].items()
        }

    def _esperas(self):
        conn = self._conectar()
        while not self._parar.wait(1 / ESPERAS_POR_S):
            try:
                linhas = conn.execute(ESPERAS_SQL).fetchall()
            except Exception as e:  # noqa: BLE001
                self.erros.append(repr(e))
                continue
            with self._trava:
                seg = self._segundo()
                seg["amostras_esperas"] = seg.get("amostras_esperas", 0) + 1
                esperas = seg.setdefault("esperas", {})
                for quem, espera in linhas:
                    chave = f"{quem}:{espera}"
                    esperas[chave] = esperas.get(chave, 0) + 1
        conn.close()

    def _sonda(self):
        """fdatasync latency of the stack's disk, and this thread's wake-up lag."""
        caminho = os.path.join(self.pilha.var, "registro-sonda")
        fd = os.open(caminho, os.O_WRONLY | os.O_CREAT, 0o600)
        bloco = b"\0" * 8192
        try:
            proximo = time.monotonic()
            while not self._parar.is_set():
                proximo += PERIODO_PROBE
                espera = proximo - time.monotonic()
                if espera > 0:
                    time.sleep(espera)
                inicio = time.monotonic()
                atraso = max(0.0, inicio - proximo)
                os.pwrite(fd, bloco, 0)
                os.fdatasync(fd)
                fsync = time.monotonic() - inicio
                with self._trava:
                    seg = self._segundo(inicio)
                    sonda = seg.setdefault("sonda", {"n": 0, "fsync_max_ms": 0.0, "fsync_soma_ms": 0.0})
                    sonda["n"] += 1
                    sonda["fsync_max_ms"] = round(max(sonda["fsync_max_ms"], 1000 * fsync), 2)
                    sonda["fsync_soma_ms"] = round(sonda["fsync_soma_ms"] + 1000 * fsync, 2)
                    sonda["atraso_max_ms"] = round(max(sonda.get("atraso_max_ms", 0.0), 1000 * atraso), 2)
                if proximo < time.monotonic() - 1:
                    proximo = time.monotonic()  # fell far behind: do not burst to catch up
        finally:
            os.close(fd)
            os.unlink(caminho)

    def iniciar(self):
        self.t0 = time.monotonic()
        self.inicio_epoch = time.time()
        for alvo in (self._por_segundo, self._esperas, self._sonda):
            t = threading.Thread(target=self._executar, args=(alvo,), daemon=True)
            t.start()
            self._threads.append(t)

    def _executar(self, alvo):
        try:
            alvo()
        except Exception as e:  # noqa: BLE001 - a sampler that fails leaves its columns empty
            self.erros.append(f"{alvo.__name__}: {e!r}")

    def parar(self):
        self._parar.set()
        for t in self._threads:
            t.join(timeout=5)
        with self._trava:
            return {
                "inicio_epoch": self.inicio_epoch,
                "erros": self.erros[:20],
                # Each component's (CPUs, MB): the quota and limit its cgrupo figures are drawn against.
                "limites": {n: list(v) for n, v in (self.cgrupos.limites if self.cgrupos else {}).items()},
                "segundos": [self.segundos[s] for s in sorted(self.segundos)],
            }


# -- reading it beside the latency ---------------------------------------------------


def _mediana(valores):
    valores = sorted(valores)
    return valores[len(valores) // 2] if valores else 0


# Thresholds of one recorded second: (group, key, at least, kind, sentence).
LIMIARES = (
    ("maquina_pct", "steal", 5, "steal", "steal {}%"),
    ("maquina_pct", "iowait", 10, "iowait", "iowait {}%"),
    ("pressao_ms", "cpu_some", 200, "pressão de CPU", "pressão de CPU {:.0f} ms/s"),
    ("pressao_ms", "io_some", 100, "pressão de E/S", "pressão de E/S {:.0f} ms/s"),
    ("pressao_ms", "memory_some", 1, "recuperação de memória", "pressão de memória {:.0f} ms/s"),
    ("vm", "reclaim_paginas", 1, "recuperação de memória", "{} páginas varridas pela recuperação de memória"),
    ("sonda", "fsync_max_ms", 5, "disco lento", "fdatasync da sonda {} ms"),
    ("sonda", "atraso_max_ms", 5, "máquina atrasou a sonda", "sonda acordou {} ms atrasada"),
)


def sinais(seg, anterior=None):
    """The events of one recorded second that can stall a request, as
    (kind, sentence) pairs; an empty list when nothing unusual happened."""
    r = []
    for nome, e in (seg.get("estrangulado") or {}).items():
        r.append(("cgroup estrangulado", f"cgroup {nome} estrangulado ({e['periodos']} períodos, {e['ms']} ms)"))
    for grupo, chave, limiar, tipo, frase in LIMIARES:
        valor = (seg.get(grupo) or {}).get(chave, 0)
        if valor >= limiar:
            r.append((tipo, frase.format(valor)))
    pg = seg.get("pg") or {}
    if pg.get("wal_flushes") and pg["wal_flush_ms"] / pg["wal_flushes"] >= 1:
        r.append(("flush do WAL lento", f"flush do WAL {pg['wal_flush_ms'] / pg['wal_flushes']:.1f} ms em média"))
    if pg.get("checkpoints") or pg.get("buffers_checkpoint"):
        r.append(("checkpoint", "checkpoint"))
    if pg.get("autovacuums") or pg.get("autoanalyzes"):
        texto = f"autovacuum terminou ({pg.get('autovacuums', 0)} vacuum, {pg.get('autoanalyzes', 0)} analyze)"
        r.append(("autovacuum", texto))
    if anterior and pg.get("segmentos", 0) > (anterior.get("pg") or {}).get("segmentos", 1e9):
        r.append(("segmento de WAL novo", "segmento de WAL novo"))
    for chave, n in sorted((seg.get("esperas") or {}).items()):
        quem, espera = chave.split(":", 1)
        tipo = espera.split(":")[0]
        # A single sample of a lock wait is an ordinary queue of a request or
        # two; sessions queue on WALWrite while one flushes for them all (group
        # commit): an event only when they spend a quarter of the second there.
        if quem == "api" and tipo in ("Lock", "LWLock", "BufferPin") and n >= (5 if espera == "LWLock:WALWrite" else 2):
            r.append((f"API em {espera}", f"sessões da API em {espera} ({n} amostras)"))
        elif quem == "autovacuum worker":
            r.append(("autovacuum", f"autovacuum ativo: {espera} ({n} amostras)"))
        elif quem == "checkpointer" and tipo == "IO":
            r.append(("checkpoint", f"checkpointer em {espera} ({n} amostras)"))
    return r


def episodios(serie, gravado):
    """The stalls of a run's latency series (carga.py's per-second p50..max)
    and, for each, what the record shows in the same seconds (±1).

    A spike is a second whose max is at least 5 ms and 4× the run's median
    per-second max; an episode, two or more seconds in a row (one quiet second
    may interrupt) whose p95 is at least 3 ms and 3× the run's median p95.
    Also returns how often each kind of event happened in the whole run, so a
    coincidence can be told from a cause."""
    deslocamento = gravado.get("deslocamento_s", 0.0)
    por_s = {g["s"]: g for g in gravado["segundos"]}
    cheios = [x for x in serie if x["req"]]
    med_max = _mediana([x["max"] for x in cheios])
    med_p95 = _mediana([x["p95"] for x in cheios])
    altos = [x["s"] for x in cheios if x["p95"] >= max(3, 3 * med_p95)]
    trechos = []
    for s in altos:
        if trechos and s - trechos[-1][1] <= 2:
            trechos[-1][1] = s
        else:
            trechos.append([s, s])
    achados = [{"tipo": "episódio", "de": a, "ate": b} for a, b in trechos if b > a]
    em_episodio = {s for e in achados for s in range(e["de"], e["ate"] + 1)}
    achados += [
        {"tipo": "pico", "de": x["s"], "ate": x["s"]}
        for x in cheios
        if x["max"] >= max(5, 4 * med_max) and x["s"] not in em_episodio
    ]
    achados.sort(key=lambda a: a["de"])

    def eventos_em(s_carga):
        s = int(round(s_carga + deslocamento))
        r = sinais(por_s.get(s, {}), por_s.get(s - 1))
        if fase3 is not None and s_carga < fase3:
            r.append(("rajadas de validação", "rajadas de validação: 25 pedidos simultâneos, duas vezes"))
        return r

    fase3 = gravado.get("inicio_fase3_s")
    for a in achados:
        trecho = [x for x in serie if a["de"] <= x["s"] <= a["ate"]]
        a["p95_max_ms"] = max(x["p95"] for x in trecho)
        a["max_ms"] = max(x["max"] for x in trecho)
        vistos = {}
        for s in range(a["de"] - 1, a["ate"] + 2):
            for tipo, texto in eventos_em(s):
                vistos.setdefault(tipo, texto)
        a["eventos"] = list(vistos.values())
    frequencia = {}
    for g in gravado["segundos"]:
        for tipo in {t for t, _ in sinais(g, por_s.get(g["s"] - 1))}:
            frequencia[tipo] = frequencia.get(tipo, 0) + 1
    return {
        "mediana_max_ms": med_max,
        "mediana_p95_ms": med_p95,
        "achados": achados,
        "segundos_registrados": len(gravado["segundos"]),
        "frequencia_dos_eventos": frequencia,
    }


def texto_episodios(r):
    linhas = [
        f"paradas (mediana por segundo: p95 {r['mediana_p95_ms']} ms, max {r['mediana_max_ms']} ms);"
        f" eventos em {r['segundos_registrados']} s registrados: "
        + (", ".join(f"{k} {v}×" for k, v in sorted(r["frequencia_dos_eventos"].items())) or "nenhum")
    ]
    for a in r["achados"]:
        quando = f"{a['de']} s" if a["de"] == a["ate"] else f"{a['de']}–{a['ate']} s"
        linhas.append(
            f"  {a['tipo']} em {quando}: p95 até {a['p95_max_ms']} ms, max {a['max_ms']} ms <- "
            + ("; ".join(a["eventos"]) or "nada no registro")
        )
    if not r["achados"]:
        linhas.append("  nenhuma")
    return "\n".join(linhas)
