"""The card recipe as users run it (plain ``python``: glibc malloc) against rerankd as it serves (tcmalloc).

The allocator is chosen when a process starts, so the two cannot share one process the way
``cpu_throughput.py``'s variants do. This script alternates child processes instead — card under glibc,
rerankd under tcmalloc, card, rerankd, … — each a ``cpu_throughput.py`` run of one variant, and takes the
medians: machine noise then spreads over both sides, as interleaving does in-process. Each child loads the
model and warms up untimed; only its scoring calls are timed.

Usage::

    python bench/cpu_as_shipped.py --rounds 3 --out bench/results/cpu_as_shipped_amx.json
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from benchlib.results import write_result

HERE = Path(__file__).resolve().parent
SIDES = (("card", "system"), ("rerankd", "tcmalloc"))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--repeats", type=int, default=1, help="timed calls per child process")
    p.add_argument("--docs", type=int, default=64)
    p.add_argument("--doc-tokens", default="240-272")
    p.add_argument("--model", default="/work/models/qwen3-reranker-0.6b-random")
    p.add_argument("--out", default=str(HERE / "results" / "cpu_as_shipped.json"))
    args = p.parse_args(argv)

    times: dict[str, list[float]] = {variant: [] for variant, _ in SIDES}
    children = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for variant, malloc in SIDES:
                out = Path(tmp) / f"{variant}-{r}.json"
                cmd = [sys.executable, str(HERE / "cpu_throughput.py"), "--variants", variant, "--malloc", malloc,
                       "--docs", str(args.docs), "--doc-tokens", args.doc_tokens, "--repeats", str(args.repeats),
                       "--model", args.model, "--out", str(out)]
                subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                result = json.loads(out.read_text())
                row = result["rows"][0]
                times[variant].extend(row["times_s"])
                children.append({"round": r + 1, "variant": variant, "malloc": result["setup"]["malloc"],
                                 "times_s": row["times_s"]})
                print(f"round {r + 1}: {variant} ({result['setup']['malloc']}) "
                      f"{', '.join(f'{t:.2f}' for t in row['times_s'])} s", flush=True)
    card, ours = statistics.median(times["card"]), statistics.median(times["rerankd"])
    table = "\n".join([
        "| side | malloc | runs (s) | median s | pairs/s | × card |",
        "|---|---|---|---:|---:|---:|",
        *(f"| {variant} | {malloc} | {', '.join(f'{t:.2f}' for t in times[variant])} | "
          f"{statistics.median(times[variant]):.2f} | {args.docs / statistics.median(times[variant]):.2f} | "
          f"{card / statistics.median(times[variant]):.2f} |" for variant, malloc in SIDES),
    ])
    print("\n" + table)
    command = "python bench/cpu_as_shipped.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    out_path = Path(args.out)
    write_result(out_path, {"command": command.strip(), "children": children, "card_median_s": card,
                            "rerankd_median_s": ours, "speedup": card / ours, "table_markdown": table})
    print(f"wrote {out_path}")


if __name__ == "__main__":
    main()
