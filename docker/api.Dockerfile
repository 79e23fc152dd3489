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
    && useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin crebito
COPY --from=construcao /opt/crebito /opt/crebito
COPY server.py /opt/crebito/server.py
# Numeric, so the owner of the password file (docker/senha.sh) can be read
# from the image.
USER 10001:10001
ENV CREBITO_LISTEN=0.0.0.0:8080 PYTHONUNBUFFERED=1
EXPOSE 8080
CMD ["/opt/crebito/bin/python", "/opt/crebito/server.py"]
