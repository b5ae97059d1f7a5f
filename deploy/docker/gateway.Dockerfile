# rerankd gateway (also runs `rerankd keys …` and `rerankd alert-relay`). Build from the repository root:
#   docker build -f deploy/docker/gateway.Dockerfile -t rerankd-gateway:0.1.0 .
# No torch: the gateway never loads a model. Every package pinned by deploy/docker/constraints.txt.
# Build arguments: PYTHON_IMAGE (the base), PIP_INDEX_URL, PIP_NO_INDEX and PIP_FIND_LINKS (where pip
# finds packages; unset: PyPI), as in server-cpu.Dockerfile.
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ARG PIP_INDEX_URL
ARG PIP_NO_INDEX
ARG PIP_FIND_LINKS
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/rerankd
COPY deploy/docker/constraints.txt /tmp/constraints.txt
COPY pyproject.toml /src/
# rerankd's dependencies (pinned) before its source: a change to src/ rebuilds only the rerankd wheel's layers.
RUN python -c "import sys, tomllib; p = tomllib.load(open('/src/pyproject.toml', 'rb'))['project']; \
print('\n'.join(p['dependencies'] + [r for e in sys.argv[1:] for r in p['optional-dependencies'][e]]))" gateway otel \
    > /tmp/requirements.txt \
 && /opt/rerankd/bin/pip install --constraint /tmp/constraints.txt -r /tmp/requirements.txt
COPY README.md /src/
COPY src /src/src
RUN /opt/rerankd/bin/pip wheel --no-deps --wheel-dir /tmp/wheels /src

FROM ${PYTHON_IMAGE} AS runtime
RUN groupadd --system --gid 10001 rerankd \
 && useradd --system --uid 10001 --gid rerankd --create-home --home-dir /home/rerankd rerankd
COPY --from=build /opt/rerankd /opt/rerankd
COPY --from=build /tmp/wheels /tmp/wheels
RUN /opt/rerankd/bin/pip install --no-deps --no-index /tmp/wheels/rerankd-*.whl && rm -rf /tmp/wheels
# RERANKD_PORT: the gateway's port; the HEALTHCHECK reads the running command, so it follows a changed one
# (and `alert-relay --port 9095` run from this image is probed on 9095).
ENV PATH=/opt/rerankd/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    RERANKD_LOG_FORMAT=json \
    RERANKD_PORT=8080
WORKDIR /home/rerankd
USER 10001:10001
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
  CMD ["python", "-m", "rerankd.deployment.healthcheck"]
ENTRYPOINT ["rerankd"]
CMD ["gateway", "--host", "0.0.0.0"]
