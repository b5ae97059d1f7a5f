"""/info's TEI fields that are read from the model's directory."""

from __future__ import annotations

from rerankd.server.app import _snapshot_sha


def test_model_sha_is_the_hugging_face_snapshot_revision_or_none() -> None:
    sha = "6e9e69830b95c52b5fd889b7690dda3329508de3"
    assert _snapshot_sha(f"/cache/hub/models--Qwen--Qwen3-Reranker-0.6B/snapshots/{sha}") == sha
    assert _snapshot_sha(f"/cache/hub/models--Qwen--Qwen3-Reranker-0.6B/snapshots/{sha}/") == sha
    assert _snapshot_sha("/work/models/tiny") is None
    assert _snapshot_sha("/x/snapshots/short") is None
