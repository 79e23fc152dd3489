#!/usr/bin/env bash
# Prints the path of crebito_api's password file for the Docker stack,
# generating it on first use: one pgpass line (libpq reads it as passfile=,
# the db container sets the role's SCRAM password from it), mode 0600, owned
# by the API image's user, who reads it from the compose secret's bind mount.
# It lives outside the repository and the images:
#   $CREBITO_SENHA_API, or ~/.config/crebito/crebito_api.pgpass
set -euo pipefail

arquivo=${CREBITO_SENHA_API:-${XDG_CONFIG_HOME:-$HOME/.config}/crebito/crebito_api.pgpass}
imagem=crebito-api:${CREBITO_TAG:-latest}

if [ ! -s "$arquivo" ]; then
    mkdir -p "$(dirname "$arquivo")"
    (
        umask 077
        senha=$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')
        printf '*:*:crebito:crebito_api:%s\n' "$senha" >"$arquivo.novo"
        mv "$arquivo.novo" "$arquivo"
    )
    echo "crebito: generated crebito_api's password in $arquivo" >&2
fi
chmod 0600 "$arquivo"
# The API runs as a numeric user (docker/api.Dockerfile's USER).
dono=$(docker image inspect --format '{{.Config.User}}' "$imagem" 2>/dev/null || true)
if [ -n "$dono" ] && [ "$(stat -c %u:%g "$arquivo")" != "$dono" ]; then
    if [ "$(id -u)" = 0 ]; then
        chown "$dono" "$arquivo"
    else
        echo "crebito: $arquivo must be owned by $dono (the API's user) for the API to read it: sudo chown $dono $arquivo" >&2
    fi
fi
echo "$arquivo"
