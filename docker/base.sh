#!/usr/bin/env bash
# Makes sure the Docker engine (the one DOCKER_HOST names) has
# debian:bookworm-slim, the base of every crebito image: already there, or
# pulled, or, where no registry answers, made here with debootstrap from the
# Debian mirror this machine's apt uses, and imported under that name.
set -euo pipefail

IMAGEM=debian:bookworm-slim
SUITE=bookworm

docker image inspect "$IMAGEM" >/dev/null 2>&1 && exit 0
if timeout 120 docker pull -q "$IMAGEM" >/dev/null 2>&1; then
    exit 0
fi

# The first mirror of the main archive in apt's sources: deb822 files
# (URIs:/Suites: stanzas) first, then classic one-line sources.
espelho() {
    local f
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -e "$f" ] || continue
        awk -v suite="$SUITE" '
            function fim() { if (deb && suites ~ "(^| )" suite "( |$)" && uri != "") { print uri; exit } deb = 0; suites = ""; uri = "" }
            /^[ \t]*$/ { fim(); next }
            tolower($1) == "types:" { for (i = 2; i <= NF; i++) if ($i == "deb") deb = 1 }
            tolower($1) == "suites:" { $1 = ""; suites = $0 " " }
            tolower($1) == "uris:" { uri = $2 }
            END { fim() }
        ' "$f"
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -e "$f" ] || continue
        # deb [options] URI suite components...
        sed -E 's/\[[^]]*\]//' "$f" | awk -v suite="$SUITE" '$1 == "deb" && $3 == suite { print $2; exit }'
    done
}
URI=$(espelho | head -n 1)
if [ -z "$URI" ]; then
    echo "crebito: $IMAGEM cannot be pulled and apt's sources name no mirror of $SUITE" >&2
    exit 1
fi
if [ "$(id -u)" != 0 ]; then
    echo "crebito: $IMAGEM cannot be pulled; making it with debootstrap needs root" >&2
    exit 1
fi
command -v debootstrap >/dev/null || { echo "crebito: install debootstrap" >&2; exit 1; }

raiz=$(mktemp -d /tmp/crebito-base-XXXXXX)
# Interrupted, debootstrap may leave /proc or /sys mounted in the tree: those
# are unmounted first, and rm never crosses into another file system.
limpar() {
    grep -o " $raiz/[^ ]*" /proc/self/mounts | sort -r | xargs -r -n 1 umount -l 2>/dev/null || true
    rm -rf --one-file-system "$raiz" "$raiz.log"
}
trap limpar EXIT
echo "crebito: making $IMAGEM with debootstrap from $URI" >&2
debootstrap --variant=minbase "$SUITE" "$raiz" "$URI" >"$raiz.log" 2>&1 || {
    tail -n 20 "$raiz.log" >&2
    exit 1
}

# The image's apt reads the same sources as this machine's (updates and
# security included), so its packages are the versions the native stack runs.
rm -f "$raiz/etc/apt/sources.list"
for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
    [ -e "$f" ] && cp "$f" "$raiz$f"
done
# The same for the certificate authorities this machine adds to Debian's
# (e.g. of a proxy that PyPI is reached through): trusted once an image
# installs ca-certificates.
mkdir -p "$raiz/usr/local/share/ca-certificates"
for f in /usr/local/share/ca-certificates/*.crt; do
    [ -e "$f" ] && cp "$f" "$raiz/usr/local/share/ca-certificates/"
done
# Slim, as Debian's own -slim images: no manuals, docs or translations, and
# apt keeps no package lists or downloaded packages.
cat >"$raiz/etc/dpkg/dpkg.cfg.d/crebito-slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
path-exclude /usr/share/lintian/*
EOF
cat >"$raiz/etc/apt/apt.conf.d/crebito-slim" <<'EOF'
APT::Install-Recommends "false";
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/*.bin || true"; };
EOF
find "$raiz/usr/share/doc" -mindepth 2 ! -name copyright ! -type d -delete
rm -rf "$raiz"/usr/share/{man,info,locale}/* "$raiz"/var/lib/apt/lists/* "$raiz"/var/cache/apt/* "$raiz"/var/log/*.log
tar -C "$raiz" --numeric-owner -c . | docker import -c 'CMD ["bash"]' - "$IMAGEM" >/dev/null
echo "crebito: made $IMAGEM" >&2
