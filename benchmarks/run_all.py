"""Run every CPU benchmark in sequence (``make bench``), time each, and splice the README.

Each benchmark's stdout goes to ``benchmarks/results/<name>.md`` (written to a temp file,
moved into place only when the benchmark exits 0, so a failed run never leaves a half
table behind) and is echoed to the terminal; its stderr (progress) passes through. The wall
time of each benchmark and the machine it ran on go to ``benchmarks/results/bench_times.md``.
Then ``update_readme.py`` splices every result file into README.md.

``--only NAME ...`` runs a subset and leaves ``bench_times.md`` alone (it describes whole runs).
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
#: In the order ``make bench`` runs them: quick ones first, the long Fashion-MNIST ones last.
BENCHES = ("prune_speed", "latency_backends", "adaptive_vs_pipeline", "search_overhead", "cli_startup",
           "worker_death", "search_vs_baselines", "sampler_efficiency")
GOAL_MIN = 60  # issue 10: every CPU benchmark within 60 minutes on 2 cores


def machine() -> str:
    """One line: CPU model, cores, memory, Python and torch versions."""
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor() or "unknown CPU")
    mem_kib = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal"))
    import torch

    return (f"{model}, {os.cpu_count()} cores, {mem_kib / 2**20:.0f} GiB, no GPU; Python "
            f"{platform.python_version()}, torch {torch.__version__}")


def run(name: str) -> tuple[float, int]:
    """Run one benchmark; returns (wall seconds, exit code)."""
    tmp = RESULTS / f"{name}.md.tmp"
    t0 = time.perf_counter()
    with open(tmp, "w") as out:
        proc = subprocess.Popen([sys.executable, str(HERE / f"{name}.py")], stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.write(line)
            out.write(line)
        code = proc.wait()
    if code == 0:
        os.replace(tmp, RESULTS / f"{name}.md")
    else:
        tmp.unlink(missing_ok=True)
    return time.perf_counter() - t0, code


def write_times(times: dict[str, tuple[float, int]], load: tuple[float, float]) -> None:
    total = sum(t for t, _ in times.values()) / 60
    lines = ["### How long `make bench` took\n",
             f"Machine: {machine()}. 1-minute load average {load[0]:.1f} at the start and {load[1]:.1f} at "
             f"the end (2 cores: above 2 means other work shared them).\n",
             "| benchmark | wall min | exit |", "|---|---:|---:|"]
    lines += [f"| {name} | {t / 60:.1f} | {code} |" for name, (t, code) in times.items()]
    lines += [f"| **total** | **{total:.1f}** | |", "",
              f"Goal (every CPU benchmark within {GOAL_MIN} minutes on 2 cores): "
              f"{'met' if total <= GOAL_MIN else 'NOT met'} ({total:.1f} min)."]
    tmp = RESULTS / "bench_times.md.tmp"
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, RESULTS / "bench_times.md")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", nargs="+", choices=BENCHES, metavar="NAME", help=f"run only these: {', '.join(BENCHES)}")
    args = p.parse_args(argv)
    RESULTS.mkdir(parents=True, exist_ok=True)
    load0 = os.getloadavg()[0]
    times: dict[str, tuple[float, int]] = {}
    for name in args.only or BENCHES:
        print(f"== {name}", flush=True)
        times[name] = run(name)
        print(f"== {name}: {times[name][0] / 60:.1f} min, exit {times[name][1]}", file=sys.stderr, flush=True)
    if not args.only:
        write_times(times, (load0, os.getloadavg()[0]))
    subprocess.run([sys.executable, str(HERE / "update_readme.py")], check=True)
    failed = [n for n, (_, code) in times.items() if code]
    if failed:
        print(f"failed: {', '.join(failed)} (their previous results were kept)", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
