"""A Docker engine to talk to: the one DOCKER_HOST (or the default socket)
names when it answers; otherwise, when running as root, a private dockerd
whose every file lives in one new temporary directory (data root, exec root,
socket, pid file, log), stopped and removed afterwards.

The private engine changes nothing outside its directory: no iptables rules
(--iptables=false), no ip_forward (--ip-forward=false), no default bridge
(--bridge=none; compose creates its own network), its own containerd
namespace, an empty daemon.json instead of /etc/docker's. Containers on one
compose network still reach each other over its bridge, and a published port
is served on the host by docker-proxy.

    python docker/motor.py     # starts a private engine (if none answers) and
                               # prints its DOCKER_HOST until Ctrl-C
"""

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid


def log(msg):
    print(f"crebito: {msg}", file=sys.stderr, flush=True)


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


def _desmontar(pasta):
    """Unmounts whatever a dockerd that did not stop cleanly left mounted under
    pasta (overlays, network namespaces), deepest first."""
    with open("/proc/self/mountinfo") as f:
        pontos = [linha.split()[4] for linha in f]
    for ponto in sorted((p for p in pontos if p.startswith(pasta + "/")), key=len, reverse=True):
        subprocess.run(["umount", "-l", ponto], check=False, stderr=subprocess.DEVNULL)


def _parar(dockerd, pasta, dados):
    if dockerd.poll() is None:
        dockerd.send_signal(signal.SIGTERM)
        try:
            dockerd.wait(timeout=60)
        except subprocess.TimeoutExpired:
            log("the private dockerd did not stop within 60s; killing it")
            os.killpg(dockerd.pid, signal.SIGKILL)
            dockerd.wait()
    # Its managed containerd and shims are in its process group; nothing of it
    # may outlive the directory.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(dockerd.pid, signal.SIGKILL)
    _desmontar(pasta)
    if dados:
        _desmontar(dados)
    shutil.rmtree(pasta, ignore_errors=True)


@contextlib.contextmanager
def privado(prefixo="crebito-dockerd-", limite=60, dados=None):
    """A private dockerd in a new temporary directory; yields the environment
    whose DOCKER_HOST names it. With dados, its images and volumes live there
    instead, and stay."""
    if os.geteuid() != 0:
        raise RuntimeError("no Docker engine answers, and only root can start a private one")
    pasta = tempfile.mkdtemp(prefix=prefixo)
    # containerd takes letters and digits with single separators between them,
    # and mkdtemp's random suffix may hold an underscore anywhere.
    nome = f"crebito-dockerd-{uuid.uuid4().hex[:12]}" if dados is None else "crebito-dockerd"
    config = os.path.join(pasta, "daemon.json")
    with open(config, "w") as f:
        f.write("{}\n")
    host = f"unix://{pasta}/docker.sock"
    cmd = [
        shutil.which("dockerd") or "/usr/sbin/dockerd",
        f"--host={host}",
        f"--data-root={dados or pasta + '/data'}",
        f"--exec-root={pasta}/exec",
        f"--pidfile={pasta}/dockerd.pid",
        f"--config-file={config}",
        f"--containerd-namespace={nome}",
        f"--containerd-plugins-namespace={nome}-plugins",
        "--iptables=false",
        "--ip-forward=false",
        "--ip-masq=false",
        "--bridge=none",
    ]
    with open(os.path.join(pasta, "dockerd.log"), "w") as saida:
        dockerd = subprocess.Popen(
            cmd, stdout=saida, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
    env = dict(os.environ, DOCKER_HOST=host)
    try:
        fim = time.monotonic() + limite
        while not responde(env, limite=5):
            if dockerd.poll() is not None or time.monotonic() > fim:
                with open(os.path.join(pasta, "dockerd.log")) as f:
                    raise RuntimeError(f"the private dockerd did not start:\n{f.read()[-3000:]}")
            time.sleep(0.2)
        log(f"private Docker engine in {pasta} (DOCKER_HOST={host})")
        yield env
    finally:
        _parar(dockerd, pasta, dados)


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
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    with motor() as env:
        print(f"export DOCKER_HOST={env.get('DOCKER_HOST', '')}", flush=True)
        try:
            signal.pause()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
