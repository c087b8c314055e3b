"""Where a prediction of a measured run goes wrong, from the bench's timelines only: per op kind,
the measured time of a steady step over the simulated one (the simulator's timeline from the
same profiled costs), and the same for the whole step.

A ratio above 1 is work the simulator under-charges. The kinds' ratios differ from one another
when blocks run at another speed inside a pipeline than in the profile; the step's ratio exceeds
every kind's when the missing time is waiting (messages, scheduling), not compute. Per stage,
the same ratios show work the simulator puts on the wrong stage. The gaps
between a stage's consecutive actions, by the messages between them (a send after the first, a
receive before the second), show which end of a message the simulator under- or over-charges.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterator, Sequence
from pathlib import Path

import pandas as pd

from analysis.timeline import load_records
from core.action import Action, Op
from core.schedules import SCHEDULES
from core.schedules.lower import comm_for

GOAL = 0.10  # |simulated - measured| / measured on every measured pipelined row

KINDS = ("TF", "SF", "SB", "SW", "LOSS", "OPT")
# what lies between two consecutive actions of a stage: a send after the first, a receive before
# the second, both, or no message
GAPS = ("send", "receive", "both", "none")


def step_ends(records: Sequence[dict]) -> dict[int, float]:
    """Each mini-batch's end: its latest ``OPT`` end."""
    ends: dict[int, float] = {}
    for r in records:
        if r["op"] == "OPT":
            ends[r["batch"]] = max(ends.get(r["batch"], float("-inf")), r["end_ms"])
    return ends


def steady(records: Sequence[dict], first: int, stage: int | None = None) -> tuple[dict[str, float], float]:
    """Per op kind, the median over steady mini-batches (from ``first``, never the last) of its
    time summed over the stages (or on ``stage`` alone); and the median step time (between
    consecutive batch ends).

    Raises:
        ValueError: with fewer than two steady mini-batches.
    """
    ends = step_ends(records)
    batches = [b for b in sorted(ends) if b >= first][:-1]
    if len(batches) < 2:
        raise ValueError(f"need two steady mini-batches from {first}, the timeline has {sorted(ends)}")
    mine = [r for r in records if stage is None or r["stage"] == stage]
    kinds = {
        k: statistics.median(
            sum(r["end_ms"] - r["start_ms"] for r in mine if r["batch"] == b and r["op"] == k)
            for b in batches
        )
        for k in KINDS
    }
    step = statistics.median(ends[b] - ends[b - 1] for b in batches if b - 1 in ends)
    return kinds, step


def timeline_pairs(folder: Path) -> Iterator[tuple[str, list[dict], list[dict]]]:
    """Each kept timeline pair under ``folder/timelines``, by run name: (run, measured records,
    simulated records); a measured timeline without its simulated one is skipped."""
    for measured in sorted((Path(folder) / "timelines").glob("*.measured.jsonl")):
        simulated = measured.with_name(measured.name.replace(".measured", ".simulated"))
        if simulated.exists():
            run = measured.name.removesuffix(".measured.jsonl")
            yield run, load_records(measured), load_records(simulated)


def message_gaps(records: Sequence[dict], first: int) -> dict[str, float | None]:
    """Per kind of :data:`GAPS`, the median time in ms from the end of one action of a stage to
    the start of its next, over the steady mini-batches (from ``first``, never the last); the
    messages between two actions are those the lowering puts there (``core.schedules.lower``,
    receives not hoisted), and a receive's gap includes any wait for its data. None: no such
    gap."""
    ends = step_ends(records)
    batches = set([b for b in sorted(ends) if b >= first][:-1])
    stages = max(r["stage"] for r in records) + 1

    def comm(r: dict) -> tuple[Action | None, Action | None]:
        return comm_for(Action(r["stage"], Op(r["op"]), r["batch"], r["microbatch"], r["part"]), stages)

    found: dict[str, list[float]] = {kind: [] for kind in GAPS}
    for stage in range(stages):
        mine = sorted((r for r in records if r["stage"] == stage), key=lambda r: r["start_ms"])
        for a, b in zip(mine, mine[1:]):
            if b["batch"] not in batches:
                continue
            send, receive = comm(a)[1] is not None, comm(b)[0] is not None
            kind = "both" if send and receive else "send" if send else "receive" if receive else "none"
            found[kind].append(max(b["start_ms"] - a["end_ms"], 0.0))
    return {kind: statistics.median(v) if v else None for kind, v in found.items()}


def _ratios(measured: dict[str, float], simulated: dict[str, float]) -> dict[str, float | None]:
    return {k: measured[k] / simulated[k] if simulated[k] > 0 and measured[k] > 0 else None for k in KINDS}


def timeline_tables(folder: Path, warmup: int) -> dict[str, pd.DataFrame]:
    """The tables of every kept timeline pair under ``folder/timelines``, each timeline read once:

    - ``kinds``: one line per run, measured over simulated time per op kind summed over the stages
      (empty where the schedule has none) and per step;
    - ``stages``: the same per stage (one line per run and stage), which shows work the simulator
      moves between stages (a kind whose stages err in opposite directions sums to about 1);
    - ``gaps``: per kind of gap (:func:`message_gaps`), its median measured and simulated, in ms.
    """
    kinds, stages, gaps = [], [], []
    for run, measured, simulated in timeline_pairs(folder):
        m_kinds, m_step = steady(measured, warmup + 1)
        s_kinds, s_step = steady(simulated, 2)
        kinds.append({"run": run, **_ratios(m_kinds, s_kinds), "step": m_step / s_step})
        for stage in range(max(r["stage"] for r in measured) + 1):
            mine, sim = steady(measured, warmup + 1, stage)[0], steady(simulated, 2, stage)[0]
            stages.append({"run": run, "stage": stage, **_ratios(mine, sim)})
        mine_gaps, sim_gaps = message_gaps(measured, warmup + 1), message_gaps(simulated, 2)
        line: dict[str, object] = {"run": run}
        for kind in GAPS:
            line[kind] = mine_gaps[kind]
            line[f"{kind} simulated"] = sim_gaps[kind]
        gaps.append(line)
    return {"kinds": pd.DataFrame(kinds), "stages": pd.DataFrame(stages), "gaps": pd.DataFrame(gaps)}


def _runner(schedule: str) -> str | None:
    return SCHEDULES[schedule].runner if schedule in SCHEDULES else None


def _predicted(df: pd.DataFrame, runners: Sequence[str]) -> pd.DataFrame:
    """Rows of two or more processes with a prediction, run by one of ``runners``."""
    if df.empty or "prediction_error" not in df:
        return df.iloc[0:0]
    rows = df[(df["stages"] > 1) & df["prediction_error"].notna()]
    return rows[rows["schedule"].map(_runner).isin(list(runners))].reset_index(drop=True)


def pipelined_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The rows the fidelity goal is about: two or more processes, a prediction, and an
    action-list schedule or the torch peer (not ddp, which the simulator models, not replays)."""
    return _predicted(df, ("pipeline", "torch"))


def round_errors(row: dict) -> list[float]:
    """A row's per-round errors, ``(simulated - measured) / measured`` of each round ([] where
    the row does not carry both lists)."""
    predicted, measured = row.get("round_predicted_samples_per_s"), row.get("round_samples_per_s")
    if not isinstance(predicted, list) or not isinstance(measured, list):
        return []
    return [p / m - 1.0 for p, m in zip(predicted, measured)]


def error_summary(frames: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Per bench (key -> its measured rows): how many pipelined rows (two or more processes,
    an action-list schedule or the torch peer) the simulator predicts within ``GOAL``, how many
    predictions fall inside the measured rounds' range (slowest to fastest round: the
    prediction cannot be told from a round; where rows carry the range), the median (signed:
    its sign is the bias) and median absolute error, the largest miss and its row, ddp's
    miss (a model, not a schedule), and the same count and median for the rows' predictions at
    the machine speed each run met (``prediction_error_at_speed``, :mod:`experiments.drift`;
    counted over the rows that carry it). Errors are signed ``(simulated - measured) / measured``."""
    out = []
    for key, df in frames.items():
        if df.empty or "prediction_error" not in df:
            continue
        piped = pipelined_rows(df)
        if piped.empty:
            continue
        miss = piped["prediction_error"].abs()
        worst = piped.loc[miss.idxmax()]
        ddp = _predicted(df, ("ddp",))["prediction_error"]
        in_rounds = None
        if {"predicted_samples_per_s", "samples_per_s_min", "samples_per_s_max"} <= set(piped):
            predicted = piped["predicted_samples_per_s"]
            inside = (predicted >= piped["samples_per_s_min"]) & (predicted <= piped["samples_per_s_max"])
            in_rounds = int(inside.sum())
        at_speed = (
            piped["prediction_error_at_speed"].dropna()
            if "prediction_error_at_speed" in piped
            else pd.Series()
        )
        out.append(
            {
                "bench": key,
                "within": int((miss <= GOAL).sum()),
                "at_speed_rows": len(at_speed),
                "within_at_speed": int((at_speed.abs() <= GOAL).sum()),
                "median_at_speed": float(at_speed.median()) if len(at_speed) else None,
                "rows": len(piped),
                "in_rounds": in_rounds,
                "median": float(piped["prediction_error"].median()),
                "median_abs": float(miss.median()),
                "worst": float(worst["prediction_error"]),
                "worst_run": f"{worst['schedule']} M={worst['microbatches']}",
                "ddp": float(ddp.iloc[0]) if len(ddp) else None,
            }
        )
    return pd.DataFrame(out)
