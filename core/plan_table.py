"""The planner's ranked list as a plain-text table (``python -m core.plan``'s output)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from core.candidate import Candidate


def _fmt(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def table(candidates: Sequence[Candidate], top: int | None = None) -> str:
    """The ranked list as a plain-text table."""
    headers = [
        "#",
        "schedule",
        "dp",
        "M",
        "pieces",
        "L",
        "partition",
        "teacher early",
        "samples/s",
        "eff.",
        "bubble",
    ]
    headers += ["peak GiB per stage", "max GiB"]
    lines = [
        [
            str(i + 1),
            c.schedule,
            str(c.dp),
            str(c.microbatches),
            "-" if c.backward_pieces is None else str(c.backward_pieces),
            "-" if c.lookahead is None else str(c.lookahead),
            c.partition,
            "-" if c.teacher_early is None else ",".join(map(str, c.teacher_early)),
            f"{c.samples_per_s:.1f}",
            _fmt(c.efficiency),
            _fmt(c.bubble_fraction),
            " ".join(f"{g:.2f}" for g in c.stage_mem_gib),
            f"{c.peak_gib:.2f}",
        ]
        for i, c in enumerate(candidates[:top] if top else candidates)
    ]
    widths = [max(len(r[i]) for r in [headers, *lines]) for i in range(len(headers))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in [headers, *lines])
