"""tests/containers: the images and the compose stack, run for real on a private dockerd.

Only tests/containers/run runs them (it starts the daemon, builds the stand-in bases, the wheelhouse and the
images, then sets CONTAINER_TESTS=1); the main suite's `pytest` collects nothing here.
"""

from __future__ import annotations

import os

if not os.environ.get("CONTAINER_TESTS"):
    collect_ignore_glob = ["test_*.py"]
