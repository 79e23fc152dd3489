"""The native launcher: one per data directory."""

import os
import subprocess
import sys

from conftest import RAIZ


def test_segundo_launcher_no_mesmo_diretorio_recusa(stack):
    env = dict(os.environ, CREBITO_VAR=stack.var, CREBITO_PORT=str(stack.porta))
    segundo = subprocess.run(
        [sys.executable, os.path.join(RAIZ, "stack", "launcher.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert segundo.returncode != 0
    assert "another launcher is already running" in segundo.stderr
    # The running stack was not disturbed.
    assert stack.extrato(1).status == 200


def test_opcoes_nao_iniciam_nada(tmp_path):
    """--help and an unknown option answer at once and touch no data directory."""
    env = dict(os.environ, CREBITO_VAR=str(tmp_path / "var"), CREBITO_PORT="1")
    launcher = [sys.executable, os.path.join(RAIZ, "stack", "launcher.py")]
    ajuda = subprocess.run([*launcher, "--help"], env=env, capture_output=True, text=True, timeout=30)
    assert ajuda.returncode == 0
    assert "--reset" in ajuda.stdout and "--auditoria" in ajuda.stdout
    errada = subprocess.run([*launcher, "--rest"], env=env, capture_output=True, text=True, timeout=30)
    assert errada.returncode == 2
    assert "unrecognized arguments: --rest" in errada.stderr
    assert not (tmp_path / "var").exists()
