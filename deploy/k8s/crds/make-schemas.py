#!/usr/bin/env python3
"""Write schemas.json: the openAPIV3Schema of every served version of the CRDs kept beside this script.

Why a derived file: the upstream CRD files are kept unchanged (README.md names their repository, path and
commit), but KServe's InferenceService CRD alone is 2 MB of YAML, seconds to parse on every test run. The
schemas (descriptions dropped, nothing else changed) load from JSON in milliseconds, and each entry records
the git blob hash of the file it came from, so tests/integration/test_deploy_manifests.py can tell when a CRD
file changed without this script being run again.

    python deploy/k8s/crds/make-schemas.py
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
OUT = HERE / "schemas.json"


def blob_hash(path: Path) -> str:
    """``git hash-object``: the id upstream's tree gives the same file (README.md lists them)."""
    data = path.read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _without_descriptions(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _without_descriptions(v) for k, v in node.items()
                if not (k == "description" and isinstance(v, str))}
    if isinstance(node, list):
        return [_without_descriptions(v) for v in node]
    return node


def schemas() -> dict[str, Any]:
    out: dict[str, Any] = {}
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    for path in sorted(HERE.glob("*/*.yaml")):
        crd = yaml.load(path.read_text(encoding="utf-8"), Loader=loader)
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            if not version.get("served"):
                continue
            out[f"{group}/{version['name']} {kind}"] = {
                "source": path.relative_to(HERE).as_posix(),
                "blob": blob_hash(path),
                "scope": crd["spec"]["scope"],
                "schema": _without_descriptions(version["schema"]["openAPIV3Schema"]),
            }
    return out


def main() -> None:
    OUT.write_text(json.dumps(schemas(), sort_keys=True, indent=0) + "\n", encoding="utf-8")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
