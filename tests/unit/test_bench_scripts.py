"""Every offline benchmark script in ``bench/`` still imports and answers ``--help``.

Why: the scripts are not run in CI (they take minutes to hours), so a moved helper or a renamed import
would otherwise only show the next time someone measures. Loading each one as ``python bench/X.py``
would (``bench/`` on the import path, not as ``__main__``) and parsing ``--help`` checks both.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
SCRIPTS = sorted(BENCH.glob("*.py")) + sorted(BENCH.glob("peers/*.py"))


def test_the_scripts_are_found() -> None:
    assert len(SCRIPTS) >= 10 and (BENCH / "cpu_throughput.py") in SCRIPTS and (BENCH / "peers" / "run.py") in SCRIPTS


@pytest.mark.parametrize("script", SCRIPTS, ids=[str(s.relative_to(BENCH)) for s in SCRIPTS])
def test_script_imports_and_shows_help(script: Path, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    spec = importlib.util.spec_from_file_location(f"bench_script_{script.stem}", script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(sys, "argv", [str(script), "--help"])
    with pytest.raises(SystemExit) as exited:
        module.main()
    assert exited.value.code == 0
    assert capsys.readouterr().out.startswith("usage:")
