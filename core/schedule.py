"""Schedules as data: pure functions from pipeline shape to per-stage action lists, and lowering.

Every schedule function takes ``(stages, microbatches, teacher, batches, backward_pieces, views)``
and returns one ordered list of compute actions per stage for a window of ``batches`` consecutive
mini-batches. The pipeline moves *units*: each view of each micro-batch is one unit (BYOL and
MoCo-v3 have two views, so ``U = 2 M``), numbered micro-batch-major: unit ``u`` is view
``u % views`` of micro-batch ``u // views``. ``Action.microbatch`` holds the unit index.
:func:`lower` adds the send/receive actions; :mod:`core.validate` checks the invariants.

Timelines in the docstrings are simulated with unit costs (teacher forward = student forward = 1,
student backward = 2, split backward pieces = 2 / pieces, instant links), one character per
half unit of time. Letters: ``T`` teacher forward, ``F`` student forward, ``B`` student backward,
``L`` loss, ``O`` optimizer step; the digit after a letter is the micro-batch, lower case marks
the next mini-batch, ``.`` is idle.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from core.action import Action, Op

TEACHER_KINDS = ("frozen", "ema")

ScheduleFn = Callable[..., list[list[Action]]]


def _check(stages: int, microbatches: int, teacher: str, batches: int, pieces: int, views: int) -> int:
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


def _parts(pieces: int) -> list[int | None]:
    return [None] if pieces == 1 else list(range(pieces))


def _tf(stage: int, batch: int, units: range | list[int]) -> list[Action]:
    return [Action(stage, Op.TF, batch, u) for u in units]


def _sf(stage: int, batch: int, units: range | list[int]) -> list[Action]:
    return [Action(stage, Op.SF, batch, u) for u in units]


def _sb(stage: int, batch: int, units: range | list[int], pieces: int) -> list[Action]:
    return [Action(stage, Op.SB, batch, u, p) for u in units for p in _parts(pieces)]


def _flush_batch(stage: int, stages: int, batch: int, units: int, pieces: int) -> list[Action]:
    """Teacher forwards, student forwards, loss, backwards, step: one flushed mini-batch."""
    actions = _tf(stage, batch, range(units)) + _sf(stage, batch, range(units))
    if stage == stages - 1:
        actions.append(Action(stage, Op.LOSS, batch))
    actions += _sb(stage, batch, range(units), pieces)
    actions.append(Action(stage, Op.OPT, batch))
    return actions


def gpipe(
    stages: int,
    microbatches: int,
    teacher: str = "ema",
    batches: int = 1,
    backward_pieces: int = 1,
    views: int = 1,
) -> list[list[Action]]:
    """GPipe: every teacher and student forward of a mini-batch, then every backward, then a flush.

    Returns:
        One compute-action list per stage.

    Per stage and mini-batch the work is ``U (t + f + b)`` (U units, teacher forward t, student
    forward f, backward b). The student's dependency chain crosses the pipeline twice, so every
    stage also waits ``(N - 1) (f + b / P)`` (forward fill plus the drain of the first backward
    piece, P pieces), which no teacher work fills. With ``t = f``:

        bubble fraction = (N - 1)(f + b/P) / (U (2f + b) + (N - 1)(f + b/P))

    which at ``t = f = 1, b = 2, P = 1`` is ``3 (N - 1) / (4 U + 3 (N - 1))``: the
    ``(N - 1) / (M + N - 1)`` of a plain GPipe with the teacher's forwards added to the work.

    N = 4, U = 4, two mini-batches::

        stage 0: T0T1T2T3F0F1F2F3...................B0B0B1B1B2B2B3B3Ot0t1t2t3f0f1f2f3............
        stage 1: ..T0T1T2T3F0F1F2F3.............B0B0B1B1B2B2B3B3O......t0t1t2t3f0f1f2f3..........
        stage 2: ....T0T1T2T3F0F1F2F3.......B0B0B1B1B2B2B3B3O............t0t1t2t3f0f1f2f3.......b
        stage 3: ......T0T1T2T3F0F1F2F3LB0B0B1B1B2B2B3B3O..................t0t1t2t3f0f1f2f3lb0b0b
    """
    units = _check(stages, microbatches, teacher, batches, backward_pieces, views)
    return [
        [a for b in range(batches) for a in _flush_batch(s, stages, b, units, backward_pieces)]
        for s in range(stages)
    ]


def sequential(
    stages: int,
    microbatches: int,
    teacher: str = "ema",
    batches: int = 1,
    backward_pieces: int = 1,
    views: int = 1,
) -> list[list[Action]]:
    """Single-process reference: the GPipe order on one stage; what every schedule must equal.

    Returns:
        One compute-action list (one stage).

    Raises:
        ValueError: if ``stages != 1``.

    N = 1, U = 4::

        stage 0: T0T1T2T3F0F1F2F3LB0B0B1B1B2B2B3B3O
    """
    if stages != 1:
        raise ValueError(f"sequential runs on one stage; got stages={stages}. Use --stages 1")
    return gpipe(1, microbatches, teacher, batches, backward_pieces, views)


def mp(
    stages: int,
    microbatches: int,
    teacher: str = "ema",
    batches: int = 1,
    backward_pieces: int = 1,
    views: int = 1,
) -> list[list[Action]]:
    """Inter-layer model parallelism: the whole mini-batch passes the stages one at a time.

    Returns:
        One compute-action list per stage.

    Raises:
        ValueError: if ``microbatches != 1``.

    Its receives are hoisted (:func:`lower`), so a stage starts a phase only once its neighbour
    has finished the whole phase: at any moment one stage works, as in the paper's baseline,
    and throughput is that of one device minus transfers. N = 4, two views::

        stage 0: T0T1F0F1.................................................B0B0B1B1O
        stage 1: ........T0T1F0F1.................................B0B0B1B1O........
        stage 2: ................T0T1F0F1.................B0B0B1B1O................
        stage 3: ........................T0T1F0F1LB0B0B1B1O........................
    """
    _check(stages, microbatches, teacher, batches, backward_pieces, views)
    if microbatches != 1:
        raise ValueError(
            f"mp runs the whole mini-batch as one micro-batch, got microbatches={microbatches}; "
            "set microbatches=1, or use gpipe, 1f1b or tspipe to pipeline micro-batches"
        )
    return gpipe(stages, 1, teacher, batches, backward_pieces, views)


def one_f_one_b(
    stages: int,
    microbatches: int,
    teacher: str = "ema",
    batches: int = 1,
    backward_pieces: int = 1,
    views: int = 1,
) -> list[list[Action]]:
    """1F1B (PipeDream-Flush) for the student, all teacher forwards of the mini-batch first.

    Returns:
        One compute-action list per stage.

    Stage ``s`` runs ``min(N - 1 - s, U)`` warm-up student forwards, then alternates one forward
    and one backward, then drains. The last stage computes the loss of each micro-batch as soon
    as its forward is done (``LOSS`` with a micro-batch index), which is exact for losses that
    are a sum over micro-batches given all teacher outputs (every loss in this project). The
    bubble equals GPipe's; what 1F1B saves is activation memory (at most N micro-batches alive).
    N = 4, U = 4::

        stage 0: T0T1T2T3F0F1F2F3............B0B0..B1B1...B2B2..B3B3Ot0t1t2t3f0f1f2f3............
        stage 1: ..T0T1T2T3F0F1F2........B0B0F3B1B1...B2B2..B3B3O......t0t1t2t3f0f1f2........b0b0
        stage 2: ....T0T1T2T3F0F1....B0B0F2B1B1F3.B2B2..B3B3O............t0t1t2t3f0f1....b0b0f2b1
        stage 3: ......T0T1T2T3F0B0B0F1B1B1F2LB2B2F3B3B3O..................t0t1t2t3f0b0b0f1b1b1f2
    """
    units = _check(stages, microbatches, teacher, batches, backward_pieces, views)
    lists: list[list[Action]] = []
    last = stages - 1
    for s in range(stages):
        actions: list[Action] = []
        for b in range(batches):
            actions += _tf(s, b, range(units))
            warmup = min(last - s, units)
            actions += _sf(s, b, range(warmup))
            for i in range(units - warmup):
                u = warmup + i
                actions += _sf(s, b, [u])
                if s == last:
                    actions.append(Action(s, Op.LOSS, b, u))
                actions += _sb(s, b, [i], backward_pieces)
            actions += _sb(s, b, range(units - warmup, units), backward_pieces)
            actions.append(Action(s, Op.OPT, b))
        lists.append(actions)
    return lists


def tspipe_early_teacher_forwards(stage: int, stages: int, units: int, pieces: int) -> int:
    """How many next-batch teacher forwards stage ``stage`` runs before its backward.

    Returns:
        ``min(U, ceil((N - 1 - s) * (1 + 2 / P)))``: the time stage ``s`` would wait for its
        first gradient, in teacher-forward slots, when teacher forward = student forward = half
        the student backward (the last micro-batch's forward crosses ``N - 1 - s`` stages and
        the first backward piece, ``2 / P`` forward slots long, crosses them back).
    """
    return min(units, math.ceil((stages - 1 - stage) * (1 + 2 / pieces) - 1e-9))


def tspipe(
    stages: int,
    microbatches: int,
    teacher: str = "ema",
    batches: int = 1,
    backward_pieces: int = 2,
    views: int = 1,
) -> list[list[Action]]:
    """TSPipe: the teacher forwards of mini-batch b + 1 fill the student's bubbles of mini-batch b.

    Returns:
        One compute-action list per stage.

    Stage ``s`` runs, per mini-batch b: every student forward of b; the first ``k_s`` teacher
    forwards of b + 1 (:func:`tspipe_early_teacher_forwards`: the time it would wait for the first
    gradient); the backward of b, each micro-batch in ``P`` pieces; the other ``U - k_s`` teacher
    forwards of b + 1 (the time it would wait for slower upstream stages); then the optimizer
    step. Only the first mini-batch's teacher forwards run alone, in a prologue. There is no flush
    of teacher work between mini-batches, so with ``t = f = b / 2`` and ``P = 2`` the stages never
    idle once ``U >= 2 (N - 1)``: any ``N`` and ``M``, where the original required ``M = N - 1``.

    Every teacher forward of b + 1 runs before the stage's step of b, so an EMA teacher serves
    mini-batch b + 1 with the weights after step b - 1: one version stale (DESIGN.md), without
    storing an extra copy. The student stays exactly synchronous. Steady state, N = 4, P = 2,
    loss and step taking no time; U = 4 leaves a bubble (4 < 2 (N - 1))::

        stage 0: BBBBBBBBBBBBf0f1f2f3T0T1T2T3....bbbbbbbbbbbbbbbbF0F1F2F3t0t1t2t3....BBBBBBBBBBBB
        stage 1: BBBBBBBBBB....f0f1f2f3T0T1T2T3bbbbbbbbbbbbbbbb....F0F1F2F3t0t1t2t3BBBBBBBBBBBB
        stage 2: BBBBBBBBt2t3....f0f1f2f3T0T1bbbbbbbbbbbbbbbbT2T3....F0F1F2F3t0t1BBBBBBBBBBBBBB
        stage 3: BBBBBBt0t1t2t3....f0f1f2f3bbbbbbbbbbbbbbbbT0T1T2T3....F0F1F2F3BBBBBBBBBBBBBBBB

    and U = 6 = 2 (N - 1) leaves none::

        stage 0: BBBBBBBBBBBBf0f1f2f3f4f5T0T1T2T3T4T5bbbbbbbbbbbbbbbbbbbbbbbbF0F1F2F3F4F5t0t1t2t3
        stage 1: BBBBBBBBBBt4t5f0f1f2f3f4f5T0T1T2T3bbbbbbbbbbbbbbbbbbbbbbbbT4T5F0F1F2F3F4F5t0t1t2
        stage 2: BBBBBBBBt2t3t4t5f0f1f2f3f4f5T0T1bbbbbbbbbbbbbbbbbbbbbbbbT2T3T4T5F0F1F2F3F4F5t0t1
        stage 3: BBBBBBt0t1t2t3t4t5f0f1f2f3f4f5bbbbbbbbbbbbbbbbbbbbbbbbT0T1T2T3T4T5F0F1F2F3F4F5BB

    On stage 0, which ends the backward chain, the late teacher forwards are spread between the
    backward pieces, where they fill waits for a slower downstream backward without delaying
    anyone; on the other stages they follow the backward.
    """
    n_units = _check(stages, microbatches, teacher, batches, backward_pieces, views)
    last = stages - 1
    units = range(n_units)
    lists: list[list[Action]] = []
    for s in range(stages):
        early = tspipe_early_teacher_forwards(s, stages, n_units, backward_pieces)
        actions = _tf(s, 0, units)
        for b in range(batches):
            nxt = b + 1 < batches
            actions += _sf(s, b, units)
            if s == last:
                actions.append(Action(s, Op.LOSS, b))
            if nxt:
                actions += _tf(s, b + 1, range(early))
            backward = _sb(s, b, units, backward_pieces)
            late = _tf(s, b + 1, range(early, n_units)) if nxt else []
            if s == 0:
                actions += _interleave(backward, late)
            else:
                actions += backward + late
            actions.append(Action(s, Op.OPT, b))
        lists.append(actions)
    return lists


def _interleave(backward: list[Action], late: list[Action]) -> list[Action]:
    """Spread ``late`` evenly between the backward pieces, the last one after the last piece."""
    out: list[Action] = []
    placed = 0
    for i, piece in enumerate(backward, start=1):
        out.append(piece)
        while placed < len(late) and (placed + 1) * len(backward) <= i * len(late):
            out.append(late[placed])
            placed += 1
    return out + late[placed:]


@dataclass(frozen=True)
class ScheduleInfo:
    """A registered schedule.

    Attributes:
        name: registry name, as given to ``--schedule``.
        build: the pure schedule function.
        ema_staleness: teacher versions an EMA teacher lags behind the synchronous rule.
        default_pieces: backward pieces used when the caller does not choose.
        summary: one line for help texts.
        hoist_receives: lower with :func:`lower`'s ``hoist_receives`` (strict model parallel).
    """

    name: str
    build: ScheduleFn
    ema_staleness: int
    default_pieces: int
    summary: str
    hoist_receives: bool = False

    def staleness(self, teacher: str) -> int:
        """Versions the teacher lags: ``ema_staleness`` for an EMA teacher, 0 for a frozen one."""
        return self.ema_staleness if teacher == "ema" else 0


SCHEDULES: dict[str, ScheduleInfo] = {
    info.name: info
    for info in (
        ScheduleInfo("sequential", sequential, 0, 1, "one process; the reference"),
        ScheduleInfo("mp", mp, 0, 1, "inter-layer model parallel, one stage at a time", True),
        ScheduleInfo("gpipe", gpipe, 0, 1, "all forwards, all backwards, flush per batch"),
        ScheduleInfo("1f1b", one_f_one_b, 0, 1, "PipeDream-Flush student, teacher first"),
        ScheduleInfo("tspipe", tspipe, 1, 2, "next batch's teacher forwards fill the bubbles"),
    )
}


def get_schedule(name: str) -> ScheduleInfo:
    """Look a schedule up by name.

    Returns:
        The registered :class:`ScheduleInfo`.

    Raises:
        ValueError: for an unknown name, listing the known ones.
    """
    try:
        return SCHEDULES[name]
    except KeyError:
        known = ", ".join(SCHEDULES)
        raise ValueError(f"unknown schedule {name!r}; choose one of: {known}") from None


@dataclass(frozen=True)
class Schedule:
    """A built schedule: its parameters, compute lists and lowered lists.

    Attributes:
        name: registry name.
        stages: number of stages N.
        microbatches: micro-batches per mini-batch M.
        views: views per micro-batch (2 for BYOL and MoCo-v3); units ``U = M * views``.
        teacher: ``"frozen"`` or ``"ema"``.
        batches: mini-batches in the window.
        backward_pieces: pieces each student backward is split into.
        staleness: teacher versions behind the synchronous rule (0 or 1).
        compute: per-stage compute actions.
        lowered: per-stage actions with sends and receives added.
    """

    name: str
    stages: int
    microbatches: int
    views: int
    teacher: str
    batches: int
    backward_pieces: int
    staleness: int
    compute: tuple[tuple[Action, ...], ...]
    lowered: tuple[tuple[Action, ...], ...]

    @property
    def units(self) -> int:
        """Units per mini-batch: micro-batches times views."""
        return self.microbatches * self.views

    def teacher_version(self, batch: int) -> int:
        """Teacher version (optimizer steps done) that mini-batch ``batch`` (0-based) reads."""
        return max(0, batch - self.staleness)


def build_schedule(
    name: str,
    stages: int,
    microbatches: int,
    teacher: str = "ema",
    batches: int = 1,
    backward_pieces: int | None = None,
    views: int = 1,
) -> Schedule:
    """Build, lower and return a named schedule.

    Returns:
        A :class:`Schedule`; call :func:`core.validate.validate` on it to check the invariants.

    Raises:
        ValueError: for an unknown name or out-of-range parameters.
    """
    info = get_schedule(name)
    pieces = info.default_pieces if backward_pieces is None else backward_pieces
    compute = info.build(stages, microbatches, teacher, batches, pieces, views)
    return Schedule(
        name=name,
        stages=stages,
        microbatches=microbatches,
        views=views,
        teacher=teacher,
        batches=batches,
        backward_pieces=pieces,
        staleness=info.staleness(teacher),
        compute=tuple(tuple(a) for a in compute),
        lowered=tuple(tuple(a) for a in lower(compute, info.hoist_receives)),
    )


def _recv_send(action: Action, stages: int) -> tuple[Action | None, Action | None]:
    """The receive a compute action needs first and the send it makes after, if any."""
    s, op = action.stage, action.op
    key = (action.batch, action.microbatch, action.part)
    if op in (Op.TF, Op.SF):
        recv, send = (Op.RECV_TF, Op.SEND_TF) if op == Op.TF else (Op.RECV_SF, Op.SEND_SF)
        return (
            Action(s, recv, *key) if s > 0 else None,
            Action(s, send, *key) if s < stages - 1 else None,
        )
    if op == Op.SB:
        return (
            Action(s, Op.RECV_SB, *key) if s < stages - 1 else None,
            Action(s, Op.SEND_SB, *key) if s > 0 else None,
        )
    return None, None


def _phase(op: Op) -> str | None:
    return "forward" if op in (Op.TF, Op.SF) else "backward" if op == Op.SB else None


def lower(
    compute: list[list[Action]] | tuple[tuple[Action, ...], ...], hoist_receives: bool = False
) -> list[list[Action]]:
    """Add communication: a receive right before each compute action that needs a peer's data,
    a send right after each compute action whose result a peer needs.

    Args:
        compute: per-stage compute lists.
        hoist_receives: receive everything a run of forwards (or of backwards) needs before the
            run starts, so a stage begins only when its predecessor has finished the whole
            phase: strict inter-layer model parallelism, one stage busy at a time.

    Returns:
        Per-stage lists of compute and communication actions.

    Teacher and student activations flow to stage s + 1, student gradients to stage s - 1. The
    loss and the teacher outputs of the last stage stay local.
    """
    stages = len(compute)
    lowered: list[list[Action]] = []
    for actions in compute:
        out: list[Action] = []
        i = 0
        while i < len(actions):
            j = i + 1
            if hoist_receives and _phase(actions[i].op) is not None:
                while j < len(actions) and _phase(actions[j].op) == _phase(actions[i].op):
                    j += 1
            run = actions[i:j]
            pairs = [_recv_send(a, stages) for a in run]
            out += [recv for recv, _ in pairs if recv is not None]
            for a, (_, send) in zip(run, pairs):
                out.append(a)
                if send is not None:
                    out.append(send)
            i = j
        lowered.append(out)
    return lowered


def _shift(actions: tuple[Action, ...], delta: int) -> list[Action]:
    return [Action(a.stage, a.op, a.batch + delta, a.microbatch, a.part) for a in actions]


def _segments(lowered: tuple[Action, ...]) -> list[tuple[Action, ...]]:
    """Split a stage's list after each ``OPT``: segment b ends with ``OPT`` of batch b."""
    out, current = [], []
    for a in lowered:
        current.append(a)
        if a.op == Op.OPT:
            out.append(tuple(current))
            current = []
    if current:
        raise ValueError("a stage's list must end with an OPT")
    return out


class Program:
    """A schedule unrolled over any number of training steps without building it whole.

    Every schedule here repeats: the segment of a middle mini-batch (the actions after the
    previous step up to its own step) is the same up to a shift of batch indices. A template of
    three mini-batches gives the first, a middle and the last segment; :meth:`segment` shifts
    the middle one for every other step.

    Args:
        template: a schedule built with ``batches = min(steps, 3)``.
        steps: number of mini-batches the program runs.
        start: index of its first mini-batch (a resumed run starts past 0); the first one
            runs the schedule's prologue.
    """

    def __init__(self, template: Schedule, steps: int, start: int = 0) -> None:
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        if start < 0:
            raise ValueError(f"start must be >= 0, got {start}")
        if template.batches != min(steps, 3):
            raise ValueError(
                f"template needs min(steps, 3) = {min(steps, 3)} batches, has {template.batches}"
            )
        self.template = template
        self.steps = steps
        self.start = start
        self._segments = [_segments(lst) for lst in template.lowered]

    @classmethod
    def build(
        cls,
        name: str,
        stages: int,
        microbatches: int,
        teacher: str,
        steps: int,
        backward_pieces: int | None = None,
        views: int = 1,
        start: int = 0,
    ) -> Program:
        """Build the template of a named schedule for ``steps`` mini-batches from ``start``."""
        template = build_schedule(name, stages, microbatches, teacher, min(steps, 3), backward_pieces, views)
        return cls(template, steps, start)

    def segment(self, stage: int, batch: int) -> list[Action]:
        """Lowered actions of ``stage`` from after step ``batch - 1`` through step ``batch``."""
        index = batch - self.start
        if not 0 <= index < self.steps:
            raise IndexError(
                f"batch {batch} outside the program's steps {self.start}..{self.start + self.steps - 1}"
            )
        segs = self._segments[stage]
        if index == 0:
            return _shift(segs[0], self.start)
        if index == self.steps - 1:
            return _shift(segs[-1], batch - (len(segs) - 1))
        return _shift(segs[1], batch - 1)

    def batches(self) -> range:
        """The mini-batch indices the program runs."""
        return range(self.start, self.start + self.steps)

    def grid(self, batch: int) -> list[list[Action]]:
        """Every stage's segment of step ``batch`` (for error messages)."""
        return [self.segment(s, batch) for s in range(self.template.stages)]
