"""Action: one step of one pipeline stage, as a hashable value with a compact string form."""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum


class Op(str, Enum):
    """What an action does. The first six are compute; the rest are added by lowering."""

    TF = "TF"  # teacher forward of one micro-batch, no grad
    SF = "SF"  # student forward of one micro-batch, keeps activations
    SB = "SB"  # student backward of one micro-batch, or of one piece of it (a split backward:
    # the gradient of the stage input only)
    SW = "SW"  # split backward: the gradient of the stage's weights, after its SB
    LOSS = "LOSS"  # last stage: loss of the mini-batch (or of one micro-batch)
    OPT = "OPT"  # optimizer step of the stage's student, then its teacher update
    SEND_TF = "SEND_TF"  # teacher activations to the next stage
    RECV_TF = "RECV_TF"  # teacher activations from the previous stage
    SEND_SF = "SEND_SF"  # student activations to the next stage
    RECV_SF = "RECV_SF"  # student activations from the previous stage
    SEND_SB = "SEND_SB"  # student input gradients to the previous stage
    RECV_SB = "RECV_SB"  # student output gradients from the next stage


COMPUTE_OPS = frozenset({Op.TF, Op.SF, Op.SB, Op.SW, Op.LOSS, Op.OPT})
SEND_OPS = frozenset({Op.SEND_TF, Op.SEND_SF, Op.SEND_SB})
RECV_OPS = frozenset({Op.RECV_TF, Op.RECV_SF, Op.RECV_SB})


@dataclass(frozen=True)
class OpInfo:
    """What the lowering, the validator, the simulator and the plots need to know of an op.

    Attributes:
        letter: one character for text timelines (compute ops).
        label: legend text of Gantt charts (compute ops).
        flow: where a compute op's result goes: ``"down"`` to the next stage (forwards),
            ``"up"`` to the previous one (input gradients), None: stays on the stage.
        channel: the message channel of that result (and of the send/receive ops).
    """

    letter: str | None = None
    label: str | None = None
    flow: str | None = None
    channel: str | None = None


OPS: dict[Op, OpInfo] = {
    Op.TF: OpInfo("T", "teacher forward", "down", "TF"),
    Op.SF: OpInfo("F", "student forward", "down", "SF"),
    Op.SB: OpInfo("B", "student backward", "up", "SB"),
    Op.SW: OpInfo("W", "student weight gradient"),
    Op.LOSS: OpInfo("L", "loss"),
    Op.OPT: OpInfo("O", "optimizer + teacher update"),
    Op.SEND_TF: OpInfo(flow="down", channel="TF"),
    Op.RECV_TF: OpInfo(flow="down", channel="TF"),
    Op.SEND_SF: OpInfo(flow="down", channel="SF"),
    Op.RECV_SF: OpInfo(flow="down", channel="SF"),
    Op.SEND_SB: OpInfo(flow="up", channel="SB"),
    Op.RECV_SB: OpInfo(flow="up", channel="SB"),
}

# Which message channel a communication op uses. Each channel is its own process group in the
# runtime, so a teacher activation can never be matched against a student one.
CHANNEL: dict[Op, str] = {op: info.channel for op, info in OPS.items() if op not in COMPUTE_OPS}
CHANNELS: tuple[str, ...] = tuple(dict.fromkeys(CHANNEL.values()))
SEND: dict[str, Op] = {CHANNEL[op]: op for op in SEND_OPS}
RECV: dict[str, Op] = {CHANNEL[op]: op for op in RECV_OPS}
LETTERS: dict[str, str] = {op.value: info.letter for op, info in OPS.items() if info.letter}


def peer_stage(action: Action) -> int:
    """The stage on the other end of a send or receive: a message flowing down goes from stage
    s to s + 1, one flowing up from s to s - 1.

    Raises:
        ValueError: for an op that is not a send or a receive.
    """
    if action.op not in CHANNEL:
        raise ValueError(f"{action} is not a send or a receive")
    towards_next = (OPS[action.op].flow == "down") == (action.op in SEND_OPS)
    return action.stage + 1 if towards_next else action.stage - 1


_PATTERN = re.compile(r"^(\d+)([A-Z_]+?)(\d+)?(?:\.(\d+))?(?:@(\d+))?$")


@dataclass(frozen=True, order=True)
class Action:
    """One step of one stage.

    Attributes:
        stage: pipeline stage (= rank) that runs the action, 0-based.
        op: what the action does.
        batch: mini-batch index inside the schedule window, 0-based. Mini-batch ``b`` is the
            ``t = b + 1``-th of ARCHITECTURE.md's version rule: its student reads version ``b``.
        microbatch: micro-batch index, ``None`` for whole-batch ops (``OPT``, whole-batch ``LOSS``).
        part: piece of a split backward (``SB``, ``SW`` and the gradient messages), else ``None``.

    The string form is ``{stage}{op}{microbatch}[.{part}][@{batch}]`` with ``@0`` left out, e.g.
    ``"2TF3"`` (stage 2, teacher forward of micro-batch 3 of batch 0), ``"1SB0.1@4"`` or
    ``"0OPT@2"``. :func:`parse_action` reads it back.
    """

    stage: int
    op: Op
    batch: int = 0
    microbatch: int | None = None
    part: int | None = None

    def __str__(self) -> str:
        text = f"{self.stage}{self.op.value}"
        if self.microbatch is not None:
            text += str(self.microbatch)
        if self.part is not None:
            text += f".{self.part}"
        if self.batch:
            text += f"@{self.batch}"
        return text

    def __repr__(self) -> str:
        return f"Action({self})"

    @property
    def is_compute(self) -> bool:
        return self.op in COMPUTE_OPS

    def key(self) -> tuple[int, int | None, int | None]:
        """(batch, microbatch, part): what a send and its matching receive have in common."""
        return (self.batch, self.microbatch, self.part)


def parse_action(text: str) -> Action:
    """Parse the string form of :class:`Action`.

    Returns:
        The action ``text`` describes.

    Raises:
        ValueError: if ``text`` is not of the form ``{stage}{op}{microbatch}[.{part}][@{batch}]``.
    """
    match = _PATTERN.match(text.strip())
    if match is None:
        raise ValueError(f"cannot parse action {text!r}; expected e.g. '2TF3', '1SB0.1@4', '0OPT@2'")
    stage, op, micro, part, batch = match.groups()
    try:
        op_value = Op(op)
    except ValueError:
        known = ", ".join(o.value for o in Op)
        raise ValueError(f"unknown op {op!r} in action {text!r}; known ops: {known}") from None
    return Action(
        stage=int(stage),
        op=op_value,
        batch=int(batch) if batch is not None else 0,
        microbatch=int(micro) if micro is not None else None,
        part=int(part) if part is not None else None,
    )


def format_grid(lists: list[list[Action]], mark: tuple[int, int] | None = None) -> str:
    """Return the per-stage action lists as a text grid, one row per stage.

    Args:
        lists: per-stage action lists.
        mark: optional ``(stage, index)`` of an action to flag with ``>>`` (a failing step).
    """
    rows = []
    for stage, actions in enumerate(lists):
        cells = []
        for index, action in enumerate(actions):
            cell = str(action)
            if mark is not None and mark == (stage, index):
                cell = f">>{cell}<<"
            cells.append(cell)
        rows.append(f"stage {stage}: " + " ".join(cells))
    return "\n".join(rows)
