"""The simulator replayed on a measured run's own compute times: which part of a row's prediction
error is the schedule and message model, and which is how fast the blocks ran.

A bench keeps every round of every run whole (``results/<bench>/runs/<run>.r<k>.json``: each
compute action's start and end on its stage, the run's probed link) beside the runs' settings
(``runs/N<p>.spec.json``). For each round of each action-list run this module rebuilds the
schedule the run ran (:func:`ran_schedule`: built from the run's settings, and checked to be the
very list the timeline shows on every stage, in order), and replays it with
:func:`core.validate.dry_run` as the simulator does, with one change: every compute action takes
the time the run measured for it, not the profile's. What the timeline does not time, the
messages (each send's and receive's handling and each transfer), is charged by the same link
model the prediction used (the run's own probed link), less what a message's bytes cost the work
beside them: that slowdown, like a stage's slower resumption after a wait (no wake penalty is
added either), lies inside the compute actions the timeline timed.

So per round, over the same steady steps as the bench (no warm-up, no last steps):

- *replay error* = measured step / replayed step - 1, the error of the dry run's order, waits
  and message model alone (signed like the prediction error: positive is a model faster than
  the run);
- *compute part* = (1 + prediction error) / (1 + replay error) - 1, what is left: the run's
  compute against the profile's (the calibration's speed, the machine's drift, the blocks running
  slower inside a pipeline);
- *compute spread*: the slowest round's compute per steady step over the fastest's, less 1, for
  the same run (same code, same settings): how much the machine alone moves a run between rounds.

A row's figures are the medians over its rounds. The torch peer records no timeline (its
schedules run inside ``torch.distributed.pipelining``), and ddp is not an action list, so neither
is replayed.

The kept runs are not committed (megabytes per bench), so :func:`write_replay` (run by
``analysis.bench`` after every bench) keeps the replay beside the rows as ``replay.jsonl``, with
the digest of the ``rows.jsonl`` it goes with; the report reads that file (:func:`read_replay`)
and names a bench whose rows changed since as stale.
"""

from __future__ import annotations

import hashlib
import json
import statistics
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import pandas as pd

from analysis.fidelity import round_errors
from analysis.fidelity import step_ends as batch_ends
from core.bench import cost_model, partial_steps, steady_steps
from core.link import Link
from core.profile import BlockCosts
from core.schedules import SCHEDULES, Schedule, build_schedule
from core.schedules.base import TEACHER_KINDS
from core.validate import dry_run

VIEWS = (1, 2)  # views per sample a method can have (BYOL and MoCo-v3: 2)
REPLAY_FILE = "replay.jsonl"  # one line per replayed run, beside the bench's rows.jsonl

Key = tuple[int, str, int, int | None, int | None]


def _key(stage: int, op: str, batch: int, microbatch: int | None, part: int | None) -> Key:
    return (stage, op, batch, microbatch, part)


def _per_stage(records: Sequence[dict]) -> dict[int, list[Key]]:
    """Each stage's timed actions in the order they started."""
    out: dict[int, list[tuple[float, Key]]] = {}
    for r in records:
        out.setdefault(r["stage"], []).append(
            (r["start_ms"], _key(r["stage"], r["op"], r["batch"], r["microbatch"], r["part"]))
        )
    return {s: [k for _, k in sorted(v, key=lambda x: x[0])] for s, v in out.items()}


def ran_schedule(pipeline: dict, records: Sequence[dict], batches: int) -> tuple[Schedule, str]:
    """The schedule a run ran and the teacher kind it was built for: built from the run's
    pipeline settings for ``batches`` mini-batches, for each number of views and teacher kind
    (neither is in a run's files), the one whose compute lists are, stage by stage and in order,
    the actions the run's timeline timed.

    Raises:
        ValueError: when no build matches the timeline (the runtime ran something else).
    """
    timed = _per_stage(records)
    for views in VIEWS:
        for teacher in TEACHER_KINDS:
            try:
                built = build_schedule(
                    pipeline["schedule"],
                    pipeline["stages"],
                    pipeline["microbatches"],
                    teacher,
                    batches,
                    pipeline.get("backward_pieces"),
                    views,
                    pipeline.get("teacher_early"),
                    pipeline.get("teacher_lookahead"),
                )
            except ValueError:
                continue
            lists = {
                s: [_key(a.stage, a.op.name, a.batch, a.microbatch, a.part) for a in actions]
                for s, actions in enumerate(built.compute)
            }
            if lists == timed:
                return built, teacher
    raise ValueError(
        f"no build of {pipeline['schedule']} (stages {pipeline['stages']}, M {pipeline['microbatches']}, "
        f"{batches} mini-batches) has the actions its timeline timed"
    )


def step_ends(records: Sequence[dict]) -> list[float]:
    """Each mini-batch's end (its latest ``OPT`` end), in batch order."""
    ends = batch_ends(records)
    return [ends[b] for b in sorted(ends)]


def replay_round(pipeline: dict, result: dict, costs: BlockCosts, warmup: int) -> tuple[float, float, float]:
    """One round of one run (``result``: its ``runs/*.r<k>.json``; ``costs``: the profile at
    the run's unit size, for the messages' sizes): the measured and the replayed median steady
    step (ms), and the run's compute per steady step (ms, every stage's timed actions)."""
    records = result["records"]
    batches = len(result["step_end_s"])
    built, teacher = ran_schedule(pipeline, records, batches)
    extra = result["extra"]
    # the messages' own handling only: what their bytes cost the work beside them
    # (``beside_gbps``) is inside the compute the timeline timed, like a wake's
    link = replace(Link(**extra["link"]), beside_gbps=None)
    model = cost_model(costs, extra["balance"], extra["teacher_balance"], link)
    timed = {
        _key(r["stage"], r["op"], r["batch"], r["microbatch"], r["part"]): r["end_ms"] - r["start_ms"]
        for r in records
    }
    units, pieces = built.units, built.backward_pieces

    def duration(a) -> float:
        if a.is_compute:
            return timed[_key(a.stage, a.op.name, a.batch, a.microbatch, a.part)]
        return model.duration(a, units, pieces)

    def transfer(a, sent: float, free: float) -> float:
        return max(sent, free) + link.transfer_ms(model.message_bytes(a, pieces))

    replayed = [r.to_dict() for r in dry_run(built.lowered, duration, transfer, built.stage_to_rank)]
    tail = partial_steps(pipeline["schedule"], pipeline["stages"], teacher, pipeline.get("teacher_lookahead"))
    measured_ends = step_ends(records)
    steps = range(warmup + 1, len(measured_ends) - tail)  # the steady steps' batch indices
    compute = statistics.median(
        sum(r["end_ms"] - r["start_ms"] for r in records if r["batch"] == b) for b in steps
    )
    return (
        statistics.median(steady_steps([e / 1e3 for e in measured_ends], warmup, tail)) * 1e3,
        statistics.median(steady_steps([e / 1e3 for e in step_ends(replayed)], warmup, tail)) * 1e3,
        compute,
    )


def replay_bench(folder: Path, rows: pd.DataFrame | None = None) -> pd.DataFrame:
    """Every round of every action-list run of two or more processes under ``folder/runs``:
    one line per run with ``schedule``, ``stages``, ``microbatches``, ``rounds`` and the
    per-round and median ``replay_error``, ``compute_spread`` and (with the bench's ``rows``,
    whose ``round_samples_per_s`` and ``round_predicted_samples_per_s`` give each round's
    prediction error) ``compute_part``. Empty when the folder keeps no runs."""
    runs_dir = folder / "runs"
    costs_file = folder / "costs.json"
    if not runs_dir.is_dir() or not costs_file.exists():
        return pd.DataFrame()
    profiles = json.loads(costs_file.read_text())
    errors = {
        (r["schedule"], int(r["stages"]), int(r["microbatches"])): round_errors(r)
        for r in (rows.to_dict("records") if rows is not None and not rows.empty else [])
    }
    out = []
    for spec_file in sorted(runs_dir.glob("N*.spec.json")):
        spec = json.loads(spec_file.read_text())
        warmup = spec["settings"]["warmup"]
        for run in spec["runs"]:
            pipeline = run["pipeline"]
            schedule = SCHEDULES.get(pipeline["schedule"])
            if schedule is None or not schedule.is_pipeline or pipeline["stages"] < 2:
                continue
            files = sorted(runs_dir.glob(f"{run['name']}.r*.json"), key=lambda p: int(p.suffixes[-2][2:]))
            if not files:
                continue
            results = [json.loads(f.read_text()) for f in files]
            if not all(r.get("records") for r in results):  # a run kept without its timeline
                continue
            costs = BlockCosts(**profiles[str(pipeline["microbatches"])])
            rounds = [replay_round(pipeline, result, costs, warmup) for result in results]
            replay = [m / r - 1.0 for m, r, _ in rounds]
            computes = [c for _, _, c in rounds]
            key = (pipeline["schedule"], pipeline["stages"], pipeline["microbatches"])
            parts = [(1.0 + e) / (1.0 + r) - 1.0 for e, r in zip(errors.get(key, []), replay)]
            out.append(
                {
                    "schedule": key[0],
                    "stages": key[1],
                    "microbatches": key[2],
                    "rounds": len(rounds),
                    "round_replay_errors": replay,
                    "replay_error": statistics.median(replay),
                    "compute_part": statistics.median(parts) if parts else None,
                    "compute_spread": max(computes) / min(computes) - 1.0,
                }
            )
    return pd.DataFrame(out)


def _pct(x: float) -> str:
    """``x`` in percent to one decimal, never ``-0.0``."""
    return f"{round(100 * x, 1) + 0.0:.1f}"


def run_table(replayed: pd.DataFrame) -> pd.DataFrame:
    """:func:`replay_bench`'s frame as a bench's per-run table (percentages): each run's replay
    error (median and the range over its rounds), compute part and compute spread."""
    if replayed.empty:
        return pd.DataFrame()
    out = []
    for r in replayed.to_dict("records"):
        errors = r["round_replay_errors"]
        part = r.get("compute_part")
        out.append(
            {
                "run": f"{r['schedule']}_N{r['stages']}_M{r['microbatches']}",
                "replay error %": 100 * r["replay_error"],
                "rounds' replay errors %": f"{_pct(min(errors))} to {_pct(max(errors))}",
                "compute part %": 100 * part if part is not None and pd.notna(part) else None,
                "compute spread %": 100 * r["compute_spread"],
            }
        )
    return pd.DataFrame(out)


def replay_summary(frames: dict[str, pd.DataFrame], goal: float) -> pd.DataFrame:
    """Per bench (key -> :func:`replay_bench`'s frame): the runs replayed, how many within
    ``goal``, the median and largest replay error (and where), the median compute part, and the
    median and largest compute spread over the rounds of one run."""
    out = []
    for key, df in frames.items():
        if df.empty:
            continue
        miss = df["replay_error"].abs()
        worst = df.loc[miss.idxmax()]
        parts = df["compute_part"].dropna()
        out.append(
            {
                "bench": key,
                "runs": len(df),
                "within": int((miss <= goal).sum()),
                "median": float(df["replay_error"].median()),
                "worst": float(worst["replay_error"]),
                "worst_run": f"{worst['schedule']} M={worst['microbatches']}",
                "compute_part": float(parts.median()) if len(parts) else None,
                "spread_median": float(df["compute_spread"].median()),
                "spread_max": float(df["compute_spread"].max()),
            }
        )
    return pd.DataFrame(out)


def rows_digest(folder: Path) -> str:
    """The digest of ``folder/rows.jsonl`` ("" without it): what a ``replay.jsonl`` goes with."""
    rows = folder / "rows.jsonl"
    return hashlib.sha256(rows.read_bytes()).hexdigest()[:16] if rows.exists() else ""


def write_replay(folder: Path, rows: pd.DataFrame | None = None) -> Path | None:
    """Replay ``folder``'s kept runs (:func:`replay_bench`, ``rows``: its measured rows) into
    ``folder/replay.jsonl``, each line with the digest of the ``rows.jsonl`` beside it; None, and
    nothing written, where the folder keeps no runs to replay."""
    replayed = replay_bench(folder, rows)
    if replayed.empty:
        return None
    digest = rows_digest(folder)
    out = folder / REPLAY_FILE
    with out.open("w") as fh:
        for record in replayed.to_dict("records"):
            fh.write(json.dumps({**record, "rows_digest": digest}, default=lambda x: x.item()) + "\n")
    return out


def read_replay(folder: Path) -> tuple[pd.DataFrame, str]:
    """``folder/replay.jsonl`` and its state: ``current`` when it goes with the folder's
    ``rows.jsonl``, ``stale`` when the rows changed since (the frame is then empty), ``missing``
    without the file."""
    path = folder / REPLAY_FILE
    if not path.exists():
        return pd.DataFrame(), "missing"
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not lines or any(line.get("rows_digest") != rows_digest(folder) for line in lines):
        return pd.DataFrame(), "stale"
    return pd.DataFrame(lines).drop(columns="rows_digest"), "current"


def replay_frames(keys: Sequence[str], bases: Sequence[Path]) -> tuple[dict[str, pd.DataFrame], list[str]]:
    """The kept replays (:func:`read_replay`) of the benches ``keys``, each from the first of
    ``bases`` holding ``<bench>/replay.jsonl``: the current ones, and the benches whose replay
    is stale."""
    replays, stale = {}, []
    for key in keys:
        folder = next((b / key for b in bases if (b / key / REPLAY_FILE).exists()), None)
        if folder is None:
            continue
        frame, state = read_replay(folder)
        if state == "current":
            replays[key] = frame
        else:
            stale.append(key)
    return replays, stale


def replay_section(replays: dict[str, pd.DataFrame], goal: float, stale: Sequence[str] = ()) -> str:
    """The markdown of :func:`replay_frames`' replays, per bench, naming the ``stale`` ones;
    empty without either."""
    from analysis import rows as R
    from analysis.tables import markdown_table

    summary = replay_summary(replays, goal)
    note = "".join(
        f"\nstale: the replay of `results/{key}/` goes with older rows; run `python -m analysis.bench "
        f"results/{key}` where its runs are kept.\n"
        for key in stale
    )
    if summary.empty:
        return note
    pct = 100 * goal
    lines = [
        [
            r["bench"],
            f"{r['within']} of {r['runs']}",
            100 * r["median"],
            100 * r["worst"],
            r["worst_run"],
            100 * r["compute_part"] if pd.notna(r["compute_part"]) else None,
            100 * r["spread_median"],
            100 * r["spread_max"],
        ]
        for r in R.records(summary)
    ]
    return (
        "\n**Replayed on each run's own compute** (`analysis/replay.py`, kept in each bench's "
        "`replay.jsonl`): every round of every "
        "action-list run above, replayed by the simulator's dry run with each compute action taking "
        "the time the run's timeline measured for it and the messages charged by the link model the "
        "prediction used (the run's probed link, less what a message's bytes cost the work beside them, "
        "which the timed compute holds): the error of the schedule's order, its waits and the "
        "message model alone, signed like the prediction error (the torch peer keeps no timeline and "
        "is not replayed). *Compute part*: what remains of a row's prediction error, (1 + error) / "
        "(1 + replay error) - 1 per round: the run's compute against the profile. *Compute spread*: "
        "a run's slowest round over its fastest in compute per steady step, less 1 (the same run, "
        "same code and settings): what the shared machine alone moves a run by between rounds. The "
        "replay error and the compute part of a run are the medians over its rounds.\n\n"
        + markdown_table(
            [
                "bench",
                f"replayed within {pct:.0f} %",
                "median replay error %",
                "largest replay error %",
                "at",
                "median compute part %",
                "median compute spread %",
                "largest compute spread %",
            ],
            lines,
        )
        + note
    )
