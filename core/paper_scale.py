"""Paper-scale predictions from a calibration: one configuration of a schedule, each schedule at
its best configuration, data parallelism, data-parallel replicas of a pipeline (dp x pp), and
the check of the one-device sequential step against the measured one.

dp x pp (``dp`` D > 1) is modelled as the runtime runs it (``core.runtime.replicas``): each
replica is the N-stage pipeline on units of ``batch / (D x M)`` samples (costs at that size, so
the micro-batch sweep's penalty applies), the loss is the whole mini-batch's, and each stage's
``OPT`` is longer by a ring all-reduce over D of its share of the fp32 student gradients (by
block count; not overlapped with the backward, as in the runtime). Samples/s count the whole
mini-batch.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import replace

from core.calibration import Calibration
from core.cost_model import CostModel, stage_cost_model
from core.ddp_model import ddp_step, ring_allreduce_ms
from core.link import Link
from core.memory import StagePeak, stage_peaks
from core.partition import Partition, plan_partition, stage_slices
from core.placement import place_teacher_forwards
from core.schedules import Schedule, build_schedule, furthest_ahead, get_schedule, window_batches
from core.simulate import WINDOW_BATCHES, SimResult, simulate


def calibration_partition(
    cal: Calibration, stages: int, balance: Sequence[int] | None = None, samples: float | None = None
) -> Partition:
    """Auto-balanced (or checked) partition of a calibration pair over ``stages``, by the costs
    at ``samples`` per unit (default: the calibration's micro-batch).

    Raises:
        ValueError: for more stages than blocks or a balance that does not fit.
    """
    t, f, b = cal.block_costs(samples or cal.microbatch)
    return plan_partition(stages, [x + y for x, y in zip(f, b)], t, cal.teacher, balance=balance)


def calibration_costs(
    cal: Calibration, partition: Partition, microbatches: int, link: Link | None = None
) -> CostModel:
    """Per-stage unit costs of a calibration pair: ``batch / microbatches`` samples per unit; the
    EMA update (``ema_ms``) spread over the stages by teacher block count."""
    samples = cal.batch / microbatches
    t, f, b = cal.block_costs(samples)
    dtype_bytes = 2 if cal.amp_bf16 else 4
    ema = [cal.ema_ms / len(cal.teacher_fwd)] * len(cal.teacher_fwd)
    return stage_cost_model(
        teacher_fwd=t,
        student_fwd=f,
        student_bwd=b,
        teacher_bytes=[n * samples * dtype_bytes for n in cal.teacher_out],
        student_bytes=[n * samples * dtype_bytes for n in cal.student_out],
        student_opt=[0.0] * len(f),
        teacher_opt=ema,
        partition=partition,
        link=link or Link(),
        loss_ms=cal.loss_ms,
    )


def check_dp(cal: Calibration, dp: int) -> None:
    """Raises ValueError unless ``dp`` >= 1 divides the pair's batch."""
    if not isinstance(dp, int) or dp < 1 or cal.batch % dp:
        raise ValueError(f"dp must be an integer >= 1 dividing the batch {cal.batch}, got {dp!r}")


def with_allreduce(
    costs: CostModel, cal: Calibration, partition: Partition, dp: int, link: Link
) -> CostModel:
    """``costs`` with each stage's ``OPT`` longer by the ring all-reduce over ``dp`` replicas of
    its share (by block count) of the fp32 student gradients.

    Raises:
        ValueError: if the calibration lacks the student's parameter count.
    """
    if not cal.student_params:
        raise ValueError(f"{cal.source} has no student_params_M; cannot model the dp all-reduce")
    blocks = len(cal.student_fwd)
    allreduce = [ring_allreduce_ms(4 * cal.student_params * n / blocks, dp, link) for n in partition.student]
    return replace(costs, opt_ms=tuple(o + a for o, a in zip(costs.opt_ms, allreduce)))


def simulate_calibration(
    cal: Calibration,
    schedule: str,
    stages: int,
    microbatches: int,
    link: Link | None = None,
    balance: Sequence[int] | None = None,
    backward_pieces: int | None = None,
    batches: int = WINDOW_BATCHES,
    early: Sequence[int] | str | None = None,
    lookahead: int | None = None,
    dp: int = 1,
    placement_budget: int | None = None,
) -> tuple[SimResult, Schedule, Partition]:
    """Simulate one calibration pair under a named schedule over ``batches`` mini-batches
    (``lookahead``: the tspipe family's teacher lookahead L, None its own, the window growing
    with how far ahead its teacher forwards run, so that it measures as many full steps; ``dp``: replicas of the pipeline, each with
    ``microbatches`` micro-batches, see the module docstring).

    ``early``: per-stage early teacher forwards for a schedule whose spec ``accepts_early``;
    ``"auto"`` places them from the pair's costs (:func:`core.placement.place_teacher_forwards`,
    never slower than the uniform rule; ``placement_budget`` simulations at most, None its
    default) and is ignored by other schedules; None: the uniform rule.

    Returns:
        (result, built schedule, partition used).

    Raises:
        ValueError: for stages or micro-batches below 1, a bad ``dp`` or partition.
    """
    for name, value in (("stages", stages), ("microbatches", microbatches)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    check_dp(cal, dp)
    partition = calibration_partition(cal, stages, balance, cal.batch / (dp * microbatches))
    costs = calibration_costs(cal, partition, dp * microbatches, link)
    if dp > 1:
        costs = with_allreduce(costs, cal, partition, dp, link or Link())
    if early == "auto":
        spec = get_schedule(schedule)
        early = (
            place_teacher_forwards(
                costs,
                schedule,
                stages,
                microbatches,
                backward_pieces,
                cal.teacher,
                cal.views,
                cal.batch,
                budget=placement_budget,
                lookahead=lookahead,
            )
            if spec.accepts_early
            else None
        )
    elif isinstance(early, str):
        raise ValueError(f"early must be per-stage counts, 'auto' or None, got {early!r}")
    built = build_schedule(
        schedule,
        stages,
        microbatches,
        cal.teacher,
        window_batches(batches, furthest_ahead(schedule, stages, cal.teacher, lookahead)),
        backward_pieces,
        cal.views,
        early,
        lookahead,
    )
    return simulate(built, costs, cal.batch), built, partition


def simulate_ddp(
    cal: Calibration, stages: int, link: Link | None = None, grad_bytes: int = 4
) -> dict[str, float]:
    """Data parallelism over ``stages`` GPUs, modelled from the calibration (:func:`core.ddp_model.ddp_step`):
    every GPU runs the whole teacher and student on ``batch / stages`` samples (per-block costs at
    that size, so the micro-batch sweep's penalty applies), and the ring all-reduce of the
    student's gradients overlaps the backward pass completely (the favourable case for DDP).

    Returns:
        ``step_ms``, ``samples_per_s``, ``allreduce_ms``, ``efficiency`` (against the same
        bubble-free bound as the pipelines at M = N) and ``bound_samples_per_s``.

    Raises:
        ValueError: if the calibration lacks the student's parameter count.
    """
    if not cal.student_params:
        raise ValueError(f"{cal.source} has no student_params_M; cannot model the all-reduce")
    link = link or Link()
    t, f, b = cal.block_costs(cal.batch / stages)
    step, allreduce = ddp_step(
        forward_ms=cal.views * (sum(t) + sum(f)),
        backward_ms=cal.views * sum(b),
        other_ms=cal.ema_ms,
        grad_bytes=cal.student_params * grad_bytes,
        replicas=stages,
        link=link,
        overlap=1.0,
    )
    # the pipelines' bound at M = N: N x batch / all work of one mini-batch at that unit size
    work = cal.views * stages * (sum(t) + sum(f) + sum(b)) + cal.ema_ms
    bound = stages * cal.batch / work * 1e3
    samples = cal.batch / step * 1e3
    return {
        "step_ms": step,
        "samples_per_s": samples,
        "allreduce_ms": allreduce,
        "efficiency": samples / bound,
        "bound_samples_per_s": bound,
    }


STUDENT_STATE_BYTES = 16  # per student parameter: fp32 weight, gradient, two optimizer moments
TEACHER_STATE_BYTES = 4  # per teacher parameter: fp32 weight


def calibration_memory(
    cal: Calibration, built: Schedule, partition: Partition, dp: int = 1
) -> list[StagePeak]:
    """Each stage's peak memory for a pair under a built schedule (:mod:`core.memory`).

    Stored activations of one unit: the outputs of the stage's student blocks (from the
    calibration's output shapes, 2 bytes under bf16, else 4), which is a lower bound of what
    autograd keeps (a block also saves its inner activations); on the last stage the teacher's
    outputs held for the loss. Static: ``16 x`` student and ``4 x`` teacher parameters, and
    another ``4 x`` teacher parameters for each older teacher version an EMA teacher keeps
    (its staleness: L under teacher lookahead L), spread over the stages by block count
    (calibration files carry only the totals). With ``dp`` replicas a unit is ``batch / (dp M)``
    samples and the last stage holds the whole mini-batch's teacher outputs for the loss. A
    staggered frozen teacher (:attr:`Schedule.staggered`) adds, on every stage after the first,
    one mini-batch of the previous stage's teacher outputs, received a step before they are used
    (counted as held throughout: an upper bound); the input mini-batches stage 0 reads ahead for
    it are not counted (the calibration files carry no input size).
    """
    samples = cal.batch / (dp * built.microbatches)
    dtype_bytes = 2 if cal.amp_bf16 else 4
    act = [
        sum(cal.student_out[i] for i in blocks) * samples * dtype_bytes
        for blocks in stage_slices(partition.student)
    ]
    teacher = cal.teacher_out[-1] * samples * dtype_bytes * dp
    s_blocks, t_blocks = len(cal.student_fwd), len(cal.teacher_fwd)
    static = [
        STUDENT_STATE_BYTES * cal.student_params * ns / s_blocks
        + (1 + built.staleness) * TEACHER_STATE_BYTES * cal.teacher_params * nt / t_blocks
        for ns, nt in zip(partition.student, partition.teacher)
    ]
    if built.staggered:
        for s in range(1, built.stages):  # the output of the last teacher block before stage s
            last = max(sum(partition.teacher[:s]) - 1, 0)
            static[s] += cal.teacher_out[last] * samples * dtype_bytes * built.units
    return stage_peaks(built, act, teacher, static)


def result_dict(
    cal: Calibration, built: Schedule, partition: Partition, result: SimResult, link: Link, dp: int = 1
) -> dict:
    """The JSON summary of one simulation (the CLI's ``--format json``)."""
    penalty = cal.microbatch_penalty(cal.batch / (dp * built.microbatches))
    memory = [p.bytes / 2**30 for p in calibration_memory(cal, built, partition, dp)]
    return {
        "pair": cal.pair,
        "calibration": cal.source,
        "schedule": built.name,
        "stages": built.stages,
        "dp": dp,
        "microbatches": built.microbatches,
        "views": built.views,
        "backward_pieces": built.backward_pieces,
        "global_batch": cal.batch,
        "link_gbps": link.gbps,
        "latency_us": link.latency_us,
        "balance": list(partition.student),
        "teacher_balance": list(partition.teacher),
        "step_ms": result.step_ms,
        "samples_per_s": result.samples_per_s,
        "efficiency": result.efficiency,
        "bubble_fraction": result.bubble_fraction,
        "bound_samples_per_s": result.bound_samples_per_s,
        "balance_cap": result.balance_cap,
        "teacher_early": teacher_early(built),
        "microbatch_penalty": penalty,
        "peak_mem_gib": max(memory),
        "stage_mem_gib": memory,
        "cost_model": cal.cost_model,
        "simulated": True,
    }


def teacher_early(built: Schedule) -> list[int] | None:
    """The per-stage early teacher forwards a built schedule runs (its spec ``accepts_early``:
    the counts given or the uniform rule's), None for other schedules."""
    spec = get_schedule(built.name)
    if not spec.accepts_early:
        return None
    if built.early is not None:
        return list(built.early)  # checked when it was built
    return list(spec.uniform_early(built.stages, built.units, built.backward_pieces))


def sequential_check(cal: Calibration) -> dict[str, float | None]:
    """The simulated one-device sequential step against the measured one (``views x
    seq_step_ms``: the calibration timed one view).

    Returns:
        ``measured_ms``, ``simulated_ms`` and ``error`` ((simulated - measured) / measured);
        None where the file has no measured step.
    """
    result, _, _ = simulate_calibration(cal, "sequential", 1, 1)
    measured = cal.views * cal.measured.seq_step_ms if cal.measured else None
    return {
        "measured_ms": measured,
        "simulated_ms": result.step_ms,
        "error": (result.step_ms - measured) / measured if measured else None,
    }


SEARCH_BATCHES = 6  # the best-configuration search's window (steady state over batches 2..4)
PLACED = 3  # configurations (the fastest under the uniform rule) whose teacher forwards are placed


def divisors(n: int) -> list[int]:
    """The divisors of ``n``, ascending."""
    return [d for d in range(1, n + 1) if n % d == 0]


def configurations(
    cal: Calibration, schedule: str, stages: int, max_per_stage: int = 4, dp: int = 1
) -> Iterator[tuple[int, int | None]]:
    """``(micro-batches, backward pieces)`` a schedule may run a pair with on ``stages`` stages,
    M ascending: the divisors of the batch (of a replica's, with ``dp``) up to
    ``max_per_stage x stages`` (the schedule's own M if it fixes one), and pieces 1 and 2 for
    the schedules that pipeline micro-batches and may split their backward (every piece keeps
    at least one sample)."""
    spec = get_schedule(schedule)
    check_dp(cal, dp)
    batch = cal.batch // dp
    micros = (
        [spec.microbatches]
        if spec.microbatches
        else [m for m in divisors(batch) if m <= max_per_stage * stages]
    )
    split = spec.splits_backward and spec.microbatches is None and spec.stages is None
    for m in micros:
        for pieces in (1, 2) if split else (None,):
            try:
                spec.check(stages, m, pieces, cal.views)
            except ValueError:
                continue
            if batch // m >= (pieces or 1):
                yield m, pieces


def best_configuration(
    cal: Calibration,
    schedule: str,
    stages: int,
    link: Link | None = None,
    pieces: int | None = None,
    early: str | None = "auto",
    dp: int = 1,
) -> tuple[SimResult, Schedule, Partition]:
    """A schedule at its best configuration for a pair (highest simulated samples/s over
    :func:`configurations`; ``pieces`` fixes the backward pieces, for comparisons of schedules
    alone at equal pieces; ``dp``: replicas of the pipeline). M and pieces are searched with the
    uniform rule of early teacher forwards; ``early="auto"`` then places them from costs at each
    of the ``PLACED`` fastest configurations found and keeps the fastest placed one (a schedule
    whose spec ``accepts_early``; never slower than the uniform rule: the rule's best M need not
    be the placed best, e.g. KD RN152 -> RN50 on 4 stages under tspipe-zb), None keeps it.

    Returns:
        (result, built schedule, partition) of the best configuration.

    Raises:
        ValueError: if no configuration fits.
    """
    by_m: dict[int, list[int | None]] = {}
    for m, p in configurations(cal, schedule, stages, dp=dp):
        if pieces is None or p is None or p == pieces:
            by_m.setdefault(m, []).append(p)
    best, misses, searched = None, 0, []
    for m, options in by_m.items():  # ascending M; the search simulates a shorter window
        results = [
            (
                simulate_calibration(
                    cal, schedule, stages, m, link, backward_pieces=p, batches=SEARCH_BATCHES, dp=dp
                )[0].samples_per_s,
                m,
                p,
            )
            for p in options
        ]
        searched += results
        top = max(results, key=lambda found: found[0])
        if best is None or top[0] > best[0]:
            best, misses = top, 0
        else:
            misses += 1
            if misses == 2:  # two larger M did no better: smaller micro-batches only cost more
                break
    if best is None:
        raise ValueError(f"{schedule} has no configuration for {cal.pair} on {stages} stages")
    placing = early == "auto" and get_schedule(schedule).accepts_early
    fastest = sorted(searched, key=lambda found: -found[0])[: PLACED if placing else 1]
    runs = [
        simulate_calibration(cal, schedule, stages, m, link, backward_pieces=p, early=early, dp=dp)
        for _, m, p in fastest
    ]
    return max(runs, key=lambda run: run[0].samples_per_s)
