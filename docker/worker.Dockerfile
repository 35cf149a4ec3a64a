# GPU worker image: CUDA torch + NIXL; runs `pdserve prefill` or `pdserve decode`.
#   docker build -f docker/worker.Dockerfile -t pdserve-worker .
# Not built in CI (no Docker engine there); the compose file is validated offline instead.
FROM nvidia/cuda:12.8.1-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_BREAK_SYSTEM_PACKAGES=1 \
    OMP_WAIT_POLICY=PASSIVE \
    PYTHONUNBUFFERED=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-pip python3-dev gcc \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/pdserve
# Dependencies first, so code changes do not re-download torch.
RUN pip install torch==2.13.0 nixl-cu12==1.5.1
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
RUN pip install . && python3 -c "import proto"  # generates the gRPC stubs at build time

# gRPC binds all interfaces; the worker advertises its container hostname in the registry.
# Metrics on a fixed in-container port so Prometheus finds every replica by DNS.
ENTRYPOINT ["pdserve"]
CMD ["decode", "--host", "0.0.0.0", "--metrics-port", "9400"]
