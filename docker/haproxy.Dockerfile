# crebito's front door: Debian's HAProxy with the project's haproxy.cfg. It
# binds :9999 (above 1024), so it runs as the unprivileged `haproxy` user.
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends haproxy \
    && rm -rf /var/lib/apt/lists/*
COPY haproxy.cfg /etc/haproxy/crebito.cfg
USER haproxy
EXPOSE 9999
# Master-worker (-W): as the container's first process, HAProxy alone would
# not stop on the engine's SIGTERM.
CMD ["haproxy", "-W", "-db", "-f", "/etc/haproxy/crebito.cfg"]
