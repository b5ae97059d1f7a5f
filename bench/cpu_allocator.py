"""Why ``rerankd serve --malloc``: an op that allocates its output runs at page-fault speed under glibc.

Each allocator gets a child process (the allocator is chosen when a process starts: ``LD_PRELOAD``, as
``rerankd serve`` does it) that times, per tensor size, ops which allocate their result the way a forward
pass does: SiLU (``F.silu``), an add, and a bf16 ``F.linear`` whose output has the MLP's 3072-wide shape.
glibc maps every allocation above 32 MB afresh and unmaps it on free, so the kernel faults in and zeroes
new pages on every call; tcmalloc and jemalloc (with decay off) keep freed pages for the next call.

Usage::

    python bench/cpu_allocator.py --out bench/results/cpu_allocator_amx.json
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchlib.results import write_result

HERE = Path(__file__).resolve().parent
SIZES_MB = (4, 16, 64, 256)


def child(repeats: int) -> dict[str, Any]:
    """Runs inside one allocator: G elements/s per op and size."""
    import torch
    import torch.nn.functional as F

    from rerankd.allocator import loaded_allocator

    out: dict[str, Any] = {"malloc": loaded_allocator() or "system (glibc)", "threads": torch.get_num_threads(),
                           "rows": []}
    weight = torch.randn(3072, 1024, dtype=torch.bfloat16)
    for mb in SIZES_MB:
        x = torch.randn(mb * 2**20 // 2 // 3072, 3072, dtype=torch.bfloat16)  # bf16: mb MB
        tokens = x.shape[0]
        a = torch.randn(tokens, 1024, dtype=torch.bfloat16)
        ops = {"silu": (F.silu, (x,), x.numel()), "add": (torch.add, (x, x), x.numel()),
               "linear_1024x3072": (F.linear, (a, weight), tokens * 3072)}
        for name, (fn, inputs, elements) in ops.items():
            fn(*inputs)
            started = time.perf_counter()
            for _ in range(repeats):
                fn(*inputs)
            seconds = (time.perf_counter() - started) / repeats
            out["rows"].append({"op": name, "output_mb": mb, "ms": seconds * 1e3,
                                "g_elements_per_s": elements / seconds / 1e9})
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--allocators", default="system,tcmalloc,jemalloc")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--out", default=str(HERE / "results" / "cpu_allocator.json"))
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.repeats)))
        return

    from rerankd.allocator import find_library, preload_env
    from rerankd.benchmark.report import cpu_name

    runs = []
    for name in args.allocators.split(","):
        env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "MALLOC_CONF")}
        if name != "system":
            library = find_library(name)
            if library is None:
                print(f"{name}: not installed, skipped", flush=True)
                continue
            env = preload_env(name, library, env)
        done = subprocess.run([sys.executable, __file__, "--child", "--repeats", str(args.repeats)], env=env,
                              capture_output=True, text=True, check=True)
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(f"{name}: done", flush=True)

    header = "| op | output MB | " + " | ".join(r["malloc"] for r in runs) + " |"
    lines = [header, "|---|---:|" + "---:|" * len(runs)]
    for i, row in enumerate(runs[0]["rows"]):
        cells = " | ".join(f"{r['rows'][i]['g_elements_per_s']:.2f}" for r in runs)
        lines.append(f"| {row['op']} | {row['output_mb']} | {cells} |")
    table = "\n".join(lines)
    print("\nG elements/s (higher is better)\n" + table)
    command = "python bench/cpu_allocator.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    out = Path(args.out)
    write_result(out, {"command": command.strip(), "cpu": cpu_name(), "cpu_count": os.cpu_count(),
                       "unit": "G output elements per second", "runs": runs, "table_markdown": table})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
