"""A run's configuration, one shape for everything: :class:`Config` nests the method's own
frozen dataclass, the :class:`PipelineConfig` (how the run is spread over processes) and the
:class:`RunConfig` (how long, where, what it keeps). Each validates itself before any process
starts; ``core.overrides`` applies ``key=value`` overrides and round-trips through JSON.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from core.schedules import get_schedule

TRANSPORTS = ("auto", "direct", "host")
COMPILE_MODES = ("none", "default", "reduce-overhead", "max-autotune")


@dataclass(frozen=True)
class PipelineConfig:
    """How a run is spread over processes.

    Attributes:
        schedule: a name of the registry (``core.schedules.SCHEDULES``): a pipeline schedule, or
            a runner (ddp, the torch peer).
        stages: pipeline stages, one process each (for ``ddp``: the number of replicas).
        dp: data-parallel replicas of the pipeline (``dp x stages`` processes on a ``("dp",
            "pp")`` mesh, see ``core.runtime.replicas``); each takes its 1/dp of the mini-batch.
            Pipeline schedules only (ddp is data parallel already; the torch peer runs one pipeline).
        microbatches: micro-batches per mini-batch (each of a task's views is its own unit).
        backward_pieces: pieces each student backward is split into; None takes the schedule's
            default (2 for tspipe, 1 otherwise). Each piece's forward is its own graph, so with
            BatchNorm it is also its own normalisation batch: compare schedules at equal pieces.
        balance: student blocks per stage; None splits the blocks uniformly.
        teacher_balance: teacher blocks per stage for a frozen teacher; None: planned (see
            ``balance_by``).
        balance_by: how a frozen teacher without ``teacher_balance`` is split: ``cost`` against
            the student's stages by the task's per-block estimates (``Task.block_costs``) where
            it has them, ``uniform`` by block count (or like ``balance`` when the counts match).
        teacher_early: per-stage counts of the next mini-batch's teacher forwards run before the
            backward, for a schedule whose spec ``accepts_early`` (tspipe's family; one per
            stage, in 0..U, non-increasing unless the teacher is frozen and so staggered,
            ``core.schedules.teacher_fill.check_early``; e.g. from ``core.placement``); None:
            its own rule.
        teacher_lookahead: mini-batches ahead the teacher forwards that fill a step run, for a
            schedule whose spec ``accepts_lookahead`` (tspipe's family): an EMA teacher then
            serves mini-batch b with version ``max(0, b - L)``; 0 is exact, None the schedule's
            own (1).
        amp_bf16: run forwards under bf16 autocast.
        max_grad_norm: clip the global gradient norm (over all stages) to this; None: no clipping.
        record_timeline: record start and end of every action (costs a device sync per action
            on CUDA).
        timeout_s: longest wait for one message before the run is declared stuck.
        nan_guard: on a non-finite loss or gradient, ``stop`` the run at that step (before the
            update), ``skip`` the step on every stage (counted), or ``off``.
        transport: how pipeline messages travel between processes: ``direct`` (NCCL on CUDA,
            gloo on CPU), ``host`` (gloo, every tensor staged through host memory: for ranks
            sharing one GPU, which NCCL refuses; its timings are not pipeline throughput), or
            ``auto`` (``host`` when CUDA ranks outnumber the visible GPUs, else ``direct``).
        compile: ``torch.compile`` each stage's student and teacher partitions with this mode
            (``default``, ``reduce-overhead``, ``max-autotune``), or ``none``.
        compile_backend: the ``torch.compile`` backend (``inductor``; ``eager`` or
            ``aot_eager`` for tests, which take no mode).
    """

    schedule: str = "gpipe"
    stages: int = 1
    microbatches: int = 1
    backward_pieces: int | None = None
    balance: tuple[int, ...] | None = None
    teacher_balance: tuple[int, ...] | None = None
    balance_by: str = "cost"
    teacher_early: tuple[int, ...] | None = None
    teacher_lookahead: int | None = None
    amp_bf16: bool = False
    max_grad_norm: float | None = None
    record_timeline: bool = False
    timeout_s: float = 300.0
    nan_guard: str = "stop"
    transport: str = "auto"
    compile: str = "none"
    compile_backend: str = "inductor"
    dp: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.stages, int) or self.stages < 1:
            raise ValueError(f"stages must be an integer >= 1, got {self.stages!r}")
        if not isinstance(self.microbatches, int) or self.microbatches < 1:
            raise ValueError(f"microbatches must be an integer >= 1, got {self.microbatches!r}")
        get_schedule(self.schedule).check(self.stages, self.microbatches, self.backward_pieces)
        if isinstance(self.dp, bool) or not isinstance(self.dp, int) or self.dp < 1:
            raise ValueError(f"dp must be an integer >= 1, got {self.dp!r}")
        if self.dp > 1 and get_schedule(self.schedule).runner != "pipeline":
            raise ValueError(
                f"dp={self.dp} replicates a pipeline schedule; {self.schedule} is a runner of its own "
                "(ddp is data parallel already): use dp=1"
            )
        if self.balance_by not in ("cost", "uniform"):
            raise ValueError(f"balance_by must be cost or uniform, got {self.balance_by!r}")
        if self.max_grad_norm is not None and self.max_grad_norm <= 0:
            raise ValueError(f"max_grad_norm must be > 0, got {self.max_grad_norm}")
        if self.nan_guard not in ("stop", "skip", "off"):
            raise ValueError(f"nan_guard must be stop, skip or off, got {self.nan_guard!r}")
        if self.timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {self.timeout_s}")
        if self.teacher_early is not None:
            if not get_schedule(self.schedule).accepts_early:
                raise ValueError(f"{self.schedule} takes no teacher_early; drop it")
            if any(k < 0 for k in self.teacher_early):  # the order by stage: see check_early
                raise ValueError(f"teacher_early {list(self.teacher_early)} must be >= 0")
        if self.teacher_lookahead is not None:
            if not get_schedule(self.schedule).accepts_lookahead:
                raise ValueError(f"{self.schedule} takes no teacher_lookahead; drop it")
            if isinstance(self.teacher_lookahead, bool) or not isinstance(self.teacher_lookahead, int):
                raise ValueError(f"teacher_lookahead must be an integer, got {self.teacher_lookahead!r}")
            if self.teacher_lookahead < 0:
                raise ValueError(f"teacher_lookahead must be >= 0, got {self.teacher_lookahead}")
        if self.transport not in TRANSPORTS:
            raise ValueError(f"transport must be one of {', '.join(TRANSPORTS)}, got {self.transport!r}")
        spec = get_schedule(self.schedule)
        if self.transport == "host" and not spec.is_pipeline:
            raise ValueError(
                f"transport=host carries pipeline messages; {self.schedule} runs over torch.distributed "
                "directly: use transport=auto or direct"
            )
        if self.compile not in COMPILE_MODES:
            raise ValueError(f"compile must be one of {', '.join(COMPILE_MODES)}, got {self.compile!r}")
        if self.compile != "none":
            if not self.compile_backend:
                raise ValueError("compile_backend must name a torch.compile backend, e.g. inductor")
            if not spec.is_pipeline:
                raise ValueError(
                    f"compile={self.compile} compiles pipeline stages; {self.schedule} is a runner of its own"
                )
            if spec.split_backward:
                raise ValueError(
                    f"compile={self.compile} cannot run {self.schedule}: its split backward needs the graph "
                    "of each stage's intermediates, which a compiled stage hides"
                )
        for name in ("balance", "teacher_balance", "teacher_early"):
            value = getattr(self, name)
            if value is not None and len(value) != self.stages:
                raise ValueError(
                    f"{name} {list(value)} has {len(value)} entries; need one per stage ({self.stages})"
                )

    @property
    def pieces(self) -> int:
        """Backward pieces actually used."""
        return get_schedule(self.schedule).pieces(self.backward_pieces)

    @property
    def replicas(self) -> int:
        """Data-parallel replicas the mini-batch is split over (ddp: one per process)."""
        return self.stages if get_schedule(self.schedule).runner == "ddp" else self.dp

    @property
    def world(self) -> int:
        """Processes the run needs: one per stage and replica (ddp: one per replica)."""
        return self.stages if get_schedule(self.schedule).runner == "ddp" else self.stages * self.dp

    @property
    def is_pipeline(self) -> bool:
        """True when the pipeline interpreter runs this schedule (not ddp or the torch peer)."""
        return get_schedule(self.schedule).is_pipeline


@dataclass(frozen=True)
class RunConfig:
    """How long a run trains, where, and what it keeps.

    Attributes:
        device: ``cpu`` or ``cuda``.
        dtype: ``float32``, or ``float64`` for exactness checks against a reference.
        threads: torch threads per process (0: torch's default).
        seed: seed of weights, data order and augmentation.
        epochs: passes over the training data (ignored when ``steps`` > 0).
        steps: optimizer steps; 0: ``epochs`` worth.
        eval_every: evaluate every this many epochs (0: only at the end).
        checkpoint_every: save a checkpoint every this many steps (0: only at the end).
        log_every: write a loss line every this many steps.
        run_dir: run folder; empty: ``runs/<method>/<time>-<schedule>-N<stages>-M<micro>-s<seed>``.
        resume: ``auto`` continues from the run folder's latest complete checkpoint (a fresh
            start when there is none); a checkpoint folder continues from that one; empty: start.
        min_free_gb: refuse to start with less free disk space in the run folder.
    """

    device: str = "cpu"
    dtype: str = "float32"
    threads: int = 0
    seed: int = 0
    epochs: int = 1
    steps: int = 0
    eval_every: int = 0
    checkpoint_every: int = 0
    log_every: int = 10
    run_dir: str = ""
    resume: str = ""
    min_free_gb: float = 0.25

    def __post_init__(self) -> None:
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"dtype must be float32 or float64, got {self.dtype!r}")
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"device must be cpu or cuda, got {self.device!r}")
        for name in ("epochs", "steps", "eval_every", "checkpoint_every", "threads"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.log_every < 1:
            raise ValueError(f"log_every must be >= 1, got {self.log_every}")


def training_pipeline() -> PipelineConfig:
    """The pipeline part of a training run unless a preset says otherwise: one process,
    and a stuck rank noticed within 45 s."""
    return PipelineConfig(schedule="sequential", stages=1, microbatches=1, timeout_s=45.0)


@dataclass(frozen=True)
class Config:
    """A whole run: the method's config, the pipeline and the run.

    Attributes:
        method: the method's frozen config dataclass (model, data, loss, optimiser); it may
            define ``check_with(pipeline, run)`` to refuse combinations (raises ValueError).
        pipeline: how the run is spread over processes.
        run: how long it trains, where, and what it keeps.
    """

    method: Any
    pipeline: PipelineConfig = field(default_factory=training_pipeline)
    run: RunConfig = field(default_factory=RunConfig)

    def __post_init__(self) -> None:
        check = getattr(self.method, "check_with", None)
        if check is not None:
            check(self.pipeline, self.run)

    def derive(
        self,
        method: dict[str, Any] | None = None,
        pipeline: dict[str, Any] | None = None,
        run: dict[str, Any] | None = None,
    ) -> Config:
        """A copy with some fields of each section changed (how presets derive from a base)."""
        return Config(
            method=replace(self.method, **(method or {})),
            pipeline=replace(self.pipeline, **(pipeline or {})),
            run=replace(self.run, **(run or {})),
        )
