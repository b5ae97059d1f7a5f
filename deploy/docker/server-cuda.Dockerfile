# rerankd inference server on CUDA with the vLLM backend. Build from the repository root:
#   docker build -f deploy/docker/server-cuda.Dockerfile \
#     --build-arg VLLM_IMAGE=vllm/vllm-openai:v0.11.0 -t rerankd-server-cuda:0.1.0 .
# The base is vLLM's own release image (exact tag): it brings CUDA, a matching torch and vLLM, built
# and tested together. We add rerankd on top and pin only the packages that image does not already
# have, so nothing vLLM depends on is up- or downgraded behind its back. The tag rerankd-server-cuda:0.1.0
# (compose.yaml, the gpu-prod overlay) means rerankd 0.1.0 on vllm/vllm-openai:v0.11.0: a build on another
# VLLM_IMAGE deserves another tag (e.g. 0.1.0-vllm0.12.0).
#
# Build arguments:
#   VLLM_IMAGE     the runtime base (vLLM's release image, exact tag)
#   PYTHON_IMAGE   the base of the stage that builds rerankd's wheel
#   PIP_INDEX_URL, PIP_NO_INDEX, PIP_FIND_LINKS  where pip finds packages (unset: PyPI), as in
#                  server-cpu.Dockerfile
# This image cannot be built in CI (no GPU base image there): tests/containers builds it on a CPU stand-in
# for VLLM_IMAGE to check its install steps and that its command is one the installed CLI accepts.
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm
ARG VLLM_IMAGE=vllm/vllm-openai:v0.11.0

FROM ${PYTHON_IMAGE} AS build
ARG PIP_INDEX_URL
ARG PIP_NO_INDEX
ARG PIP_FIND_LINKS
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
COPY pyproject.toml README.md /src/
COPY src /src/src
RUN pip wheel --no-deps --wheel-dir /tmp/wheels /src

FROM ${VLLM_IMAGE} AS runtime
ARG PIP_INDEX_URL
ARG PIP_NO_INDEX
ARG PIP_FIND_LINKS
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
COPY deploy/docker/constraints.txt /tmp/constraints.txt
COPY pyproject.toml /tmp/pyproject.toml
# Drop from the constraints every package the vLLM image already ships, then install rerankd[gpu,otel]'s
# dependencies (before its source: a change to src/ rebuilds only the rerankd wheel's layers).
RUN python3 -c "import importlib.metadata as m, re; norm = lambda n: re.sub(r'[-_.]+', '-', n).lower(); have = {norm(d.metadata['Name']) for d in m.distributions()}; keep = [l for l in open('/tmp/constraints.txt') if l.strip() and not l.startswith('#') and norm(l.split('==')[0]) not in have]; open('/tmp/constraints-vllm.txt', 'w').writelines(keep)" \
 && python3 -c "import sys, tomllib; p = tomllib.load(open('/tmp/pyproject.toml', 'rb'))['project']; \
print('\n'.join(p['dependencies'] + [r for e in sys.argv[1:] for r in p['optional-dependencies'][e]]))" gpu otel \
    > /tmp/requirements.txt \
 && python3 -m pip install --constraint /tmp/constraints-vllm.txt -r /tmp/requirements.txt \
 && rm -rf /tmp/constraints*.txt /tmp/requirements.txt /tmp/pyproject.toml \
 && groupadd --system --gid 10001 rerankd \
 && useradd --system --uid 10001 --gid rerankd --create-home --home-dir /home/rerankd rerankd \
 && mkdir -p /models && chown rerankd:rerankd /models
COPY --from=build /tmp/wheels /tmp/wheels
RUN python3 -m pip install --no-deps --no-index /tmp/wheels/rerankd-*.whl && rm -rf /tmp/wheels
ENV PYTHONUNBUFFERED=1 \
    HF_HOME=/models \
    RERANKD_MODEL=Qwen/Qwen3-Reranker-4B \
    RERANKD_LOG_FORMAT=json \
    RERANKD_PORT=8000
VOLUME ["/models"]
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python3", "-m", "rerankd.deployment.healthcheck"]
ENTRYPOINT ["rerankd"]
CMD ["serve", "--host", "0.0.0.0", "--backend", "vllm", "--device", "cuda"]
