"""Benchmark reports: percentiles match numpy's definition, rates use wall time, tables show every row."""

from __future__ import annotations

import itertools
import math
import random

import pytest

from rerankd.benchmark.loadgen import LoadResult, Sample, poisson_schedule
from rerankd.benchmark.report import markdown_table, percentile, plot_rows, summarize


def test_percentile_interpolates_linearly_like_numpy() -> None:
    xs = [10.0, 1.0, 4.0, 3.0, 2.0]
    assert percentile(xs, 0) == 1.0
    assert percentile(xs, 100) == 10.0
    assert percentile(xs, 50) == 3.0
    assert percentile(xs, 90) == pytest.approx(7.6)  # 4 + 0.6 * (10 - 4)
    assert percentile([5.0], 99) == 5.0
    assert math.isnan(percentile([], 50))
    with pytest.raises(ValueError):
        percentile(xs, 101)


def test_percentile_agrees_with_numpy_on_random_data() -> None:
    np = pytest.importorskip("numpy")
    rng = random.Random(7)
    xs = [rng.expovariate(1.0) for _ in range(997)]
    for q in (50, 90, 99, 99.9):
        assert percentile(xs, q) == pytest.approx(float(np.percentile(xs, q)), rel=1e-12)


def test_poisson_schedule_is_seeded_increasing_and_at_the_rate() -> None:
    a = poisson_schedule(20.0, 100.0, seed=1)
    assert a == poisson_schedule(20.0, 100.0, seed=1)
    assert a != poisson_schedule(20.0, 100.0, seed=2)
    assert all(x < y for x, y in itertools.pairwise(a))
    assert a[0] > 0 and a[-1] < 100.0
    assert abs(len(a) - 2000) < 4 * math.sqrt(2000)  # Poisson count: mean 2000, sd ≈ 45
    gaps = [y - x for x, y in itertools.pairwise(a)]
    # Exponential gaps: mean 1/rate and standard deviation equal to the mean.
    assert sum(gaps) / len(gaps) == pytest.approx(0.05, rel=0.05)
    mean = sum(gaps) / len(gaps)
    sd = math.sqrt(sum((g - mean) ** 2 for g in gaps) / len(gaps))
    assert sd == pytest.approx(mean, rel=0.1)
    with pytest.raises(ValueError):
        poisson_schedule(0, 10)


def _result() -> LoadResult:
    samples = [Sample(i * 0.1, 0.1 * (i + 1), 200, 16, 1000) for i in range(10)]
    samples += [Sample(1.0, 5.0, 503, 16, 0), Sample(1.1, 0.0, "timeout", 16, 0)]
    return LoadResult("closed", "16 docs × 256 tok", 16, wall_s=4.0, samples=samples, concurrency=2,
                      peak_rss_bytes=512 * 2**20)


def test_summary_counts_only_successes_in_rates_and_latency() -> None:
    row = summarize(_result())
    assert (row["requests"], row["ok"], row["errors"]) == (12, 10, 2)
    assert row["errors_by_status"] == {"503": 1, "timeout": 1}
    assert row["pairs_per_s"] == pytest.approx(160 / 4.0)
    assert row["tokens_per_s"] == pytest.approx(10_000 / 4.0)
    assert row["latency_p50_s"] == pytest.approx(0.55)  # 503's 5 s is not a latency of a served request
    assert row["latency_max_s"] == pytest.approx(1.0)
    assert row["peak_rss_mib"] == 512


def test_table_has_a_line_per_row_with_load_and_ratio() -> None:
    row = summarize(_result())
    row["speedup_vs_baseline"] = 2.5
    open_row = dict(row, mode="open", target_qps=3.0, speedup_vs_baseline=None)
    baseline = dict(row, mode="in-process", load="card (bfloat16, batch 8)", peak_rss_mib=None)
    table = markdown_table([row, open_row, baseline]).splitlines()
    assert len(table) == 5
    assert "| C=2 |" in table[2] and "| 12 (2) |" in table[2] and "| 40.00 |" in table[2] and "| 2.50 |" in table[2]
    assert "3.00 req/s" in table[3] and table[3].endswith("| — |")
    assert "card (bfloat16, batch 8)" in table[4]


def test_plot_writes_a_png(tmp_path) -> None:
    pytest.importorskip("matplotlib")
    path = plot_rows([summarize(_result())], tmp_path / "p.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
