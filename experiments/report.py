"""`make report`: regenerate ``results/REPORT.md`` (and the README's results snippet) from the
rows, first re-running the throughput benchmarks whose rows are missing.

``--quick`` (``make report QUICK=1``) re-measures a reduced set on the CPU within about 15
minutes (the engine and BYOL benchmarks with one round, few steps and one M, and the paper-scale
simulation) into ``results/quick/``, and writes ``results/quick/REPORT.md`` from those rows plus
the committed ones for everything else; it does not touch the committed report.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from analysis import report

ROOT = Path(__file__).resolve().parent.parent
# rows file -> make target that makes it (accuracy runs take up to an hour each: never automatic)
BENCHES = {
    "engine": "bench-engine",
    "byol": "bench-byol",
    "moco_v3": "bench-mocov3",
    "soft_target": "bench-kd",
    "distilbert": "bench-distilbert",
    "simulated": "simulate",
}


def run(cmd: list[str]) -> None:
    print(f"[report] {' '.join(cmd)}", file=sys.stderr, flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.report", description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--no-rerun", action="store_true", help="never re-run missing benchmarks")
    args = parser.parse_args(argv)
    results = ROOT / "results"
    py = sys.executable
    if args.quick:
        quick = results / "quick"
        run(
            [
                py,
                "-m",
                "experiments.bench_engine",
                "--out",
                str(quick / "engine"),
                "--rounds",
                "1",
                "--steps",
                "4",
                "--microbatches",
                "2",
            ]
        )
        run(
            [
                py,
                "-m",
                "experiments.bench_byol",
                "--out",
                str(quick / "byol"),
                "--rounds",
                "1",
                "--steps",
                "3",
                "--microbatches",
                "2",
            ]
        )
        run([py, "-m", "experiments.simulate", "--out", str(quick / "simulated")])
        for name in ("engine", "byol"):
            run(
                [
                    py,
                    "-m",
                    "analysis.bench",
                    str(quick / name),
                    "--command",
                    "make report QUICK=1",
                    "--title",
                    f"{name} (quick)",
                ]
            )
        text, _ = report.build(quick, ROOT, fallback=results)
        (quick / "REPORT.md").write_text(text)
        print(f"[report] wrote {quick / 'REPORT.md'}", file=sys.stderr)
        return 0
    if not args.no_rerun:
        for name, target in BENCHES.items():
            if not (results / name / "rows.jsonl").exists():
                run(["make", target])
    text, snippet = report.build(results, ROOT)
    (results / "REPORT.md").write_text(text)
    report.update_readme(ROOT / "README.md", snippet)
    print(f"[report] wrote {results / 'REPORT.md'} and the README's results snippet", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
