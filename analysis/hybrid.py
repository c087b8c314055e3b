"""The measured dp x pp table (``make bench-hybrid``) from result rows only: each run of the
group (dp replicas of a pipeline, one pipeline on as many processes, ddp) with its rounds'
range and its speed relative to ddp on the same processes.

``python -m analysis.hybrid results/byol/hybrid`` writes ``TABLE.md`` in that folder; the
report sets the same table in its throughput section.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from analysis import rows as R
from analysis.tables import markdown


def hybrid_table(rows: pd.DataFrame) -> pd.DataFrame:
    """One line per run, in the group's order: shape, samples/s, the rounds' range, and the
    ratio to ddp on the same process count (empty without a ddp row there)."""
    ddp = {int(r["processes"]): float(r["samples_per_s"]) for r in R.records(rows) if r["schedule"] == "ddp"}
    out = []
    for r in R.records(rows):
        procs = int(r["processes"])
        out.append(
            {
                "run": f"{r['schedule']} dp {int(r['dp'])} x pp {int(r['stages'])}"
                if r["schedule"] != "ddp"
                else f"ddp x {int(r['stages'])}",
                "processes": procs,
                "M": int(r["microbatches"]),
                "samples/s": float(r["samples_per_s"]),
                "rounds": f"{r['samples_per_s_min']:,.0f}-{r['samples_per_s_max']:,.0f}",
                "over ddp": float(r["samples_per_s"]) / ddp[procs] if procs in ddp else None,
                "source": r.get("_source"),
            }
        )
    return pd.DataFrame(out)


def caveat(rows: pd.DataFrame) -> str:
    """What the numbers are: the machine's cores against the processes."""
    first = rows.iloc[0]
    procs, cores = int(first["processes"]), int(first["cores"])
    if procs > cores:
        return (
            f"{procs} processes on {cores} cores: this shows that dp x pp runs end to end under the "
            "bench's harness beside ddp and one pipeline, not what it is worth (every process waits "
            "for a core); its worth at 8 and 16 GPUs is the simulated dp x pp table."
        )
    return f"{procs} processes on {cores} cores, one thread each."


def hybrid_section(rows: pd.DataFrame) -> str:
    """The report's part: a heading, the caveat and the table."""
    first = rows.iloc[0]
    return (
        f"### Data-parallel replicas of a pipeline (dp x pp), measured: {first['method_title']}, "
        f"{first['model']}, batch {int(first['global_batch'])}\n\n"
        f"Made by `{first['command']}` (git {first['git_sha']}). {caveat(rows)}\n\n"
        + markdown(hybrid_table(rows), digits=2)
        + "\n"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.hybrid", description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    args = parser.parse_args(argv)
    path = args.folder / "rows.jsonl"
    if not path.exists():
        print(f"error: {path} does not exist; run make bench-hybrid first", file=sys.stderr)
        return 2
    out = args.folder / "TABLE.md"
    out.write_text(hybrid_section(R.read(path, args.folder.parent.parent)).replace("### ", "# ", 1))
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
