# rerankd inference server on CPU (torch backend). Build from the repository root:
#   docker build -f deploy/docker/server-cpu.Dockerfile -t rerankd-server-cpu:0.1.0 .
# Versions: the Python base by exact tag, torch 2.13.0 from the PyTorch CPU index (a bare `torch`
# from PyPI is the multi-GB CUDA build), every other package pinned by deploy/docker/constraints.txt.
#
# Build arguments (defaults: the real base image and the public indexes):
#   PYTHON_IMAGE     the base of both stages
#   TORCH_INDEX_URL  where the CPU torch wheel comes from (a mirror of https://download.pytorch.org/whl/cpu)
#   PIP_INDEX_URL    where every other package comes from (default: PyPI)
#   PIP_NO_INDEX, PIP_FIND_LINKS  offline builds: `--build-arg PIP_NO_INDEX=1 --build-arg
#                    PIP_FIND_LINKS=http://127.0.0.1:8765/` installs everything, torch included, from a wheelhouse
#                    (CI's: tests/containers/run; docs/deploy.md "Building offline")
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# pip reads these from the environment; left unset (no default) they change nothing.
ARG PIP_INDEX_URL
ARG PIP_NO_INDEX
ARG PIP_FIND_LINKS
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/rerankd
# torch first and alone: the largest layer, rebuilt only when this line changes. --no-deps: only torch
# comes from the PyTorch index; its dependencies come from PyPI below, pinned like everything else.
RUN /opt/rerankd/bin/pip install --no-deps --index-url "${TORCH_INDEX_URL}" torch==2.13.0
COPY deploy/docker/constraints.txt /tmp/constraints.txt
COPY pyproject.toml /src/
# rerankd's dependencies (pyproject.toml's, pinned) before its source: a change to src/ rebuilds only the
# small layers of the rerankd wheel, not this one.
RUN python -c "import sys, tomllib; p = tomllib.load(open('/src/pyproject.toml', 'rb'))['project']; \
print('\n'.join(p['dependencies'] + [r for e in sys.argv[1:] for r in p['optional-dependencies'][e]]))" otel \
    > /tmp/requirements.txt \
 && /opt/rerankd/bin/pip install --constraint /tmp/constraints.txt -r /tmp/requirements.txt torch==2.13.0
COPY README.md /src/
COPY src /src/src
RUN /opt/rerankd/bin/pip wheel --no-deps --wheel-dir /tmp/wheels /src

FROM ${PYTHON_IMAGE} AS runtime
# g++ and Python's C headers: torch.compile (inductor) builds the fused element-wise CPU kernels with them at
# start-up (`--compile auto`); without either the server still runs, on transformers' forward (1.6x slower on
# an AMX CPU), and its warning names the missing one. The python images ship the headers (checked below).
# libtcmalloc-minimal4: `--malloc auto` re-executes the server under tcmalloc; glibc's mmap/munmap of every
# large activation costs page faults that slowed the CPU forward by ~20% (bench/results/cpu_allocator_amx.json).
RUN apt-get update \
 && apt-get install -y --no-install-recommends g++ libtcmalloc-minimal4 \
 && rm -rf /var/lib/apt/lists/* \
 && python -c "import pathlib, sysconfig; h = pathlib.Path(sysconfig.get_path('include'), 'Python.h'); \
assert h.is_file(), f'{h} is missing: torch.compile needs Python headers in the base image'"
RUN groupadd --system --gid 10001 rerankd \
 && useradd --system --uid 10001 --gid rerankd --create-home --home-dir /home/rerankd rerankd \
 && mkdir -p /models && chown rerankd:rerankd /models
COPY --from=build /opt/rerankd /opt/rerankd
COPY --from=build /tmp/wheels /tmp/wheels
RUN /opt/rerankd/bin/pip install --no-deps --no-index /tmp/wheels/rerankd-*.whl && rm -rf /tmp/wheels
# HF_HOME: downloaded models land in the /models volume, kept across restarts.
# JSON logs on stdout: what `kubectl logs` and every log shipper read.
# RERANKD_PORT: the port `serve` listens on; the HEALTHCHECK reads the running command (flags and
# environment), so `-e RERANKD_PORT=9000` or `serve ... --port 9000` moves both.
ENV PATH=/opt/rerankd/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HF_HOME=/models \
    RERANKD_MODEL=Qwen/Qwen3-Reranker-0.6B \
    RERANKD_LOG_FORMAT=json \
    RERANKD_PORT=8000
VOLUME ["/models"]
USER 10001:10001
EXPOSE 8000
# /health answers while the model loads (readiness is /ready, for the gateway and Kubernetes).
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-m", "rerankd.deployment.healthcheck"]
ENTRYPOINT ["rerankd"]
CMD ["serve", "--host", "0.0.0.0", "--backend", "torch", "--device", "cpu"]
