"""Passwords of the distributed and HA topologies' roles, for connections
over TCP (replicador: HA's replication; patroni: Patroni's REST API).

Generated at the first start, kept under the data directory in libpq password
files readable only by their owner (0600): one for the database nodes, which
connect to each other as any of the roles, and one for the API, which holds
only crebito_api's password.
"""

import os
import pwd
import secrets

PAPEIS = ("postgres", "crebito", "crebito_api", "replicador", "patroni")


def pasta(var):
    return os.path.join(var, "segredos")


def arquivo_nos(var):
    return os.path.join(pasta(var), "pgpass")


def arquivo_api(var):
    return os.path.join(pasta(var), "pgpass-api")


def _linha(papel, senha):
    return f"*:*:*:{papel}:{senha}\n"


def _gravar(caminho, texto, usuario):
    # Created 0600 from the start, so the password is never readable by others.
    fd = os.open(caminho, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(texto)
    if usuario is not None:
        info = pwd.getpwnam(usuario)
        os.chown(caminho, info.pw_uid, info.pw_gid)


def ler(var):
    """{role: password} from the nodes' file."""
    senhas = {}
    with open(arquivo_nos(var)) as f:
        for linha in f:
            *_, papel, senha = linha.rstrip("\n").split(":")
            senhas[papel] = senha
    return senhas


def gerar(var, usuario_nos, usuario_api):
    """New passwords for every role; returns them."""
    os.makedirs(pasta(var), mode=0o711, exist_ok=True)
    os.chmod(pasta(var), 0o711)
    # URL-safe letters only: no ':' or '\\' to escape in a password file.
    senhas = {papel: secrets.token_urlsafe(24) for papel in PAPEIS}
    _gravar(arquivo_nos(var), "".join(_linha(p, s) for p, s in senhas.items()), usuario_nos)
    _gravar(arquivo_api(var), _linha("crebito_api", senhas["crebito_api"]), usuario_api)
    return senhas
