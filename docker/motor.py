"""A Docker engine to talk to: the one DOCKER_HOST (or the default socket)
names when it answers; otherwise, when running as root, a private dockerd
whose every file lives in one folder, stopped when the block that started it
ends, however it ends (Ctrl-C and SIGTERM included, at any moment).

Two kinds of private engine:
- with `dados` (make docker): images and volumes stay in that folder between
  runs, and the engine's own files (socket, exec root, pid file, log, a lock)
  are in its `motor/` subfolder. One run at a time holds the lock; an engine
  that an earlier run left running on the folder (that run was killed with
  SIGKILL, or the machine died) is reused when it answers and stopped
  otherwise, so two engines never share one data folder.
- without (tests, benchmarks): everything in a new temporary directory,
  removed afterwards.

A private engine changes nothing outside its folder: no iptables rules
(--iptables=false), no ip_forward (--ip-forward=false), no default bridge
(--bridge=none), its own containerd namespace, an empty daemon.json instead
of /etc/docker's.

    python docker/motor.py     # starts a private engine (if none answers) and
                               # prints its DOCKER_HOST until Ctrl-C
"""

import contextlib
import fcntl
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid

INTERRUPCOES = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def log(msg):
    print(f"crebito: {msg}", file=sys.stderr, flush=True)


def interromper_com_sinais():
    """SIGTERM and SIGHUP unwind as Ctrl-C does, so every `finally` runs."""
    for sinal in INTERRUPCOES:
        signal.signal(sinal, signal.default_int_handler)


@contextlib.contextmanager
def sem_interrupcao():
    """A cleanup that must finish: a second Ctrl-C (or a SIGTERM) waits."""
    antes = {s: signal.signal(s, signal.SIG_IGN) for s in INTERRUPCOES}
    try:
        yield
    finally:
        for s, h in antes.items():
            signal.signal(s, h)


def responde(env=None, limite=10):
    """True when the engine env's DOCKER_HOST names answers."""
    if not shutil.which("docker"):
        return False
    try:
        r = subprocess.run(
            ["docker", "version", "--format", "{{.Server.Version}}"],
            env=env,
            capture_output=True,
            timeout=limite,
        )
    except subprocess.TimeoutExpired:
        return False
    return r.returncode == 0


def dockerds(raiz):
    """The pids of the dockerd processes whose data root is raiz."""
    alvo = f"--data-root={raiz}".encode()
    pids = []
    for nome in os.listdir("/proc"):
        if not nome.isdigit():
            continue
        try:
            with open(f"/proc/{nome}/cmdline", "rb") as f:
                args = f.read().split(b"\0")
        except OSError:
            continue
        if os.path.basename(args[0]) == b"dockerd" and alvo in args:
            pids.append(int(nome))
    return pids


def _vivo(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _parar_dockerd(pid, filho=None):
    """SIGTERM (dockerd then stops its containers), SIGKILL after 60s; then
    whatever is left of its process group (its containerd)."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    fim = time.monotonic() + 60
    while _vivo(pid) and time.monotonic() < fim:
        if filho is not None and filho.poll() is not None:
            break
        time.sleep(0.1)
    if _vivo(pid):
        log(f"dockerd {pid} did not stop within 60s; killing it")
    # It was started as the leader of a session and group of its own.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    if filho is not None:
        filho.wait()


def parar_dockerds(raiz, filho=None):
    """Stops every dockerd on the data root raiz (filho: the one this process
    started, to be reaped) and unmounts what they left there."""
    for pid in dockerds(raiz):
        _parar_dockerd(pid, filho if filho is not None and filho.pid == pid else None)
    if filho is not None and filho.poll() is None:
        _parar_dockerd(filho.pid, filho)
    _desmontar(raiz)


def _desmontar(pasta):
    """Unmounts whatever a dockerd that did not stop cleanly left mounted under
    pasta (overlays, network namespaces), deepest first."""
    with open("/proc/self/mountinfo") as f:
        pontos = [linha.split()[4] for linha in f]
    for ponto in sorted((p for p in pontos if p.startswith(pasta + "/")), key=len, reverse=True):
        subprocess.run(["umount", "-l", ponto], check=False, stderr=subprocess.DEVNULL)


def _trancar(pasta):
    """An exclusive lock on pasta for this process's life: one run per engine
    folder. Released by the kernel however the process ends."""
    fd = os.open(os.path.join(pasta, "motor.lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise RuntimeError(f"another run is using the private Docker engine in {pasta}; stop it first") from None
    return fd


class _Motor:
    """The files of one private engine: pasta holds its socket, exec root,
    pid file, log and lock; raiz is its data root."""

    def __init__(self, pasta, raiz, nome):
        self.pasta, self.raiz, self.nome = pasta, raiz, nome
        self.host = f"unix://{pasta}/docker.sock"
        self.env = dict(os.environ, DOCKER_HOST=self.host)
        self.log = os.path.join(pasta, "dockerd.log")
        self.filho = None

    def iniciar(self, limite=60):
        config = os.path.join(self.pasta, "daemon.json")
        with open(config, "w") as f:
            f.write("{}\n")
        cmd = [
            shutil.which("dockerd") or "/usr/sbin/dockerd",
            f"--host={self.host}",
            f"--data-root={self.raiz}",
            f"--exec-root={self.pasta}/exec",
            f"--pidfile={self.pasta}/dockerd.pid",
            f"--config-file={config}",
            f"--containerd-namespace={self.nome}",
            f"--containerd-plugins-namespace={self.nome}-plugins",
            "--iptables=false",
            "--ip-forward=false",
            "--ip-masq=false",
            "--bridge=none",
        ]
        with open(self.log, "w") as saida:
            self.filho = subprocess.Popen(
                cmd, stdout=saida, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
            )
        fim = time.monotonic() + limite
        while not responde(self.env, limite=5):
            if self.filho.poll() is not None or time.monotonic() > fim:
                with open(self.log) as f:
                    raise RuntimeError(f"the private dockerd did not start:\n{f.read()[-3000:]}")
            time.sleep(0.2)

    def parar(self):
        """Every dockerd on this data root, ours or one an earlier run left,
        then what they left mounted and their exec root."""
        parar_dockerds(self.raiz, self.filho)
        _desmontar(self.pasta)
        shutil.rmtree(os.path.join(self.pasta, "exec"), ignore_errors=True)


@contextlib.contextmanager
def privado(prefixo="crebito-dockerd-", limite=60, dados=None):
    """A private dockerd; yields the environment whose DOCKER_HOST names it.
    With dados, its images and volumes live there and stay (see above)."""
    if os.geteuid() != 0:
        raise RuntimeError("no Docker engine answers, and only root can start a private one")
    if dados:
        pasta = os.path.join(dados, "motor")
        os.makedirs(pasta, mode=0o700, exist_ok=True)
        # One name per folder, so a reused engine's containers are found.
        m = _Motor(pasta, dados, "crebito-dockerd")
    else:
        pasta = tempfile.mkdtemp(prefix=prefixo)
        # containerd takes letters and digits with single separators between
        # them, and mkdtemp's random suffix may hold an underscore anywhere.
        m = _Motor(pasta, os.path.join(pasta, "data"), f"crebito-dockerd-{uuid.uuid4().hex[:12]}")
    trava = _trancar(pasta)
    try:
        restantes = dockerds(m.raiz)
        if restantes and responde(m.env, limite=10):
            log(f"reusing the private Docker engine an earlier run left in {pasta} (pid {restantes[0]})")
        else:
            if restantes:
                log(f"stopping the private Docker engine an earlier run left in {pasta} (pid {restantes[0]})")
            with sem_interrupcao():
                m.parar()
            m.iniciar(limite)
            log(f"private Docker engine in {pasta} (DOCKER_HOST={m.host})")
        yield m.env
    finally:
        with sem_interrupcao():
            m.parar()
            if not dados:
                shutil.rmtree(pasta, ignore_errors=True)
            os.close(trava)


@contextlib.contextmanager
def motor(dados=None):
    """The engine DOCKER_HOST names if it answers, else a private one."""
    if responde():
        yield dict(os.environ)
        return
    log("no Docker engine answers; starting a private one")
    with privado(dados=dados) as env:
        yield env


def main():
    interromper_com_sinais()
    with motor() as env:
        print(f"export DOCKER_HOST={env.get('DOCKER_HOST', '')}", flush=True)
        try:
            signal.pause()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
