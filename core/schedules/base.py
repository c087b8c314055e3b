"""What every schedule function shares: argument checks and the builders of action runs.

The pipeline moves *units*: each view of each micro-batch is one unit (BYOL and MoCo-v3 have
two views, so ``U = 2 M``), numbered micro-batch-major: unit ``u`` is view ``u % views`` of
micro-batch ``u // views``. ``Action.microbatch`` holds the unit index.

Timelines in the schedules' docstrings are simulated with unit costs (teacher forward = student
forward = 1, student backward = 2, split backward pieces = 2 / pieces, a split backward's input and weight
halves 1 each, instant links), one character per half unit of time. Letters: ``T`` teacher
forward, ``F`` student forward, ``B`` student backward (its input half when split), ``W`` its
weight half, ``L`` loss, ``O`` optimizer step; the digit after a letter is the micro-batch,
lower case marks the next mini-batch, ``.`` is idle.
"""

from __future__ import annotations

from core.action import Action, Op

TEACHER_KINDS = ("frozen", "ema")


def check_shape(stages: int, microbatches: int, teacher: str, batches: int, pieces: int, views: int) -> int:
    """Validate a schedule function's arguments.

    Returns:
        Units per mini-batch, ``microbatches * views``.

    Raises:
        ValueError: naming the argument out of range.
    """
    if not isinstance(stages, int) or stages < 1:
        raise ValueError(f"stages must be an integer >= 1, got {stages!r}")
    if not isinstance(microbatches, int) or microbatches < 1:
        raise ValueError(f"microbatches must be an integer >= 1, got {microbatches!r}")
    if teacher not in TEACHER_KINDS:
        raise ValueError(f"teacher must be one of {TEACHER_KINDS}, got {teacher!r}")
    if not isinstance(batches, int) or batches < 1:
        raise ValueError(f"batches must be an integer >= 1, got {batches!r}")
    if not isinstance(pieces, int) or pieces < 1:
        raise ValueError(f"backward_pieces must be an integer >= 1, got {pieces!r}")
    if not isinstance(views, int) or views < 1:
        raise ValueError(f"views must be an integer >= 1, got {views!r}")
    return microbatches * views


def parts(pieces: int) -> list[int | None]:
    """``Action.part`` values of one backward split into ``pieces``."""
    return [None] if pieces == 1 else list(range(pieces))


def tf(stage: int, batch: int, units: range | list[int]) -> list[Action]:
    """Teacher forwards of ``units`` of mini-batch ``batch``."""
    return [Action(stage, Op.TF, batch, u) for u in units]


def sf(stage: int, batch: int, units: range | list[int]) -> list[Action]:
    """Student forwards of ``units`` of mini-batch ``batch``."""
    return [Action(stage, Op.SF, batch, u) for u in units]


def sb(stage: int, batch: int, units: range | list[int], pieces: int) -> list[Action]:
    """Student backwards of ``units``, each in ``pieces`` pieces."""
    return [Action(stage, Op.SB, batch, u, p) for u in units for p in parts(pieces)]


def sw(stage: int, batch: int, units: range | list[int], pieces: int) -> list[Action]:
    """Weight-gradient halves of split backwards of ``units``, each in ``pieces`` pieces."""
    return [Action(stage, Op.SW, batch, u, p) for u in units for p in parts(pieces)]


def interleave(backward: list[Action], late: list[Action]) -> list[Action]:
    """Spread ``late`` evenly between the ``backward`` actions, the last one after the last."""
    out: list[Action] = []
    placed = 0
    for i, piece in enumerate(backward, start=1):
        out.append(piece)
        while placed < len(late) and (placed + 1) * len(backward) <= i * len(late):
            out.append(late[placed])
            placed += 1
    return out + late[placed:]
