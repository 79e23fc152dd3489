#!/usr/bin/env bash
# Installs what the Docker deployment and its tests need, when missing and
# running as root (otherwise it names them): the engine (docker.io), compose
# v1 (docker-compose), and debootstrap, which makes the Debian base image
# where no registry answers.
set -euo pipefail

faltam=()
command -v dockerd >/dev/null || faltam+=(docker.io)
command -v docker-compose >/dev/null || docker compose version >/dev/null 2>&1 || faltam+=(docker-compose)
command -v debootstrap >/dev/null || faltam+=(debootstrap)
[ ${#faltam[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ]; then
    echo "crebito: missing Debian packages for Docker: ${faltam[*]} (sudo apt-get install ${faltam[*]})" >&2
    exit 1
fi
echo "crebito: installing ${faltam[*]}"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${faltam[@]}" >/dev/null
