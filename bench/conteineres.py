"""The official profile (carga.py) against the compose stack and the native
stack, side by side in one run: each round starts a fresh native stack in its
cgroups (as orcamento.py) and a fresh compose stack (`up` on an empty volume),
one after the other, and measures each under the same load.

    sudo .venv/bin/python bench/conteineres.py                      # 3 rounds, the full profile
    sudo .venv/bin/python bench/conteineres.py --rampa 60 --platô 60 --rodadas 1

Containers: CPU and memory per component from the engine's cgroups (v1:
/sys/fs/cgroup/{cpu,cpuacct,memory}/<the container's group>), with the same
code that reads the native stack's groups. Whatever receives the port
outside every container (docker-proxy, where a port is published) is outside
every budget too: its processes and CPU are reported apart (none, with
compose.yml's HAProxy in the host's network).
The engine is the one DOCKER_HOST names, or a private one (docker/motor.py).
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

import pilha

AQUI = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(pilha.RAIZ, "docker"))
sys.path.insert(0, os.path.join(pilha.RAIZ, "stack"))
import launcher  # noqa: E402
import motor  # noqa: E402
from projeto import Projeto  # noqa: E402

SERVICO = {"postgres": "db", "api01": "api01", "api02": "api02", "haproxy": "haproxy"}


class CgruposDoEngine(pilha.Cgrupos):
    """The groups the engine made for each container, read as pilha.Cgrupos
    reads its own: nothing is created, moved or removed here."""

    def __init__(self, projeto, limites):
        self.projeto = projeto
        self.diretorios = {nome: self._do_container(projeto.pid(SERVICO[nome])) for nome in pilha.COMPONENTES}
        super().__init__(limites)

    @staticmethod
    def _do_container(pid):
        dirs = {}
        with open(f"/proc/{pid}/cgroup") as f:
            for linha in f:
                _, controladores, caminho = linha.rstrip("\n").split(":", 2)
                for c in ("cpu", "cpuacct", "memory"):
                    if c in controladores.split(","):
                        dirs[c] = os.path.join(pilha.Cgrupos.V1, controladores, caminho[1:])
        return dirs

    def _detectar(self):
        if all(set(d) == {"cpu", "cpuacct", "memory"} for d in self.diretorios.values()):
            return "v1"
        pilha.log("os cgroups dos contêineres não são v1: sem contadores de cgroup, CPU medida em /proc")
        return None

    def _dirs(self, componente):
        return self.diretorios[componente]

    def criar(self):
        pass

    def mover(self, componente, pids):
        pass

    def remover(self):
        pass


class PilhaCompose:
    """What pilha.Medidor reads of a stack, for the compose one."""

    class _SemLauncher:
        pid = -1

    def __init__(self, projeto):
        self.projeto = projeto
        self.launcher = self._SemLauncher()
        self._pids = {nome: projeto.pid(servico) for nome, servico in SERVICO.items()}

    @property
    def url(self):
        return f"http://127.0.0.1:{self.projeto.porta}"

    def pid(self, nome):
        return self._pids[nome]

    def pids(self, tabela=None):
        tabela = tabela if tabela is not None else pilha.processos()
        return {nome: pilha.arvore(self.pid(nome), tabela) for nome in pilha.COMPONENTES}


def _socket_inodes(porta):
    """Inodes of the sockets listening on TCP porta in this network namespace."""
    inodes = set()
    for arquivo in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(arquivo) as f:
            for linha in list(f)[1:]:
                campos = linha.split()
                if campos[3] == "0A" and int(campos[1].rsplit(":", 1)[1], 16) == porta:
                    inodes.add(f"socket:[{campos[9]}]")
    return inodes


def _em_conteiner(pid):
    with open(f"/proc/{pid}/cgroup") as f:
        return any("docker" in linha.split(":", 2)[2] for linha in f)


def fora_dos_conteineres(porta):
    """{pid: command} of the processes outside every container that listen on
    the host's porta: docker-proxy where the port is published, none where a
    container binds it in the host's network."""
    inodes = _socket_inodes(porta)
    achados = {}
    for nome in os.listdir("/proc"):
        if not nome.isdigit():
            continue
        try:
            fds = os.listdir(f"/proc/{nome}/fd")
            if any(os.readlink(f"/proc/{nome}/fd/{fd}") in inodes for fd in fds) and not _em_conteiner(nome):
                with open(f"/proc/{nome}/comm") as f:
                    achados[int(nome)] = f.read().strip()
        except OSError:
            continue
    return achados


def cpu_s(pids):
    tabela = pilha.processos()
    return sum(tabela[p][1] for p in pids if p in tabela)


def medir(p, cgrupos, args, saida, extra_cpu=None):
    """carga.py against p, measured as orcamento.py measures it."""
    medidor = pilha.Medidor(p, cgrupos)
    medidor.iniciar()
    fora0 = extra_cpu() if extra_cpu else 0.0
    carga_saida = os.path.join(saida, "carga")
    cmd = [sys.executable, os.path.join(AQUI, "carga.py"), "--url", p.url, "--saida", carga_saida]
    subprocess.run([*cmd, "--rampa", str(args.rampa), "--platô", str(args.plato)], stdout=subprocess.DEVNULL)
    medidor.parar()
    with open(os.path.join(carga_saida, "carga.json")) as f:
        carga = json.load(f)
    r = medidor.resultado(carga["total"])
    if extra_cpu:
        r["cpu_s_fora"] = round(extra_cpu() - fora0, 2)
    r["carga"] = {k: carga[k] for k in ("total", "ko", "motivos_ko", "pontuacao")}
    r["carga"]["all"] = carga["grupos"]["all"]
    return r


def rodada_nativa(args, saida):
    with pilha.PilhaNoOrcamento(saida=saida) as pn:
        r = medir(pn.pilha, pn.cgrupos, args, saida)
        r["tempo_ate_primeiro_200_s"] = round(pn.pilha.tempo_ate_200, 2)
        r["reiniciados"] = pn.reiniciados()
    return r


def rodada_docker(projeto, args, saida):
    limites, _ = pilha.orcamento()
    t0 = time.perf_counter()
    try:
        projeto.compose("up", "-d", "--no-build", capture_output=True)
        if not launcher.esperar_200(projeto.porta, limite=120):
            raise RuntimeError(f"sem 200 na porta {projeto.porta} em 120s")
        ate_200 = time.perf_counter() - t0
        p = PilhaCompose(projeto)
        cgrupos = CgruposDoEngine(projeto, limites)
        fora = fora_dos_conteineres(projeto.porta)
        r = medir(p, cgrupos, args, saida, extra_cpu=lambda: cpu_s(fora))
        r["fora_dos_conteineres"] = sorted(set(fora.values()))
        r["tempo_ate_primeiro_200_s"] = round(ate_200, 2)
        r["reinicios"] = {s: projeto.inspecionar(s)["RestartCount"] for s in SERVICO.values()}
        [[violacoes]] = projeto.psql("select count(*) from api.auditoria()")
        r["violacoes_auditoria"] = int(violacoes)
    finally:
        projeto.descer()
    return r


def linha(nome, r):
    a, c = r["carga"]["all"], r["componentes"]
    ms = {n: 1000 * (v["cpu_s_cgroup"] or v["cpu_s_proc"]) / r["requisicoes"] for n, v in c.items()}
    texto = (
        f"{nome:<8} USD {r['carga']['pontuacao']['usd']:>9.2f} KO {r['carga']['ko']:>3}"
        f"  p99 {a['ms']['p99']:>3} ms  max {a['ms']['max']:>4} ms"
        f"  CPU ms/req: pilha {r['cpu_ms_por_requisicao']:.4f} ("
        + ", ".join(f"{n} {v:.4f}" for n, v in ms.items())
        + ")  pico MB: "
        + ", ".join(f"{n} {v['pico_mb_cgroup']}" for n, v in c.items())
    )
    if "cpu_s_fora" in r:
        quem = ", ".join(r["fora_dos_conteineres"]) or "nenhum processo"
        texto += f"  fora dos contêineres ({quem}) {1000 * r['cpu_s_fora'] / r['requisicoes']:.4f} ms/req"
    return texto + f"  primeiro 200 em {r['tempo_ate_primeiro_200_s']} s"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rampa", type=float, default=120)
    ap.add_argument("--platô", "--plato", dest="plato", type=float, default=120)
    ap.add_argument("--rodadas", type=int, default=3)
    ap.add_argument("--saida", default=None, help="folder for the figures (default: bench/results/conteineres-<date>)")
    args = ap.parse_args()
    saida = pilha.pasta_de_saida(args, "conteineres")
    # A SIGTERM unwinds as Ctrl-C does: the stacks and a private engine stop.
    motor.interromper_com_sinais()
    rodadas = []
    with motor.motor() as env:
        marca = uuid.uuid4().hex[:8]
        projeto = Projeto(env, nome=f"crebito-bench-{marca}", porta=pilha.porta_livre(), tag=f"bench-{marca}")
        segredo = tempfile.mkdtemp(prefix="crebito-senha-")
        projeto.env["CREBITO_SENHA_API"] = os.path.join(segredo, "crebito_api.pgpass")
        try:
            projeto.construir(sempre=True)
            for n in range(args.rodadas):
                rodada = {}
                for nome in ("nativa", "docker"):
                    pasta = os.path.join(saida, f"{n + 1}-{nome}")
                    os.makedirs(pasta, exist_ok=True)
                    pilha.log(f"rodada {n + 1}: pilha {nome}")
                    if nome == "nativa":
                        rodada[nome] = rodada_nativa(args, pasta)
                    else:
                        rodada[nome] = rodada_docker(projeto, args, pasta)
                    print(f"rodada {n + 1}: {linha(nome, rodada[nome])}", flush=True)
                rodadas.append(rodada)
        finally:
            projeto.descer()
            for nome in ("db", "api", "haproxy"):
                projeto.docker("rmi", projeto.imagem(nome), capture_output=True, check=False)
            shutil.rmtree(segredo, ignore_errors=True)
    print()
    for nome in ("nativa", "docker"):
        rs = [r[nome] for r in rodadas]
        med = {
            "usd": statistics.median(r["carga"]["pontuacao"]["usd"] for r in rs),
            "ko": statistics.median(r["carga"]["ko"] for r in rs),
            "p99": statistics.median(r["carga"]["all"]["ms"]["p99"] for r in rs),
            "max": statistics.median(r["carga"]["all"]["ms"]["max"] for r in rs),
            "cpu_ms": statistics.median(r["cpu_ms_por_requisicao"] for r in rs),
        }
        fora = [1000 * r["cpu_s_fora"] / r["requisicoes"] for r in rs if "cpu_s_fora" in r]
        print(
            f"mediana de {len(rs)} ({nome}): USD {med['usd']:.2f}, KO {med['ko']}, p99 {med['p99']} ms,"
            f" max {med['max']} ms, CPU {med['cpu_ms']:.4f} ms/req"
            + (f", fora dos contêineres {statistics.median(fora):.4f} ms/req" if fora else "")
        )
    pilha.salvar_json(os.path.join(saida, "conteineres.json"), {"args": vars(args), "rodadas": rodadas})
    print(f"figuras em {saida}/conteineres.json")


if __name__ == "__main__":
    sys.exit(main())
