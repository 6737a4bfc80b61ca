# syntax=docker/dockerfile:1
#
# omnipush: one image for every process (api, relay, dispatcher, workers, gateway).
# The process is chosen by the command, e.g. `omnipush serve gateway`; see docker-compose.yml.

FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    OMNIPUSH_API_BIND=0.0.0.0:8080 \
    OMNIPUSH_GATEWAY_BIND=0.0.0.0:8081

RUN groupadd --system --gid 10001 omnipush \
    && useradd --system --uid 10001 --gid omnipush --home-dir /app \
        --no-create-home --shell /usr/sbin/nologin omnipush

WORKDIR /app

# Only what the package needs: no local .venv, var/ (SQLite file, generated secret key),
# node_modules or .git from the build context end up in the image.
# The wildcards make README/LICENSE optional (BuildKit allows a wildcard to match nothing).
COPY pyproject.toml constraints.txt README* LICENSE* ./
COPY omnipush/ omnipush/
COPY shared/ shared/
COPY producer_api/ producer_api/
COPY dispatcher/ dispatcher/
COPY channels/ channels/
COPY ws_gateway/ ws_gateway/

# The browser assets (Socket.IO client, Swagger UI) are part of the package sources, and the
# dependencies are the exact versions `make install` uses.
RUN pip install --no-cache-dir -c constraints.txt . \
    && rm -rf build ./*.egg-info \
    && mkdir -p /app/var \
    && chown omnipush:omnipush /app/var

# var/ is where the defaults (SQLite file, generated secret key) live when the image is run
# without configuration; it is the only writable path for the service user.
USER 10001:10001

EXPOSE 8080 8081

CMD ["omnipush", "serve", "api"]
