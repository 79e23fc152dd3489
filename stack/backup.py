"""Backups of the HA topology with pgBackRest: the WAL archived continuously
from whichever node is the primary, full and differential backups, and a
restore to any past moment into a new data directory.

The repository is `<data>/backup` (or CREBITO_BACKUP_REPO). Each node has its
own pgbackrest.conf beside its cluster (its own data directory as pg1), used
by its archive_command; a backup reads the current primary's.

    python stack/backup.py backup                  # make backup: full the first time, then differential
    python stack/backup.py restaurar ALVO DESTINO  # the cluster as of ALVO (a timestamptz), in the new DESTINO
    python stack/backup.py info                    # what the repository holds
"""

import argparse
import os
import pwd
import subprocess
import sys

import patroni
import topologia

ESTROFE = "crebito"


def repositorio(var):
    return os.environ.get("CREBITO_BACKUP_REPO") or os.path.join(var, "backup")


def arquivo_conf(no):
    return os.path.join(os.path.dirname(no.pgdata), "pgbackrest.conf")


def conf(var, no):
    """pgbackrest.conf of node no: the repository, and the node's own cluster."""
    pasta = os.path.join(var, "pgbackrest")
    return (
        "[global]\n"
        f"repo1-path={repositorio(var)}\n"
        "repo1-retention-full=2\n"
        # A backup starts with an immediate checkpoint instead of waiting for one.
        "start-fast=y\n"
        f"lock-path={pasta}/lock\n"
        f"spool-path={pasta}/spool\n"
        "log-level-file=off\n"
        "log-level-console=warn\n"
        f"\n[{ESTROFE}]\n"
        f"pg1-path={no.pgdata}\n"
        f"pg1-socket-path={no.pgrun}\n"
        f"pg1-port={no.porta}\n"
        "pg1-user=postgres\n"
    )


def comando_de_arquivo(no):
    """The archive_command of node no (it runs only while no is the primary)."""
    return f"pgbackrest --config={arquivo_conf(no)} --stanza={ESTROFE} archive-push %p"


def preparar(var, usuario):
    """The repository and pgBackRest's folders, owned by the database's user."""
    for caminho in (repositorio(var), os.path.join(var, "pgbackrest")):
        os.makedirs(caminho, mode=0o750, exist_ok=True)
        if usuario is not None:
            info = pwd.getpwnam(usuario)
            os.chown(caminho, info.pw_uid, info.pw_gid)


def pgbackrest(no, *args, usuario=None, **kw):
    cmd = ["pgbackrest", f"--config={arquivo_conf(no)}", f"--stanza={ESTROFE}", *args]
    if usuario is not None and os.geteuid() == 0:
        cmd = ["runuser", "-u", usuario, "--", *cmd]
    return subprocess.run(cmd, cwd="/", **kw)


def primario(var):
    """The node Patroni runs as the primary now."""
    no = patroni.primario(topologia.ler(var))
    if no is None:
        sys.exit("crebito: no primary answers; is `make ha` running?")
    return no


def usuario_do_banco():
    return "postgres" if os.geteuid() == 0 else None


def backup(var):
    no = primario(var)
    usuario = usuario_do_banco()
    info = pgbackrest(no, "info", "--output=json", usuario=usuario, capture_output=True, text=True, check=True)
    tipo = "diff" if '"type":"full"' in info.stdout.replace(" ", "") else "full"
    print(f"crebito: {tipo} backup of {no.nome} into {repositorio(var)}", file=sys.stderr, flush=True)
    pgbackrest(no, "backup", f"--type={tipo}", usuario=usuario, check=True)


def restaurar(var, alvo, destino):
    """Restores the cluster as it was at alvo into destino (new or empty):
    the latest backup before it, then the archived WAL up to it. Started
    there, the cluster recovers to alvo and is promoted."""
    no = topologia.ler(var)[0]
    usuario = usuario_do_banco()
    os.makedirs(destino, mode=0o700, exist_ok=True)
    if os.listdir(destino):
        sys.exit(f"crebito: {destino} is not empty")
    if usuario is not None:
        info = pwd.getpwnam(usuario)
        os.chown(destino, info.pw_uid, info.pw_gid)
    pgbackrest(
        no,
        "restore",
        f"--pg1-path={destino}",
        "--type=time",
        f"--target={alvo}",
        "--target-action=promote",
        # The restored cluster is a copy for inspection: it archives nothing.
        "--archive-mode=off",
        usuario=usuario,
        check=True,
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="acao", required=True)
    sub.add_parser("backup")
    sub.add_parser("info")
    r = sub.add_parser("restaurar")
    r.add_argument("alvo", help="a timestamptz, e.g. '2026-12-06 12:00:00+00'")
    r.add_argument("destino", help="a new (or empty) data directory")
    args = ap.parse_args()
    # Here, not above: the launcher imports this module.
    import launcher

    var = os.environ.get("CREBITO_VAR") or launcher.var_padrao()
    if args.acao == "backup":
        backup(var)
    elif args.acao == "info":
        pgbackrest(topologia.ler(var)[0], "info", usuario=usuario_do_banco(), check=True)
    else:
        restaurar(var, args.alvo, os.path.abspath(args.destino))


if __name__ == "__main__":
    main()
