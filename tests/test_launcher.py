"""The native launcher: one per data directory, which keeps its topology."""

import os
import subprocess
import sys

from conftest import RAIZ

sys.path.insert(0, os.path.join(RAIZ, "stack"))
import launcher  # noqa: E402
import topologia  # noqa: E402


def rodar_launcher(env, *args, timeout=60):
    return subprocess.run(
        [sys.executable, os.path.join(RAIZ, "stack", "launcher.py"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_segundo_launcher_no_mesmo_diretorio_recusa(stack):
    env = dict(os.environ, CREBITO_VAR=stack.var, CREBITO_PORT=str(stack.porta))
    segundo = rodar_launcher(env)
    assert segundo.returncode != 0
    assert "another launcher is already running" in segundo.stderr
    # The running stack was not disturbed.
    assert stack.extrato(1).status == 200


def test_opcoes_nao_iniciam_nada(tmp_path):
    """--help and an unknown option answer at once and touch no data directory."""
    env = dict(os.environ, CREBITO_VAR=str(tmp_path / "var"), CREBITO_PORT="1")
    ajuda = rodar_launcher(env, "--help")
    assert ajuda.returncode == 0
    assert "--reset" in ajuda.stdout and "--auditoria" in ajuda.stdout
    errada = rodar_launcher(env, "--rest")
    assert errada.returncode == 2
    assert "unrecognized arguments: --rest" in errada.stderr
    assert not (tmp_path / "var").exists()


def test_sem_citus_uma_mensagem_diz_como_instalar(tmp_path):
    """PostgreSQL's binaries without Citus beside them: one clear message, no cluster."""
    real = launcher.pg_bin()
    falso = tmp_path / "pg" / "bin"
    falso.mkdir(parents=True)
    for nome in ("initdb", "postgres", "psql", "pg_isready"):
        os.symlink(os.path.join(real, nome), falso / nome)
    var = tmp_path / "var"
    env = dict(os.environ, CREBITO_VAR=str(var), CREBITO_PORT="1", CREBITO_CITUS_WORKERS="2", CREBITO_PG_BIN=str(falso))
    r = rodar_launcher(env)
    assert r.returncode != 0
    assert "Citus is not installed" in r.stderr
    assert "CREBITO_CITUS_TARBALL=" in r.stderr and "install.citusdata.com" in r.stderr
    assert not list(var.glob("*/pgdata"))


def test_diretorio_guarda_a_sua_topologia(tmp_path):
    """A data directory made single-node is not started as a cluster, nor the reverse."""
    for feita, pedida, mensagem in ((0, 2, "holds a single-node stack"), (2, 0, "holds a Citus stack with 2 workers")):
        var = tmp_path / f"var{feita}"
        var.mkdir()
        topologia.definir(str(var), feita)
        env = dict(os.environ, CREBITO_VAR=str(var), CREBITO_PORT="1", CREBITO_CITUS_WORKERS=str(pedida))
        r = rodar_launcher(env)
        assert r.returncode != 0
        assert mensagem in r.stderr
        assert "--reset" in r.stderr
