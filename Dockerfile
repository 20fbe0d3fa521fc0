# One image for the api, worker and flower services (docker-compose.yml picks the command).
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    LONGSCALE_CACHE=/srv/cache HF_HOME=/srv/cache/hf
WORKDIR /app

# CPU torch first: workers only tokenize and call vLLM over HTTP; a bare `torch` pulls a multi-GB CUDA build.
RUN pip install --index-url https://download.pytorch.org/whl/cpu "torch==2.13.0"

COPY pyproject.toml README.md ./
COPY longscale ./longscale
COPY datafactory ./datafactory
COPY worker ./worker
COPY api ./api
RUN pip install ".[api,worker]" "flower>=2"

RUN useradd --uid 10001 --create-home longscale && mkdir -p /srv/jobs /srv/data /srv/cache \
    && chown -R longscale /srv/jobs /srv/cache
USER longscale
EXPOSE 8080
CMD ["longscale", "api", "--host", "0.0.0.0", "--port", "8080"]
