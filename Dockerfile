# The API instance of crebito's compose deployment: server.py under bjoern.
FROM python:3.11-slim-bookworm

WORKDIR /app
COPY requirements.txt .
# bjoern compiles against libev: the compiler and headers are needed only to
# build it and leave in the same layer; libev4, its runtime library, stays.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libev4 libev-dev gcc libc6-dev \
    && pip install --no-cache-dir -r requirements.txt \
    && apt-get purge -y --auto-remove libev-dev gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
COPY server.py .

# Defaults for compose's network; compose.yml sets them explicitly too.
ENV CREBITO_LISTEN=0.0.0.0:8080 \
    DATABASE_URL="host=db port=5432 dbname=crebito user=crebito_api" \
    PYTHONUNBUFFERED=1
EXPOSE 8080
USER nobody
CMD ["python", "server.py"]
