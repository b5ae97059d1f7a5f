# rerankd inference server on CUDA with the vLLM backend. Build from the repository root:
#   docker build -f deploy/docker/server-cuda.Dockerfile -t rerankd-server-cuda:0.1.0 .
# The base is vLLM's own release image (exact tag): it brings CUDA, a matching torch and vLLM, built
# and tested together. We add rerankd on top and pin only the packages that image does not already
# have, so nothing vLLM depends on is up- or downgraded behind its back.
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm
ARG VLLM_IMAGE=vllm/vllm-openai:v0.11.0

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
COPY pyproject.toml README.md /src/
COPY src /src/src
RUN pip wheel --no-deps --wheel-dir /tmp/wheels /src

FROM ${VLLM_IMAGE} AS runtime
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
COPY deploy/docker/constraints.txt /tmp/constraints.txt
COPY --from=build /tmp/wheels /tmp/wheels
# Drop from the constraints every package the vLLM image already ships, then install rerankd[gpu].
RUN python3 -c "import importlib.metadata as m, re; norm = lambda n: re.sub(r'[-_.]+', '-', n).lower(); have = {norm(d.metadata['Name']) for d in m.distributions()}; keep = [l for l in open('/tmp/constraints.txt') if l.strip() and not l.startswith('#') and norm(l.split('==')[0]) not in have]; open('/tmp/constraints-vllm.txt', 'w').writelines(keep)" \
 && python3 -m pip install --constraint /tmp/constraints-vllm.txt "$(ls /tmp/wheels/rerankd-*.whl)[gpu]" \
 && rm -rf /tmp/wheels /tmp/constraints*.txt \
 && groupadd --system --gid 10001 rerankd \
 && useradd --system --uid 10001 --gid rerankd --create-home --home-dir /home/rerankd rerankd \
 && mkdir -p /models && chown rerankd:rerankd /models
ENV PYTHONUNBUFFERED=1 \
    HF_HOME=/models \
    RERANKD_MODEL=Qwen/Qwen3-Reranker-4B \
    RERANKD_LOG_FORMAT=json
VOLUME ["/models"]
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"]
ENTRYPOINT ["rerankd"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000", "--backend", "vllm", "--device", "cuda"]
