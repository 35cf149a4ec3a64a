# Slim router image: no torch, no NIXL. The router only tokenizes, routes and streams.
#   docker build -f docker/router.Dockerfile -t pdserve-router .
FROM python:3.11-slim

ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1
WORKDIR /opt/pdserve
COPY docker/router-requirements.txt .
RUN pip install -r router-requirements.txt
COPY pyproject.toml README.md ./
COPY engine engine
COPY kv_transfer kv_transfer
COPY common common
COPY worker worker
COPY proto proto
COPY router router
COPY deploy deploy
COPY prefill_worker prefill_worker
COPY decode_worker decode_worker
COPY benchmarks benchmarks
# --no-deps: the package's own dependency list includes torch, which the router never imports.
RUN pip install --no-deps . && python -c "import proto, router.app"

EXPOSE 8000
ENTRYPOINT ["pdserve"]
CMD ["router", "--host", "0.0.0.0", "--port", "8000"]
