"""The schedule registry: one :class:`ScheduleSpec` per ``--schedule`` name, and nothing else
lists schedule names.

A spec says everything the rest of the project needs to know of a schedule: how to build its
action lists (or which runner runs it, for the baselines that are not action lists), how stale
an EMA teacher gets, whether its backward may be split, whether its loss is per micro-batch,
how a benchmark sweeps it, and how plots draw it. Config validation, the bench driver, the
simulator command line and every analysis table loop over :data:`SCHEDULES`.

Adding a schedule: a module that defines its builder and calls :func:`register`. The families
of this package are imported by ``core.schedules``; a module elsewhere is imported when named in
the ``TSPIPE_PLUGINS`` environment variable (comma-separated), so launched workers see it too.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from core.action import Action

ScheduleFn = Callable[..., list[list[Action]]]
RUNNERS = ("pipeline", "ddp", "torch")


@dataclass(frozen=True)
class ScheduleSpec:
    """A registered schedule or runner.

    Attributes:
        name: registry name, as given to ``--schedule``.
        summary: one line for help texts and tables.
        build: the pure function ``(stages, microbatches, teacher, batches, backward_pieces,
            views) -> per-stage compute lists``; None for runners that are not action lists.
        runner: what runs it: ``pipeline`` (the action interpreter), ``ddp`` (data parallel
            replicas) or ``torch`` (``torch.distributed.pipelining``).
        ema_staleness: versions an EMA teacher lags behind the synchronous rule.
        default_pieces: backward pieces when the caller does not choose.
        splits_backward: whether a backward may be split into pieces (``backward_pieces > 1``).
        split_backward: whether it runs input- and weight-gradient backwards as separate ops.
        per_unit_loss: the loss is computed per unit (needs ``Task.microbatch_loss``).
        hoist_receives: lowered with every receive of a phase before the phase (strict mp).
        stages: the only stage count it runs on, or None.
        microbatches: the only micro-batch count it runs on, or None.
        min_stages: fewest processes it runs on.
        min_units_per_stage: it needs at least ``stages`` units per mini-batch times this.
        student_schedule: for an outside runner, the pipeline schedule its student pass is
            simulated with (its teacher pass is a forward-only gpipe).
        order: position in tables and plots.
        colour: colour in plots.
        gantt: benchmarks keep its measured timelines for Gantt charts.
        subject: the schedule under study: tables give every other schedule's speed beside it.
        baseline: headlines compare the subject with it.
        accepts_early: its builder takes ``early``, per-stage counts of the next mini-batch's
            teacher forwards run before the backward (tspipe's family); see
            :mod:`core.placement`.
        early_rule: for a schedule that ``accepts_early``, the count its builder uses when none
            are given, ``early_rule(stage, stages, units, pieces)``: the uniform rule that
            placement starts from and never does worse than.
        accepts_lookahead: its builder takes ``lookahead`` L, how many mini-batches ahead its
            filling teacher forwards run; an EMA teacher's staleness is then L instead of
            ``ema_staleness``.
    """

    name: str
    summary: str
    build: ScheduleFn | None = None
    runner: str = "pipeline"
    ema_staleness: int = 0
    default_pieces: int = 1
    splits_backward: bool = True
    split_backward: bool = False
    per_unit_loss: bool = False
    hoist_receives: bool = False
    stages: int | None = None
    microbatches: int | None = None
    min_stages: int = 1
    min_units_per_stage: int = 0
    student_schedule: str | None = None
    order: int = 100
    colour: str = "#888888"
    gantt: bool = False
    subject: bool = False
    baseline: bool = False
    accepts_early: bool = False
    early_rule: Callable[[int, int, int, int], int] | None = None
    accepts_lookahead: bool = False

    def __post_init__(self) -> None:
        if self.runner not in RUNNERS:
            raise ValueError(f"schedule {self.name!r}: runner must be one of {RUNNERS}, got {self.runner!r}")
        if (self.build is None) == (self.runner == "pipeline"):
            raise ValueError(f"schedule {self.name!r}: a pipeline schedule needs a builder, a runner none")
        if self.accepts_early != (self.early_rule is not None):
            raise ValueError(
                f"schedule {self.name!r}: a schedule takes early counts exactly when it has an early_rule"
            )

    def uniform_early(self, stages: int, units: int, pieces: int) -> tuple[int, ...]:
        """The per-stage early teacher forwards its builder runs when given none (its
        ``early_rule``).

        Raises:
            ValueError: for a schedule that takes no early counts.
        """
        if self.early_rule is None:
            raise ValueError(f"{self.name} takes no per-stage early teacher forwards")
        return tuple(self.early_rule(s, stages, units, pieces) for s in range(stages))

    @property
    def is_pipeline(self) -> bool:
        """True when the action interpreter runs it (its action lists can be simulated)."""
        return self.runner == "pipeline"

    def staleness(self, teacher: str, lookahead: int | None = None) -> int:
        """Versions the teacher lags: ``ema_staleness`` for an EMA teacher (``lookahead``, where
        given, for a schedule that ``accepts_lookahead``), 0 for a frozen one."""
        if teacher != "ema":
            return 0
        return lookahead if lookahead is not None and self.accepts_lookahead else self.ema_staleness

    def pieces(self, backward_pieces: int | None) -> int:
        """Backward pieces actually used for a requested count (None: the default)."""
        return self.default_pieces if backward_pieces is None else backward_pieces

    def check(
        self, stages: int, microbatches: int, backward_pieces: int | None = None, views: int | None = None
    ) -> None:
        """Refuse a shape this schedule cannot run (``views`` None: the units are not checked).

        Raises:
            ValueError: saying what to change.
        """
        if self.stages is not None and stages != self.stages:
            count = "one process" if self.stages == 1 else f"{self.stages} processes"
            raise ValueError(f"{self.name} runs on {count}; got stages={stages}")
        if self.microbatches is not None and microbatches != self.microbatches:
            count = "one micro-batch" if self.microbatches == 1 else f"{self.microbatches} micro-batches"
            raise ValueError(f"{self.name} runs {count}; got microbatches={microbatches}")
        if stages < self.min_stages:
            raise ValueError(f"{self.name} needs at least {self.min_stages} processes; got stages={stages}")
        if backward_pieces is not None and backward_pieces < 1:
            raise ValueError(f"backward_pieces must be >= 1, got {backward_pieces}")
        if not self.splits_backward and backward_pieces not in (None, 1):
            raise ValueError(f"{self.name} does not split backwards; drop backward_pieces")
        if views is not None and microbatches * views < self.min_units_per_stage * stages:
            raise ValueError(
                f"{self.name} needs at least one micro-batch unit per stage: microbatches x views = "
                f"{microbatches * views} < {stages}"
            )


SCHEDULES: dict[str, ScheduleSpec] = {}


def register(spec: ScheduleSpec) -> ScheduleSpec:
    """Add a schedule to the registry (a name may be registered once).

    Returns:
        ``spec``.

    Raises:
        ValueError: if the name is taken by another spec.
    """
    if spec.name in SCHEDULES and SCHEDULES[spec.name] != spec:
        raise ValueError(f"schedule {spec.name!r} is registered already")
    SCHEDULES[spec.name] = spec
    return spec


def get_schedule(name: str) -> ScheduleSpec:
    """Look a schedule up by name.

    Raises:
        ValueError: for an unknown name, listing the known ones.
    """
    if name not in SCHEDULES:
        load_plugins()
    try:
        return SCHEDULES[name]
    except KeyError:
        known = ", ".join(s.name for s in schedules())
        raise ValueError(f"unknown schedule {name!r}; choose one of: {known}") from None


def schedules(runner: str | None = None) -> Iterator[ScheduleSpec]:
    """Registered specs in table order, optionally only those of one runner."""
    load_plugins()
    for spec in sorted(SCHEDULES.values(), key=lambda s: (s.order, s.name)):
        if runner is None or spec.runner == runner:
            yield spec


def subject() -> ScheduleSpec | None:
    """The schedule under study (the first marked ``subject`` in table order), if any."""
    return next((s for s in schedules() if s.subject), None)


def order_of(name: str) -> tuple[int, str]:
    """Sort key of a schedule name for tables (unknown names last)."""
    spec = SCHEDULES.get(name)
    return (spec.order if spec else 10**6, name)


def load_plugins(variable: str = "TSPIPE_PLUGINS") -> list[str]:
    """Import the modules named in the environment variable (they register what they define);
    called on first use of the registries, not at import, so a plugin may import anything.

    Returns:
        The names imported.
    """
    names = [n.strip() for n in os.environ.get(variable, "").split(",") if n.strip()]
    for name in names:
        if name not in sys.modules:
            importlib.import_module(name)
    return names
