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
