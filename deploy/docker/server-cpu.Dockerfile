# rerankd inference server on CPU (torch backend). Build from the repository root:
#   docker build -f deploy/docker/server-cpu.Dockerfile -t rerankd-server-cpu:0.1.0 .
# Versions: the Python base by exact tag, torch 2.13.0 from the PyTorch CPU index (a bare `torch`
# from PyPI is the multi-GB CUDA build), every other package pinned by deploy/docker/constraints.txt.
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/rerankd
# torch first and alone: the largest layer, rebuilt only when this line changes. --no-deps: only torch
# comes from the PyTorch index; its dependencies come from PyPI below, pinned like everything else.
RUN /opt/rerankd/bin/pip install --no-deps --index-url https://download.pytorch.org/whl/cpu torch==2.13.0
COPY deploy/docker/constraints.txt /tmp/constraints.txt
COPY pyproject.toml README.md /src/
COPY src /src/src
RUN /opt/rerankd/bin/pip wheel --no-deps --wheel-dir /tmp/wheels /src \
 && /opt/rerankd/bin/pip install --constraint /tmp/constraints.txt "$(ls /tmp/wheels/rerankd-*.whl)" torch==2.13.0

FROM ${PYTHON_IMAGE} AS runtime
# g++: torch.compile (inductor) builds the fused element-wise CPU kernels with it at start-up (`--compile
# auto`); without it the server still runs, on transformers' forward (1.6x slower on an AMX CPU).
# libtcmalloc-minimal4: `--malloc auto` re-executes the server under tcmalloc; glibc's mmap/munmap of every
# large activation costs page faults that slowed the CPU forward by ~20% (bench/results/cpu_allocator_amx.json).
RUN apt-get update \
 && apt-get install -y --no-install-recommends g++ libtcmalloc-minimal4 \
 && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid 10001 rerankd \
 && useradd --system --uid 10001 --gid rerankd --create-home --home-dir /home/rerankd rerankd \
 && mkdir -p /models && chown rerankd:rerankd /models
COPY --from=build /opt/rerankd /opt/rerankd
# HF_HOME: downloaded models land in the /models volume, kept across restarts.
# JSON logs on stdout: what `kubectl logs` and every log shipper read.
ENV PATH=/opt/rerankd/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HF_HOME=/models \
    RERANKD_MODEL=Qwen/Qwen3-Reranker-0.6B \
    RERANKD_LOG_FORMAT=json
VOLUME ["/models"]
USER 10001:10001
EXPOSE 8000
# /health answers while the model loads (readiness is /ready, for the gateway and Kubernetes).
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"]
ENTRYPOINT ["rerankd"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000", "--backend", "torch", "--device", "cpu"]
