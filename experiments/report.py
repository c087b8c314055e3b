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
from methods.registry import get_method, method_names

ROOT = Path(__file__).resolve().parent.parent


def run(cmd: list[str]) -> None:
    print(f"[report] {' '.join(cmd)}", file=sys.stderr, flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True)


def expected() -> dict[str, tuple[str, str, str]]:
    """Every registered method's rows folder under ``results/``: its title, benchmark make
    target and accuracy make target (empty where it has none)."""
    out = {}
    for name in method_names():
        spec = get_method(name)
        out[name] = (spec.title, spec.bench_command, spec.accuracy_command)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.report", description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--no-rerun", action="store_true", help="never re-run missing benchmarks")
    args = parser.parse_args(argv)
    results = ROOT / "results"
    py = sys.executable
    if args.quick:
        quick = results / "quick"
        for method, steps in (("synthetic", "4"), ("byol", "4")):
            run(
                [
                    py,
                    "-m",
                    "experiments.bench",
                    method,
                    "--out",
                    str(quick / method),
                    "--rounds",
                    "1",
                    "--steps",
                    steps,
                    "--microbatches",
                    "2",
                    "--command",
                    "make report QUICK=1",
                ]
            )
            run([py, "-m", "analysis.bench", str(quick / method)])
        run([py, "-m", "experiments.simulate", "--out", str(quick / "simulated")])
        text, _ = report.build(quick, ROOT, fallback=results, expected=expected())
        (quick / "REPORT.md").write_text(text)
        print(f"[report] wrote {quick / 'REPORT.md'}", file=sys.stderr)
        return 0
    if not args.no_rerun:  # accuracy runs take up to an hour each: never re-run automatically
        targets = {name: bench for name, (_, bench, _) in expected().items() if bench}
        for name, target in {**targets, "simulated": "make simulate"}.items():
            if not (results / name / "rows.jsonl").exists():
                run(target.split())
    text, snippet = report.build(results, ROOT, expected=expected())
    (results / "REPORT.md").write_text(text)
    report.update_readme(ROOT / "README.md", snippet)
    print(f"[report] wrote {results / 'REPORT.md'} and the README's results snippet", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
