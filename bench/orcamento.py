"""The official budget, applied: a fresh native stack with each component in
its own cgroup (CPU quota and memory limit as compose.yml declares them), the
official load test (carga.py) against it, and what each component used.

    sudo .venv/bin/python bench/orcamento.py [--rampa 120 --platô 120] [--memoria-total 200] [--perfil]

Reports the start time (launch to first 200), per component CPU seconds, peak
memory (cgroup), peak PSS, throttling, and the stack's CPU milliseconds per
request (all components and the Python share). `--perfil` also samples one
API worker with py-spy and ranks the database's statements with
pg_stat_statements (loaded through bench/pg_stat_statements.conf).
"""

import argparse
import collections
import http.client
import json
import os
import shutil
import subprocess
import sys
import threading
import time

import pilha
import pisos
import registro
import relatorio

AQUI = os.path.dirname(os.path.abspath(__file__))
PG_STAT_CONF = os.path.join(AQUI, "pg_stat_statements.conf")


def pyspy(pid, segundos, destino):
    """py-spy on one worker: the raw collapsed stacks, ranked by own samples."""
    exe = shutil.which("py-spy") or os.path.join(pilha.RAIZ, ".venv", "bin", "py-spy")
    if not os.path.exists(exe):
        return {"erro": "py-spy não instalado (.venv/bin/pip install py-spy)"}
    bruto = destino + ".txt"
    cmd = [exe, "record", "-d", str(segundos), "-r", "250", "-p", str(pid), "-o", bruto, "--format", "raw", "--native"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0 or not os.path.exists(bruto):
        return {"erro": (r.stderr or r.stdout)[-500:]}
    proprio, inclusivo, total = collections.Counter(), collections.Counter(), 0
    with open(bruto) as f:
        for linha in f:
            pilha_txt, _, n = linha.rstrip("\n").rpartition(" ")
            n = int(n)
            quadros = pilha_txt.split(";")
            total += n
            proprio[quadros[-1]] += n
            for q in set(quadros):
                inclusivo[q] += n
    return {
        "amostras": total,
        "arquivo": bruto,
        "proprio": [(q, round(100 * n / total, 1)) for q, n in proprio.most_common(15)],
        "inclusivo": [(q, round(100 * n / total, 1)) for q, n in inclusivo.most_common(25)],
    }


def um_worker(p, instancia, limite=10):
    """A worker of the instance: the first 200 may come from the other
    instance while this one is still forking its workers."""
    fim = time.monotonic() + limite
    while True:
        mestre = p.pid(instancia)
        workers = [x for x in pilha.arvore(mestre) if x != mestre]
        if workers or time.monotonic() > fim:
            return workers[0] if workers else mestre
        time.sleep(0.1)


def pg_stat_statements(p):
    sql = (
        "select round(total_exec_time::numeric, 1) as total_ms, calls,"
        " round((total_exec_time / calls)::numeric, 4) as media_ms, toplevel,"
        " regexp_replace(left(query, 110), '\\s+', ' ', 'g') as consulta"
        " from pg_stat_statements where calls > 0 order by total_exec_time desc limit 15"
    )
    r = subprocess.run(["psql", "-X", *p.pg(), "-A", "-F", " | ", "-c", sql], capture_output=True, text=True)
    return r.stdout if r.returncode == 0 else r.stderr


class Raspador(threading.Thread):
    """What `make observar`'s Prometheus asks of the stack, every second: each
    metrics endpoint in <var>/metricas.json (stack/metricas.py), so a run
    shows what the exporters add to a request."""

    def __init__(self, var):
        super().__init__(daemon=True)
        with open(os.path.join(var, "metricas.json")) as f:
            self.enderecos = [a["endereco"] for a in json.load(f)]
        self.parar = threading.Event()
        self.feitas = self.falhas = 0

    def run(self):
        while not self.parar.wait(1.0):
            for endereco in self.enderecos:
                host, porta = endereco.rsplit(":", 1)
                conn = http.client.HTTPConnection(host, int(porta), timeout=5)
                try:
                    conn.request("GET", "/metrics")
                    conn.getresponse().read()
                    self.feitas += 1
                except (OSError, http.client.HTTPException):
                    self.falhas += 1
                finally:
                    conn.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rampa", type=float, default=120)
    ap.add_argument("--platô", "--plato", dest="plato", type=float, default=120)
    ap.add_argument("--escala", type=float, default=1.0)
    ap.add_argument("--perfil", action="store_true", help="py-spy on one API worker and pg_stat_statements")
    ap.add_argument("--pisos", default=None, help="pisos.json of bench/pisos.py: each component against its floor")
    ap.add_argument("--raspar", action="store_true", help="GET every metrics endpoint each second, as Prometheus")
    pilha.opcoes_do_orcamento(ap)
    args = ap.parse_args()
    saida = pilha.pasta_de_saida(args, "orcamento")
    pg_conf = args.pg_conf
    if args.perfil and not pg_conf:
        pg_conf = PG_STAT_CONF

    with pilha.PilhaNoOrcamento(args.memoria_total, args.compose, pg_conf, args.workers, saida, args.arvore) as pn:
        p = pn.pilha
        if args.perfil:
            subprocess.run(["psql", "-X", "-q", *p.pg(), "-c", "create extension if not exists pg_stat_statements"])
        medidor = pilha.Medidor(p, pn.cgrupos, a_cada_amostra=pn.confinar)
        perfil = {}
        if args.perfil:
            # Sample a worker of api01 in the middle of the run.
            worker = um_worker(p, "api01")
            meio = max(0.0, (args.rampa + args.plato) / 2 - 5)

            def perfilar():
                time.sleep(meio)
                perfil["py_spy"] = pyspy(worker, 10, os.path.join(saida, "py-spy-api01"))
                pids_banco = pilha.arvore(p.pid("postgres"))
                perfil["perf_banco"] = pilha.perf_banco(pids_banco, 10, os.path.join(saida, "perf-postgres"))

            t_perfil = threading.Thread(target=perfilar, daemon=True)
        gravador = registro.RegistroPorSegundo(p, pn.cgrupos)
        gravador.iniciar()
        raspador = Raspador(p.var) if args.raspar else None
        if raspador:
            raspador.start()
        medidor.iniciar()
        if args.perfil:
            esperas = pilha.AmostradorEsperas(p)
            esperas.iniciar()
            t_perfil.start()
        carga_saida = os.path.join(saida, "carga")
        cmd = [
            sys.executable,
            os.path.join(AQUI, "carga.py"),
            "--url",
            p.url,
            "--rampa",
            str(args.rampa),
            "--platô",
            str(args.plato),
            "--escala",
            str(args.escala),
            "--saida",
            carga_saida,
        ]
        rc = subprocess.run(cmd).returncode
        medidor.parar()
        if raspador:
            raspador.parar.set()
            raspador.join()
            pilha.log(f"raspagens: {raspador.feitas} ({raspador.falhas} falharam)")
        gravado = gravador.parar()
        if args.perfil:
            perfil["esperas_do_banco"] = esperas.parar()
        with open(os.path.join(carga_saida, "carga.json")) as f:
            carga = json.load(f)
        r = medidor.resultado(carga["total"])
        r["tempo_ate_primeiro_200_s"] = round(p.tempo_ate_200, 3)
        r["cgroups"] = pn.cgrupos.modo
        r["orcamento"] = {"fonte": pn.fonte_orcamento, "limites": pn.limites}
        r["reiniciados"] = pn.reiniciados()
        r["carga"] = {k: carga[k] for k in ("total", "ko", "motivos_ko", "pontuacao", "cpu_da_carga")}
        r["carga"]["all"] = carga["grupos"]["all"]
        gravado["deslocamento_s"] = round(carga["inicio_epoch"] - gravado["inicio_epoch"], 3)
        gravado["inicio_fase3_s"] = carga["inicio_fase3_s"]
        pilha.salvar_json(os.path.join(saida, "registro.json"), gravado)
        # carga.py wrote its report before the record ended: drawn again with it.
        relatorio.escrever(carga_saida, carga, gravado)
        r["paradas"] = registro.episodios(carga["serie"], gravado)
        if args.pisos:
            with open(args.pisos) as f:
                r["pisos"] = pisos.multiplos(r, json.load(f))
        if args.perfil:
            t_perfil.join(timeout=60)
            r["perfil"] = perfil
            r["perfil"]["pg_stat_statements"] = pg_stat_statements(p)
        auditoria = subprocess.run(
            ["psql", "-X", "-A", "-t", *p.pg(), "-c", "select count(*) from api.auditoria()"],
            capture_output=True,
            text=True,
        )
        r["violacoes_auditoria"] = auditoria.stdout.strip() or auditoria.stderr.strip()

    print()
    print(f"primeiro 200 em {r['tempo_ate_primeiro_200_s']} s; cgroups: {r['cgroups'] or 'nenhum (sem limites)'}")
    print(pilha.tabela_orcamento(r))
    a = r["carga"]["all"]
    print(
        f"carga: USD {r['carga']['pontuacao']['usd']:.2f}, {r['carga']['ko']} KO, p99 {a['ms']['p99']} ms,"
        f" max {a['ms']['max']} ms; violações na auditoria: {r['violacoes_auditoria']}"
    )
    print(registro.texto_episodios(r["paradas"]))
    for nome, m in r.get("pisos", {}).items():
        print(f"{nome}: {m['ms']} ms por requisição = {m['multiplo']}x o piso ({m['piso_ms']} ms)")
    if r["reiniciados"]:
        print(f"ATENÇÃO: o launcher reiniciou {r['reiniciados']}; veja {saida}/pilha.log")
    if args.perfil:
        py = r["perfil"].get("py_spy", {})
        if "erro" in py:
            print("py-spy:", py["erro"])
        else:
            print(f"py-spy ({py.get('amostras')} amostras de um worker de api01), tempo próprio:")
            for q, pct in py.get("proprio", []):
                print(f"  {pct:5.1f}%  {q}")
        print("sessões da API no banco (pg_stat_activity, % das amostras):")
        for estado, pct in list(r["perfil"]["esperas_do_banco"]["pct"].items())[:10]:
            print(f"  {pct:5.1f}%  {estado}")
        perf = r["perfil"].get("perf_banco")
        if perf and "erro" not in perf:
            print("perf no banco (CPU própria por biblioteca e por símbolo):")
            for linha in perf["dso"][:5] + perf["simbolos"][:15]:
                print(f"  {linha}")
        elif perf:
            print("perf:", perf["erro"])
        print("pg_stat_statements:")
        print(r["perfil"]["pg_stat_statements"])
    pilha.salvar_json(os.path.join(saida, "orcamento.json"), r)
    print(f"figuras em {saida}/orcamento.json")
    return rc


if __name__ == "__main__":
    sys.exit(main())
