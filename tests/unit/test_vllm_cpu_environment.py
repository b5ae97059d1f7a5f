"""What the vllm backend sets for vLLM's CPU engine processes (``cpu_engine_environment``): vLLM's CPU guide's
preloads and every core, without overriding an operator's own settings."""

from __future__ import annotations

from pathlib import Path

from rerankd.allocator import find_library, preload_entries
from rerankd.engine.backends.vllm_backend import CPU_BLOCK_SIZE, cpu_engine_environment


def _fake_prefix(tmp_path: Path) -> Path:
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "libiomp5.so").write_bytes(b"")
    return tmp_path


def test_adds_tcmalloc_and_intel_openmp_and_every_core(tmp_path: Path) -> None:
    tcmalloc = find_library("tcmalloc")
    assert tcmalloc is not None, "libtcmalloc-minimal4 is installed by .ci/run"
    changes = cpu_engine_environment({"PATH": "/usr/bin"}, prefix=str(_fake_prefix(tmp_path)))
    assert changes == {"LD_PRELOAD": f"{tcmalloc}:{tmp_path / 'lib' / 'libiomp5.so'}",
                       "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}


def test_keeps_what_is_already_set(tmp_path: Path) -> None:
    prefix = _fake_prefix(tmp_path)
    tcmalloc = find_library("tcmalloc")
    already = {"LD_PRELOAD": f"/opt/other/libtcmalloc_minimal.so.4:{prefix / 'lib' / 'libiomp5.so'}",
               "VLLM_CPU_NUM_OF_RESERVED_CPU": "1"}
    assert tcmalloc is not None and tcmalloc.name == "libtcmalloc_minimal.so.4"
    assert cpu_engine_environment(already, prefix=str(prefix)) == {}
    # An operator's explicit core binding is theirs too: no reserved-CPU default next to it.
    bound = cpu_engine_environment({"VLLM_CPU_OMP_THREADS_BIND": "0-1"}, prefix=str(prefix))
    assert "VLLM_CPU_NUM_OF_RESERVED_CPU" not in bound
    assert bound["LD_PRELOAD"].split(":") == [str(tcmalloc), str(prefix / "lib" / "libiomp5.so")]


def test_without_intel_openmp_only_tcmalloc_is_preloaded(tmp_path: Path) -> None:
    changes = cpu_engine_environment({"LD_PRELOAD": "/x/libfoo.so"}, prefix=str(tmp_path))
    assert changes["LD_PRELOAD"] == f"/x/libfoo.so:{find_library('tcmalloc')}"


def test_cpu_block_size_shares_most_of_the_default_prefix(tiny_model_dir: Path) -> None:
    """vLLM shares whole KV blocks only: with its CPU default of 128 tokens the default prompt's prefix (system
    prompt + default instruction + a short query) would share nothing; CPU_BLOCK_SIZE must share most of it."""
    from rerankd.engine.model_source import load_tokenizer
    from rerankd.engine.prompt import PromptBuilder

    shared = len(PromptBuilder(load_tokenizer(tiny_model_dir), 2048).build("what is rust", ["a language"]).shared)
    assert shared < 128
    assert shared // CPU_BLOCK_SIZE * CPU_BLOCK_SIZE >= 0.75 * shared, (shared, CPU_BLOCK_SIZE)
    assert CPU_BLOCK_SIZE % 32 == 0  # vLLM's CPU attention wants multiples of 32


def test_reads_ld_preload_the_way_the_loader_does(tmp_path: Path) -> None:
    """The loader separates LD_PRELOAD entries by colons or whitespace (``rerankd serve --malloc`` writes spaces):
    a tcmalloc named in either form is not added twice."""
    prefix = _fake_prefix(tmp_path)
    iomp = prefix / "lib" / "libiomp5.so"
    assert preload_entries(" /a/libfoo.so:/b/libbar.so  /c/libtcmalloc_minimal.so.4 ") == [
        "/a/libfoo.so", "/b/libbar.so", "/c/libtcmalloc_minimal.so.4"]
    changes = cpu_engine_environment({"LD_PRELOAD": "/a/libfoo.so /c/libtcmalloc_minimal.so.4",
                                      "VLLM_CPU_NUM_OF_RESERVED_CPU": "1"}, prefix=str(prefix))
    assert changes == {"LD_PRELOAD": f"/a/libfoo.so:/c/libtcmalloc_minimal.so.4:{iomp}"}
