"""Result rows with a fixed schema, timeline records, and throughput accounting."""

from __future__ import annotations

import datetime as _dt
import json
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

from core.action import COMPUTE_OPS, LETTERS, Action, Op

# ARCHITECTURE.md "Results": every row has these keys (None where not applicable).
ROW_KEYS: tuple[str, ...] = (
    "method",
    "schedule",
    "model",
    "stages",
    "microbatches",
    "global_batch",
    "device",
    "samples_per_s",
    "step_ms",
    "efficiency",
    "bound_samples_per_s",
    "bubble_fraction",
    "peak_mem_gib",
    "metric",
    "metric_value",
    "seed",
    "git_sha",
    "torch",
    "date",
    "simulated",
)


@dataclass(frozen=True)
class TimelineRecord:
    """Start and end of one action on one stage; the simulator and the runtime both emit these.

    Attributes:
        stage: stage that ran the action.
        action: the action's string form (``"2TF3@1"``).
        op: the op name (``"TF"``, ``"SF"``, ``"SB"``, ``"LOSS"``, ``"OPT"``, or a send/receive).
        batch: mini-batch index.
        microbatch: unit index, or None.
        part: backward piece, or None.
        start_ms: start time in milliseconds from the start of the timeline.
        end_ms: end time in milliseconds.
    """

    stage: int
    action: str
    op: str
    batch: int
    microbatch: int | None
    part: int | None
    start_ms: float
    end_ms: float

    @classmethod
    def of(cls, action: Action, start_ms: float, end_ms: float) -> TimelineRecord:
        """Return the record of ``action`` running from ``start_ms`` to ``end_ms``."""
        return cls(
            action.stage,
            str(action),
            action.op.value,
            action.batch,
            action.microbatch,
            action.part,
            start_ms,
            end_ms,
        )

    def to_dict(self) -> dict:
        return asdict(self)


def busy_and_span(
    records: Sequence[TimelineRecord], stages: int, start_ms: float, end_ms: float
) -> tuple[list[float], float]:
    """Busy time of compute actions per stage inside ``[start_ms, end_ms]``, and the span.

    Returns:
        (busy milliseconds per stage, ``end_ms - start_ms``).
    """
    compute = {op.value for op in COMPUTE_OPS}
    busy = [0.0] * stages
    for r in records:
        if r.op not in compute:
            continue
        lo, hi = max(r.start_ms, start_ms), min(r.end_ms, end_ms)
        if hi > lo:
            busy[r.stage] += hi - lo
    return busy, end_ms - start_ms


def batch_end_times(records: Iterable[TimelineRecord]) -> dict[int, float]:
    """End time of each mini-batch: the latest end of its ``OPT`` over all stages."""
    ends: dict[int, float] = {}
    for r in records:
        if r.op == Op.OPT.value:
            ends[r.batch] = max(ends.get(r.batch, 0.0), r.end_ms)
    return ends


def steady_state(
    records: Sequence[TimelineRecord], stages: int, warmup: int, last: int
) -> tuple[float, float]:
    """Mean step time and bubble fraction between the end of batch ``warmup`` and of ``last``.

    Returns:
        (step milliseconds, idle share of ``stages x span``).

    Raises:
        ValueError: if fewer than two mini-batch ends fall in the window.
    """
    ends = batch_end_times(records)
    if warmup not in ends or last not in ends or last <= warmup:
        raise ValueError(f"need the ends of batches {warmup} and {last}, have {sorted(ends)}")
    start, end = ends[warmup], ends[last]
    busy, span = busy_and_span(records, stages, start, end)
    step = span / (last - warmup)
    bubble = 1.0 - sum(busy) / (stages * span) if span > 0 else 0.0
    return step, bubble


def git_sha(repo: Path | None = None) -> str | None:
    """Short sha of HEAD, with ``+dirty`` when the code (not results) has uncommitted changes;
    None outside a checkout."""
    cwd = repo or Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"],
            cwd=cwd,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(  # code only: results written while benchmarking do not count
            ["git", "status", "--porcelain", "--", "core", "methods", "experiments", "analysis", "Makefile"],
            cwd=cwd,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return sha + ("+dirty" if dirty else "")


def _package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def make_row(**fields: object) -> dict:
    """Return a result row: every key of :data:`ROW_KEYS` (None where not given) plus extras.

    ``git_sha``, ``torch`` and ``date`` are filled in when not given.

    Raises:
        ValueError: if ``simulated`` is missing (every row must say whether it was measured).
    """
    if "simulated" not in fields:
        raise ValueError("a result row must say simulated=True or simulated=False")
    row: dict = {key: None for key in ROW_KEYS}
    row["git_sha"] = git_sha()
    row["torch"] = _package_version("torch")
    row["date"] = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    row.update(fields)
    return row


def write_rows(path: Path, rows: Iterable[dict], append: bool = False) -> Path:
    """Write rows as JSON lines to ``path`` (parents created); returns ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a" if append else "w") as fh:
        for row in rows:
            fh.write(json.dumps(row, sort_keys=False) + "\n")
    return path


def read_rows(path: Path) -> list[dict]:
    """Read JSON-lines rows from ``path``."""
    with path.open() as fh:
        return [json.loads(line) for line in fh if line.strip()]


def text_timeline(records: Sequence[TimelineRecord], stages: int, per_char: float = 0.5) -> str:
    """Render compute records as text, one row per stage, one character per ``per_char`` ms.

    Letters: ``T`` teacher forward, ``F`` student forward, ``B`` backward, ``L`` loss, ``O`` step,
    upper case for even mini-batches and lower case for odd ones; a forward or a whole backward
    shows its micro-batch after the letter where it has room; ``.`` is idle.
    """
    letters = LETTERS
    end = max(r.end_ms for r in records)
    rows = [["."] * round(end / per_char) for _ in range(stages)]
    for r in records:
        if r.op not in letters:
            continue
        letter = letters[r.op] if r.batch % 2 == 0 else letters[r.op].lower()
        first, last = round(r.start_ms / per_char), round(r.end_ms / per_char)
        label = letter + (str(r.microbatch % 10) if r.microbatch is not None and r.part is None else "")
        for k in range(first, last):
            rows[r.stage][k] = label[(k - first) % len(label)] if last - first >= len(label) else letter
    return "\n".join(f"stage {s}: " + "".join(row) for s, row in enumerate(rows))
