"""A built schedule (compute and lowered lists of a named schedule) and its unrolling over any
number of training steps."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from core.action import Action, Op
from core.schedules import teacher_fill
from core.schedules.lower import identity_placement, lower
from core.schedules.spec import get_schedule


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
        staleness: teacher versions behind the synchronous rule.
        split_backward: each backward runs as ``SB`` (input gradient) and ``SW`` (weight
            gradient) actions.
        compute: per-rank compute actions.
        lowered: per-rank actions with sends and receives added.
        stage_to_rank: the rank each stage runs on.
        early: per-stage early teacher forwards it was built with (tspipe's family), or None
            for the schedule's own rule.
        lookahead: mini-batches ahead its filling teacher forwards run (tspipe's family), or
            None for the schedule's own.
    """

    name: str
    stages: int
    microbatches: int
    views: int
    teacher: str
    batches: int
    backward_pieces: int
    staleness: int
    split_backward: bool
    compute: tuple[tuple[Action, ...], ...]
    lowered: tuple[tuple[Action, ...], ...]
    stage_to_rank: tuple[int, ...] = ()
    early: tuple[int, ...] | None = None
    lookahead: int | None = None

    @property
    def fill_ahead(self) -> int:
        """Mini-batches ahead its furthest teacher forwards run on any stage (0 for a schedule
        that fills nothing): its last ``fill_ahead`` steps do less than a whole step's work."""
        return furthest_ahead(self.name, self.stages, self.teacher, self.lookahead)

    @property
    def staggered(self) -> bool:
        """Whether its filling teacher forwards run further ahead on earlier stages (a frozen
        teacher in the tspipe family, :func:`~core.schedules.teacher_fill.staggered`)."""
        return get_schedule(self.name).accepts_lookahead and teacher_fill.staggered(
            self.stages, self.teacher, 1 if self.lookahead is None else self.lookahead
        )

    @property
    def units(self) -> int:
        """Units per mini-batch: micro-batches times views."""
        return self.microbatches * self.views

    @property
    def ranks(self) -> int:
        """Processes the schedule runs on."""
        return len(self.compute)

    def rank_of(self, stage: int) -> int:
        """The rank stage ``stage`` runs on."""
        return self.stage_to_rank[stage] if self.stage_to_rank else stage

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
    early: Sequence[int] | None = None,
    lookahead: int | None = None,
) -> Schedule:
    """Build, lower and return a named pipeline schedule (``early``: per-stage early teacher
    forwards, for a schedule whose spec ``accepts_early``; ``lookahead``: mini-batches ahead its
    teacher forwards run, for one that ``accepts_lookahead``; None: its own rule).

    Returns:
        A :class:`Schedule`; :func:`core.validate.validate` checks its invariants.

    Raises:
        ValueError: for an unknown name, a runner that is not an action list, or out-of-range
            parameters.
    """
    spec = get_schedule(name)
    if spec.build is None:
        raise ValueError(f"{name} is run by the {spec.runner} runner, not built from actions")
    pieces = spec.pieces(backward_pieces)
    options: dict = {}
    if early is not None:
        if not spec.accepts_early:
            raise ValueError(f"{name} takes no per-stage early teacher forwards; drop early")
        early = options["early"] = tuple(early)
    if lookahead is not None:
        if not spec.accepts_lookahead:
            raise ValueError(f"{name} takes no teacher lookahead; drop it")
        options["lookahead"] = lookahead
    compute = spec.build(stages, microbatches, teacher, batches, pieces, views, **options)
    return Schedule(
        name=name,
        stages=stages,
        microbatches=microbatches,
        views=views,
        teacher=teacher,
        batches=batches,
        backward_pieces=pieces,
        staleness=spec.staleness(teacher, lookahead),
        split_backward=spec.split_backward,
        compute=tuple(tuple(a) for a in compute),
        lowered=tuple(tuple(a) for a in lower(compute, spec.hoist_receives, stages)),
        stage_to_rank=identity_placement(stages),
        early=early,
        lookahead=lookahead,
    )


def furthest_ahead(name: str, stages: int, teacher: str, lookahead: int | None = None) -> int:
    """Mini-batches ahead a schedule's furthest teacher forwards run on any stage: the largest
    :func:`~core.schedules.teacher_fill.fill_ahead` for the tspipe family (``lookahead`` None:
    1), 0 for a schedule that fills nothing."""
    if not get_schedule(name).accepts_lookahead:
        return 0
    return max(teacher_fill.fill_ahead(stages, teacher, 1 if lookahead is None else lookahead))


def template_batches(steps: int, ahead: int = 0) -> int:
    """Mini-batches of a :class:`Program`'s template: the first segment, a middle one and the
    last ``max(1, A)`` (whose steps have no teacher forwards ``A`` ahead left to run, ``A`` the
    schedule's :func:`furthest_ahead`)."""
    return min(steps, max(3, ahead + 2))


def window_batches(batches: int, ahead: int = 0) -> int:
    """Mini-batches to simulate for ``batches`` when teacher forwards run up to ``A`` mini-batches
    ahead (:func:`furthest_ahead`): ``A - 1`` more where A > 1, since the simulator's steady
    state leaves out the last ``max(1, A)`` steps (they have no teacher forwards A ahead left
    to run), so every schedule measures as many full steps."""
    return batches + max(0, ahead - 1)


def _shift(actions: tuple[Action, ...], delta: int) -> list[Action]:
    return [Action(a.stage, a.op, a.batch + delta, a.microbatch, a.part) for a in actions]


def _segments(lowered: tuple[Action, ...]) -> list[tuple[Action, ...]]:
    """Split a rank's list after each ``OPT``: segment b ends with ``OPT`` of batch b."""
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
    :func:`template_batches` mini-batches gives the first segment, a middle one and the last
    ones (three for a schedule whose teacher runs at most one mini-batch ahead: first, middle,
    last); :meth:`segment` shifts the middle one for every other step.

    Args:
        template: a schedule built with ``batches = template_batches(steps, fill_ahead)``.
        steps: number of mini-batches the program runs.
        start: index of its first mini-batch (a resumed run starts past 0); the first one
            runs the schedule's prologue.
    """

    def __init__(self, template: Schedule, steps: int, start: int = 0) -> None:
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        if start < 0:
            raise ValueError(f"start must be >= 0, got {start}")
        want = template_batches(steps, template.fill_ahead)
        if template.batches != want:
            raise ValueError(f"template needs {want} batches for {steps} steps, has {template.batches}")
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
        early: Sequence[int] | None = None,
        lookahead: int | None = None,
    ) -> Program:
        """Build the template of a named schedule for ``steps`` mini-batches from ``start``."""
        template = build_schedule(
            name,
            stages,
            microbatches,
            teacher,
            template_batches(steps, furthest_ahead(name, stages, teacher, lookahead)),
            backward_pieces,
            views,
            early,
            lookahead,
        )
        return cls(template, steps, start)

    def segment(self, rank: int, batch: int) -> list[Action]:
        """Lowered actions of ``rank`` from after step ``batch - 1`` through step ``batch``."""
        index = batch - self.start
        if not 0 <= index < self.steps:
            raise IndexError(
                f"batch {batch} outside the program's steps {self.start}..{self.start + self.steps - 1}"
            )
        segs = self._segments[rank]
        if self.steps == len(segs):  # the template is the whole program
            k = index
        elif index == 0:
            k = 0
        elif self.steps - index < len(segs) - 1:  # one of the last ones
            k = len(segs) - (self.steps - index)
        else:
            k = 1
        return _shift(segs[k], batch - k)

    def batches(self) -> range:
        """The mini-batch indices the program runs."""
        return range(self.start, self.start + self.steps)

    def grid(self, batch: int) -> list[list[Action]]:
        """Every rank's segment of step ``batch`` (for error messages)."""
        return [self.segment(r, batch) for r in range(self.template.ranks)]
