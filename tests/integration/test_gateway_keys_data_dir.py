"""``rerankd keys`` finds the database it should work on: ``--database-url``, a `rerankd up` stack's
``--data-dir``, or, with neither, the stack in this directory when there is one (real SQLite files, the CLI)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from rerankd.cli import cli


def keys(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(cli, ["keys", *args], env=env)


def names(*where: str, env: dict[str, str] | None = None) -> list[str]:
    listing = keys("list", "--json", *where, env=env)
    assert listing.exit_code == 0, listing.output
    return [json.loads(line)["name"] for line in listing.output.splitlines()]


def test_keys_find_the_stack_in_this_directory_and_refuse_to_guess_between_two(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RERANKD_DATABASE_URL", raising=False)
    monkeypatch.delenv("RERANKD_DATA_DIR", raising=False)
    # Nothing here: the gateway's own default database, as before.
    assert keys("create", "--name", "plain").exit_code == 0
    assert (tmp_path / "rerankd-gateway.db").exists()
    # A `rerankd up` stack's database beside it: which one is meant cannot be guessed.
    (tmp_path / "rerankd-data").mkdir()
    made = keys("create", "--name", "stack-key", "--database-url", "sqlite:///rerankd-data/gateway.db")
    assert made.exit_code == 0, made.output
    ambiguous = keys("create", "--name", "which")
    assert ambiguous.exit_code == 2
    assert "two gateway databases here" in ambiguous.output and "--data-dir rerankd-data" in ambiguous.output
    assert names("--data-dir", "rerankd-data") == ["stack-key"]
    assert names("--database-url", "sqlite:///rerankd-gateway.db") == ["plain"]
    # Only the stack: it is the one.
    (tmp_path / "rerankd-gateway.db").unlink()
    made = keys("create", "--name", "found")
    assert made.exit_code == 0, made.output
    assert str(tmp_path / "rerankd-data" / "gateway.db") in made.output  # says where the key went
    assert names("--data-dir", "rerankd-data") == ["stack-key", "found"]
    assert names(env={"RERANKD_DATA_DIR": str(tmp_path / "rerankd-data")}) == ["stack-key", "found"]
    assert not (tmp_path / "rerankd-gateway.db").exists()
    revoked = keys("revoke", "found", "--data-dir", "rerankd-data")
    assert revoked.exit_code == 0, revoked.output


def test_a_data_dir_without_a_stack_and_two_choices_at_once_are_refused(tmp_path: Path) -> None:
    missing = keys("create", "--name", "x", "--data-dir", str(tmp_path / "nowhere"))
    assert missing.exit_code == 2
    assert "no gateway database in --data-dir" in missing.output
    assert not (tmp_path / "nowhere").exists()  # nothing created where no stack is
    both = keys("list", "--data-dir", str(tmp_path), "--database-url", f"sqlite:///{tmp_path / 'a.db'}")
    assert both.exit_code == 2 and "not both" in both.output
