"""Least privilege on the host, for a stack started by root (as CI does): no
other local user reaches the database or the API's sockets, each component's
OS user reaches only its own role, no process of the stack runs as root, and
no connection is trusted without proof of who makes it."""

import os
import pwd
import subprocess
import sys

import pytest
from conftest import RAIZ

sys.path.insert(0, os.path.join(RAIZ, "stack"))
import launcher  # noqa: E402

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="switching OS users needs root (CI runs as root)")

PAPEIS = ["postgres", "crebito", "crebito_api"]


def psql_como(stack, usuario_so, papel):
    """`select current_user` through the stack's socket, run as `usuario_so`."""
    return subprocess.run(
        ["runuser", "-u", usuario_so, "--", f"{launcher.pg_bin()}/psql", "-X", "-A", "-t"]
        + ["-h", f"{stack.var}/pgrun", "-p", launcher.PG_PORTA, "-U", papel, "-d", "crebito"]
        + ["-c", "select current_user"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd="/",
    )


@pytest.mark.parametrize("papel", PAPEIS)
def test_outro_usuario_nao_entra_no_banco(stack, papel):
    r = psql_como(stack, "nobody", papel)
    assert r.returncode != 0
    assert papel not in r.stdout


def test_outro_usuario_nao_alcanca_os_sockets(stack):
    sockets_da_api = [f"{stack.var}/sock/{api}-{n}.sock" for api in ("api01", "api02") for n in (1, stack.workers)]
    for caminho in (f"{stack.var}/pgrun/.s.PGSQL.5432", *sockets_da_api):
        assert os.path.exists(caminho)
        assert subprocess.run(["runuser", "-u", "nobody", "--", "test", "-e", caminho], cwd="/").returncode != 0


def test_cada_socket_so_para_quem_o_usa(stack):
    for pasta, grupo in (("pgrun", launcher.USUARIO_API), ("sock", launcher.USUARIO_HAPROXY)):
        info = os.stat(f"{stack.var}/{pasta}")
        assert info.st_mode & 0o007 == 0, pasta
        assert info.st_gid == pwd.getpwnam(grupo).pw_gid, pasta


def test_usuario_da_api_so_entra_como_crebito_api(stack):
    r = psql_como(stack, launcher.USUARIO_API, "crebito_api")
    assert (r.returncode, r.stdout.strip()) == (0, "crebito_api")
    for papel in ("postgres", "crebito"):
        r = psql_como(stack, launcher.USUARIO_API, papel)
        assert r.returncode != 0
        assert "Peer authentication failed" in r.stderr


def test_nenhuma_regra_de_acesso_confia_sem_provar(db):
    metodos = db.execute("select distinct auth_method from pg_hba_file_rules").fetchall()
    assert metodos == [("peer",)]


def uids(pid):
    """Real, effective, saved and filesystem uid of a process."""
    with open(f"/proc/{pid}/status") as f:
        linha = next(linha for linha in f if linha.startswith("Uid:"))
    return {int(uid) for uid in linha.split()[1:]}


def arvore(pid):
    pids = [pid]
    for filho in subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split():
        pids += arvore(int(filho))
    return pids


@pytest.mark.parametrize(
    "componente,usuario",
    [
        ("api01", launcher.USUARIO_API),
        ("api02", launcher.USUARIO_API),
        ("haproxy", launcher.USUARIO_HAPROXY),
        ("postgres", "postgres"),
        ("metricas-postgres", launcher.USUARIO_METRICAS),
        ("metricas-processos", launcher.USUARIO_METRICAS),
    ],
)
def test_nenhum_processo_roda_como_root(stack, componente, usuario):
    processos = arvore(stack.pid(componente))
    if componente.startswith("api"):
        assert len(processos) == 1 + stack.workers
    for pid in processos:
        assert uids(pid) == {pwd.getpwnam(usuario).pw_uid}, (componente, pid)
