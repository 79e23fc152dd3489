# crebito's database: Debian's PostgreSQL 15 with the schema and the settings
# of stack/postgresql.conf built in. docker/db-entrypoint.sh initialises an
# empty volume on first start, then runs postgres as `postgres`.
FROM debian:bookworm-slim
# Only the server; no cluster of Debian's own (the entrypoint makes one).
RUN mkdir -p /etc/postgresql-common \
    && echo "create_main_cluster = false" >/etc/postgresql-common/createcluster.conf \
    && apt-get update \
    && apt-get install -y --no-install-recommends postgresql-15 \
    && rm -rf /var/lib/apt/lists/* \
    && install -d -o postgres -g postgres -m 0700 /var/lib/postgresql/data \
    && useradd --system --uid 10002 --no-create-home --shell /usr/sbin/nologin crebito_metricas
COPY db /usr/share/crebito/db
COPY stack/postgresql.conf /etc/crebito/postgresql.conf
COPY docker/postgresql.conf /etc/crebito/docker.conf
COPY docker/db-entrypoint.sh /usr/local/bin/crebito-db
ENV PATH=/usr/lib/postgresql/15/bin:$PATH PGDATA=/var/lib/postgresql/data
VOLUME /var/lib/postgresql/data
# Fast shutdown: the API instances hold their connections open, so the
# default smart shutdown would wait for them until the engine kills it.
STOPSIGNAL SIGINT
ENTRYPOINT ["crebito-db"]
