"""Supervising a stack's processes, whatever the topology: each is data (its
command, user, environment, how it stops), started in order, started again
when it dies, stopped front to back.

A process whose `<var>/<name>.fora` file exists is not started again when it
dies: an operator takes a node out that way (and the HA tests lose a machine),
and puts it back by removing the file.
"""

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field


def substituir(caminho, texto):
    """Writes the file whole under another name, then puts it in place: a
    reader (a test, bench/, an exporter) never finds it empty or half written."""
    with open(caminho + ".novo", "w") as f:
        f.write(texto)
    os.replace(caminho + ".novo", caminho)


def log(msg):
    print(f"crebito: {msg}", file=sys.stderr, flush=True)


@dataclass
class Processo:
    nome: str
    cmd: list
    env: dict | None = None
    # Popen's user, group and extra_groups, to run as another OS user.
    como: dict = field(default_factory=dict)
    sinal_de_parada: int = signal.SIGTERM
    # Stopped in increasing order: the front first, the database last.
    ordem_de_parada: int = 0
    espera_de_parada: float = 20
    # Descriptors it inherits: a socket the launcher bound for it once, which
    # no restart can then lose to another process.
    fds: tuple = ()


class Supervisor:
    def __init__(self, var):
        self.var = var
        self.definidos = {}  # nome -> Processo
        self.rodando = {}  # nome -> (Popen, started_at)
        self.parando = False

    def fora(self, nome):
        return os.path.exists(os.path.join(self.var, f"{nome}.fora"))

    def iniciar(self, processo):
        self.definidos[processo.nome] = processo
        # Own session: Ctrl-C reaches only the launcher, which stops the rest in order.
        proc = subprocess.Popen(
            processo.cmd, env=processo.env, start_new_session=True, cwd="/", pass_fds=processo.fds, **processo.como
        )
        self.rodando[processo.nome] = (proc, time.monotonic())
        substituir(os.path.join(self.var, f"{processo.nome}.pid"), f"{proc.pid}\n")
        return proc

    def proc(self, nome):
        return self.rodando[nome][0]

    def supervisionar(self):
        while not self.parando:
            time.sleep(0.1)
            for nome, (proc, inicio) in list(self.rodando.items()):
                if self.parando or proc.poll() is None or self.fora(nome):
                    continue
                log(f"{nome} exited with {proc.returncode}; restarting")
                if time.monotonic() - inicio < 1:
                    time.sleep(0.5)  # a process that dies at once must not spin
                self.iniciar(self.definidos[nome])

    def parar(self):
        self.parando = True
        log("stopping")
        for nome in sorted(self.rodando, key=lambda n: self.definidos[n].ordem_de_parada):
            proc = self.proc(nome)
            if proc.poll() is None:
                proc.send_signal(self.definidos[nome].sinal_de_parada)
            try:
                proc.wait(timeout=self.definidos[nome].espera_de_parada)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
