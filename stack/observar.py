"""`make observar`: Prometheus beside a running stack, scraping every metrics
endpoint it recorded (<var>/metricas.json, see stack/metricas.py) every
second, so a person graphs any series during a load test on its web page
(http://127.0.0.1:9090/graph). Debian's `prometheus`, in the foreground;
Ctrl-C stops it. Its configuration and data live under <var>/prometheus/, kept
for a day (or until 2 GB): long enough to look at a run afterwards.

Beside a compose project too (`make docker`): docker/projeto.py records its
endpoints the same way, in its own folder (stack/metricas.py's pasta_docker).

Environment:
    CREBITO_VAR          the stack's data directory, or a compose project's
                         folder (default: the running one of the launcher's
                         and the default compose project's)
    CREBITO_PROMETHEUS   where Prometheus listens (default 127.0.0.1:9090)
"""

import json
import os
import pwd
import shutil
import signal
import subprocess
import sys

import metricas

# The Debian package's own user: Prometheus never runs as root.
USUARIO = "prometheus"
RETENCAO = ("--storage.tsdb.retention.time=1d", "--storage.tsdb.retention.size=2GB")


def log(msg):
    print(f"crebito: {msg}", file=sys.stderr, flush=True)


def configuracao(alvos):
    """Prometheus's configuration (JSON, which it reads as YAML): one job per
    kind of endpoint, each PostgreSQL exporter labelled with its node."""
    jobs = {}
    for alvo in alvos:
        rotulos = {"no": alvo.no} if alvo.no else {}
        jobs.setdefault(alvo.job, []).append({"targets": [alvo.endereco], "labels": rotulos})
    return {
        # A load test lasts a minute or a few: each second is a point.
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [{"job_name": job, "static_configs": estaticos} for job, estaticos in jobs.items()],
    }


def preparar(var, alvos):
    """<var>/prometheus/ with the configuration and the data, Prometheus's own."""
    pasta = os.path.join(var, "prometheus")
    os.makedirs(os.path.join(pasta, "dados"), exist_ok=True)
    arquivo = os.path.join(pasta, "prometheus.yml")
    with open(arquivo, "w") as f:
        json.dump(configuracao(alvos), f, indent=1)
    como = {}
    if os.geteuid() == 0:
        info = pwd.getpwnam(USUARIO)
        for caminho in (pasta, os.path.join(pasta, "dados"), arquivo):
            os.chown(caminho, info.pw_uid, info.pw_gid)
        como = {"user": info.pw_uid, "group": info.pw_gid, "extra_groups": []}
    return pasta, arquivo, como


def main():
    var = metricas.procurar()
    endereco = os.environ.get("CREBITO_PROMETHEUS", "127.0.0.1:9090")
    if shutil.which("prometheus") is None:
        sys.exit("crebito: Prometheus is not installed; run `bash stack/install.sh` (apt-get install prometheus)")
    try:
        alvos = metricas.ler(var)
    except FileNotFoundError:
        sys.exit(f"crebito: no stack has run in {var}; start one first (make run, make citus, make ha, make docker)")
    if not metricas.rodando(var):
        # The endpoints are those of its last start: they answer once it runs again on the same ports.
        log(f"no stack is running in {var}; its endpoints show as down until one does")
    pasta, arquivo, como = preparar(var, alvos)
    cmd = ["prometheus", f"--config.file={arquivo}", f"--storage.tsdb.path={os.path.join(pasta, 'dados')}"]
    cmd += [*RETENCAO, f"--web.listen-address={endereco}", "--log.level=warn"]
    # Own session: Ctrl-C reaches only us, and we stop Prometheus cleanly.
    proc = subprocess.Popen(cmd, cwd=pasta, start_new_session=True, **como)
    # Both set explicitly: a shell that starts us in the background leaves SIGINT ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    log(f"Prometheus on http://{endereco}/graph scraping {len(alvos)} endpoints of {var} every 1s (Ctrl-C stops)")
    try:
        codigo = proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        codigo = proc.wait(timeout=30)
    sys.exit(0 if codigo in (0, -signal.SIGTERM) else codigo)


if __name__ == "__main__":
    main()
