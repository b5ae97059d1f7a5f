# Stand-in for python:3.11.11-slim-bookworm (the FROM of deploy/docker/*.Dockerfile), for CI machines that
# reach no image registry. Built by tests/containers/run from a `debootstrap --variant=minbase bookworm`
# base; users build the images on the real tag. How it differs from the real image:
# - Debian's Python 3.11.2 in /usr/bin (the real image: CPython 3.11.11 built from source in /usr/local);
# - pip 23.0.1 from Debian (inside a venv, the one ensurepip bundles), the real image pip 24.x;
# - like the real image: `python` and `pip` on PATH, Python's C headers (Python.h: torch.compile builds
#   its CPU kernels against them), CA certificates, no PEP 668 "externally managed" marker.
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      python3 python3-venv python3-dev python3-pip python-is-python3 ca-certificates \
 && ln -s /usr/bin/pip3 /usr/local/bin/pip \
 && rm -f /usr/lib/python3.*/EXTERNALLY-MANAGED \
 && rm -rf /var/lib/apt/lists/*
ENV LANG=C.UTF-8
CMD ["python3"]
