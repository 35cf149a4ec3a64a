# CPU image for development and CI-like runs: every component, CPU torch, NIXL over shared
# memory / TCP. `docker run -p 8000:8000 pdserve-cpu` starts the whole cluster (`pdserve up`).
#   docker build -f docker/cpu.Dockerfile -t pdserve-cpu .
FROM python:3.11-slim

ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 OMP_WAIT_POLICY=PASSIVE
RUN apt-get update && apt-get install -y --no-install-recommends redis-server \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/pdserve
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu \
 && pip install nixl-cu12==1.5.1
COPY pyproject.toml README.md ./
COPY engine engine
COPY kv_transfer kv_transfer
COPY common common
COPY worker worker
COPY proto proto
COPY prefill_worker prefill_worker
COPY decode_worker decode_worker
COPY router router
COPY deploy deploy
COPY benchmarks benchmarks
RUN pip install . && python -c "import proto" && pdserve prepare-demo

EXPOSE 8000
ENTRYPOINT ["pdserve"]
CMD ["up", "--host", "0.0.0.0", "--port", "8000"]
