# crebito's front door: Debian's HAProxy with the project's haproxy.cfg. It
# binds :9999 (above 1024), so it runs as the unprivileged `haproxy` user,
# in the group `crebito` (the API image's gid), which alone may enter the
# directory of the API workers' sockets.
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends haproxy \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 crebito \
    && usermod --append --groups crebito haproxy \
    && install -d -o 10001 -g 10001 -m 0750 /run/crebito
COPY haproxy.cfg /etc/haproxy/crebito.cfg
USER haproxy
# Master-worker (-W): as the container's first process, HAProxy alone would
# not stop on the engine's SIGTERM.
CMD ["haproxy", "-W", "-db", "-f", "/etc/haproxy/crebito.cfg"]
