"""The linters as tests, so `make test` alone also keeps the code clean: sqlfluff
on every SQL file, ruff's checks and formatting on the Python. Configuration
is the project's own (.sqlfluff, pyproject.toml)."""

import os
import subprocess

import pytest
from conftest import RAIZ

BIN = os.path.join(RAIZ, ".venv", "bin")


def rodar(*comando):
    r = subprocess.run(
        [os.path.join(BIN, comando[0]), *comando[1:]],
        cwd=RAIZ,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, f"{' '.join(comando)} exited {r.returncode}:\n{r.stdout}"
    return r.stdout


def arquivos_sql():
    """Every SQL file of the project, tracked or new, minus what git ignores."""
    saida = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "--", "*.sql"],
        cwd=RAIZ,
        stdout=subprocess.PIPE,
        text=True,
        check=True,
    ).stdout.split()
    return sorted(f for f in saida if os.path.exists(os.path.join(RAIZ, f)))


def test_ha_sql_para_checar():
    # Guards the lint below against silently checking nothing.
    arquivos = arquivos_sql()
    assert "db/schema.sql" in arquivos
    assert any(f.startswith("db/functions/") for f in arquivos)


def test_sqlfluff():
    rodar("sqlfluff", "lint", "--disable-progress-bar", *arquivos_sql())


@pytest.mark.parametrize("comando", [("check", "."), ("format", "--check", ".")], ids=["check", "format"])
def test_ruff(comando):
    rodar("ruff", *comando)
