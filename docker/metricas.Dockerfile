# PostgreSQL's metrics in Docker: Debian's prometheus-postgres-exporter, with
# the node's queries and crebito's (stack/metricas-no.yml, stack/metricas.yml)
# in one file, as natively. It runs as uid 10002, the uid the db image names
# crebito_metricas, so PostgreSQL lets it in as that role alone, by peer
# authentication through the shared socket.
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends prometheus-postgres-exporter \
    && rm -rf /var/lib/apt/lists/*
COPY stack/metricas-no.yml stack/metricas.yml /etc/crebito/consultas/
RUN cat /etc/crebito/consultas/metricas-no.yml /etc/crebito/consultas/metricas.yml > /etc/crebito/metricas.yml
USER 10002:10002
ENTRYPOINT ["prometheus-postgres-exporter"]
