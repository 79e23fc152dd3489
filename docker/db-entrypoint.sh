#!/bin/sh
# The db container's entrypoint. Starts as root only to read the password
# file (a compose secret, 0600, owned by the API's user), then everything
# runs as `postgres`.
#
# First start, on an empty volume: initdb, db/schema.sql through a server
# whose socket is in a private directory (not the volume the API connects
# through), then a marker. Every start: crebito_api's
# password is set from the secret (so the file is the one source of it), and
# postgres is exec'd with the project's settings.
set -eu

SEGREDO=/run/secrets/crebito_api
PRONTO="$PGDATA/crebito.pronto"
como_postgres() { setpriv --reuid=postgres --regid=postgres --init-groups "$@"; }

# The pgpass line's last field: host:port:dbname:user:password.
senha=$(sed -n 's/^.*:crebito_api://p' "$SEGREDO" | head -n 1)
case "$senha" in
    "" | *[!A-Za-z0-9]*)
        echo "crebito-db: $SEGREDO must hold one pgpass line for crebito_api with an alphanumeric password" >&2
        exit 1
        ;;
esac

if [ ! -e "$PRONTO" ]; then
    # A start that died half-way leaves no marker: the volume held no data
    # yet, so it is made again from scratch.
    find "$PGDATA" -mindepth 1 -delete
    como_postgres initdb -D "$PGDATA" -U postgres -E UTF8 --locale=C --no-instructions \
        --auth-local=peer --auth-host=reject >/dev/null
    cat >"$PGDATA/pg_hba.conf" <<'EOF'
# Only unix sockets, as nothing listens on TCP: the superuser's own OS user
# (inside this container), crebito_api with its SCRAM password (the API
# containers reach the socket through a shared volume, under another uid),
# and the metrics exporter by its uid (10002, named crebito_metricas here).
local all postgres peer
local crebito crebito_api scram-sha-256
local crebito crebito_metricas peer
EOF
    printf "\ninclude '/etc/crebito/postgresql.conf'\ninclude '/etc/crebito/docker.conf'\n" >>"$PGDATA/postgresql.conf"
    privado=$(mktemp -d)
    chown postgres:postgres "$privado"
    como_postgres pg_ctl -D "$PGDATA" -o "-c listen_addresses='' -k $privado" -w -s start
    como_postgres psql -X -q -v ON_ERROR_STOP=1 -h "$privado" -d postgres -c "create database crebito"
    como_postgres psql -X -q -v ON_ERROR_STOP=1 -h "$privado" -d crebito -f /usr/share/crebito/db/schema.sql
    como_postgres pg_ctl -D "$PGDATA" -m fast -w -s stop
    rmdir "$privado"
    touch "$PRONTO"
    chown postgres:postgres "$PRONTO"
    echo "crebito-db: initialised $PGDATA with db/schema.sql" >&2
fi

# The socket's directory is a volume: whoever made it, postgres owns it and
# the API's user may enter it.
install -d -o postgres -g postgres -m 0755 /run/postgresql

# Single-user mode: no connection is accepted until the password is the
# secret's. It also replays the WAL after a crash, as the server would.
printf "alter role crebito_api password '%s';\n" "$senha" \
    | como_postgres postgres --single -D "$PGDATA" -j postgres >/dev/null
exec setpriv --reuid=postgres --regid=postgres --init-groups postgres -D "$PGDATA"
