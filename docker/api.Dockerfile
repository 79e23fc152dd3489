# An API instance: server.py under bjoern, with Debian's Python 3.11 and a
# venv of requirements.txt. bjoern is compiled in the first stage; the
# compiler and headers stay there.
FROM debian:bookworm-slim AS construcao
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates gcc libc6-dev libev-dev python3-dev python3-venv \
    && rm -rf /var/lib/apt/lists/*
COPY requirements.txt /tmp/requirements.txt
RUN python3 -m venv /opt/crebito \
    && /opt/crebito/bin/pip install --no-cache-dir --disable-pip-version-check -r /tmp/requirements.txt

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 libev4 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin crebito \
    && install -d -o 10001 -g 10001 -m 0750 /run/crebito
COPY --from=construcao /opt/crebito /opt/crebito
COPY server.py roteamento.py /opt/crebito/
# Numeric, so the owner of the password file (docker/senha.sh) can be read
# from the image.
USER 10001:10001
# Each worker's socket goes in /run/crebito, a volume shared with HAProxy
# (compose.yml); the directory's group is HAProxy's way in.
ENV CREBITO_LISTEN=unix:/run/crebito/api-{worker}.sock PYTHONUNBUFFERED=1
CMD ["/opt/crebito/bin/python", "/opt/crebito/server.py"]
