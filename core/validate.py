"""Invariants every schedule must satisfy, and the dry run that replays lowered action lists."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from core.action import CHANNEL, OPS, RECV_OPS, SEND_OPS, Action, Op, format_grid, peer_stage
from core.metrics import TimelineRecord
from core.schedules import Schedule

ActionLists = Sequence[Sequence[Action]]
DurationFn = Callable[[Action], float]
# (send action, time the send is issued, earliest time the link is free) -> arrival time
TransferFn = Callable[[Action, float, float], float]


@dataclass(slots=True)
class _Message:
    """A message of the dry run: its send, when it arrives (with on-demand receives, set when
    its receive is posted) and whether its receive has been posted."""

    sent: Action
    arrival: float
    posted: bool = False


def dry_run(
    lowered: ActionLists,
    duration: DurationFn | None = None,
    transfer: TransferFn | None = None,
    stage_to_rank: Sequence[int] | None = None,
    wake: Callable[[float], float] | None = None,
    on_demand: bool = False,
    send_waits: bool = False,
    step_sync: bool = False,
) -> list[TimelineRecord]:
    """Replay lowered per-stage lists as the runtime would run them: sends never block (they stay
    pending), a receive waits until the matching send was issued, and messages of one channel
    between two stages are matched in order.

    Args:
        lowered: per-stage lists from :func:`core.schedule.lower`.
        duration: time an action occupies its stage; default 1 for compute, 0 for sends and
            receives (logical time). A receive's time starts when its message has arrived.
        transfer: arrival time of a message; default: the moment it is sent.
        stage_to_rank: the rank of each stage (default: stage s on rank s, one list per rank).
        wake: what a receive that waited ``w`` for its message adds to its stage's time (a CPU
            core resuming from idle); default: nothing.
        on_demand: receives are posted only when their stage reaches them (torch's pipelining
            schedules post each receive just before the action that needs it), and a message
            moves only once its receive is posted (gloo): ``transfer`` then starts at the later
            of the send and the receive. Default: posted ahead (the project's runtime), the
            message moves as soon as it is sent.
        send_waits: before a compute action of another kind than its last one, a stage waits
            until every message it sent has been delivered (torch's schedules wait for their
            sends at the end of each forward and backward phase and of the teacher's pass, or,
            in 1F1B, fused with the next receive). Default: sends never block.
        step_sync: every ``OPT`` of a mini-batch starts together, when the last rank reaches
            its first one (global-norm clipping and ``nan_guard=skip`` all-reduce across the
            ranks at the start of the step; a rank holding several stages joins it once).
            Default: each stage steps on its own.

    Returns:
        One :class:`TimelineRecord` per action, in the order they were replayed.

    Raises:
        ValueError: if a receive meets a different message than the one it expects (order
            mismatch), or if every unfinished stage waits on a receive (deadlock). The message
            shows the action grid with the offending action(s) marked.
    """
    duration = duration or (lambda a: 1.0 if a.is_compute else 0.0)
    stages = len(lowered)  # ranks: one list each

    def rank(stage: int) -> int:
        return stage_to_rank[stage] if stage_to_rank else stage

    pc = [0] * stages
    clock = [0.0] * stages
    # per channel and (source, destination) rank, the messages in order
    queues: dict[tuple[str, int, int], deque[_Message]] = {}
    link_free: dict[tuple[int, int], float] = {}
    unfinished: list[list[_Message]] = [[] for _ in range(stages)]  # sends not waited for yet
    last_kind: list[Op | None] = [None] * stages
    steppers: dict[int, int] = {}  # per mini-batch, the lists (ranks) with an OPT of it
    for actions in lowered:
        for b in {a.batch for a in actions if a.op == Op.OPT}:
            steppers[b] = steppers.get(b, 0) + 1
    reached: dict[int, dict[int, float]] = {}  # per mini-batch: the ranks at their first OPT, since when
    records: list[TimelineRecord] = []
    progress = True
    while progress:
        progress = False
        for s in range(stages):
            actions = lowered[s]
            while pc[s] < len(actions):
                a = actions[pc[s]]
                start = clock[s]
                if send_waits and a.is_compute and a.op != last_kind[s] and unfinished[s]:
                    if not all(m.posted for m in unfinished[s]):
                        break  # a message of this stage has no posted receive yet
                    delivered = max(m.arrival for m in unfinished[s])
                    unfinished[s] = []
                    if delivered > start:
                        start = delivered + (wake(delivered - start) if wake else 0.0)
                        clock[s] = start
                if step_sync and a.op == Op.OPT:
                    here = reached.setdefault(a.batch, {})
                    here.setdefault(s, start)  # a rank's first OPT of the batch all-reduces
                    if len(here) < steppers[a.batch]:
                        break  # the others have not reached the step's all-reduce yet
                    start = max(start, *here.values())
                if a.op in RECV_OPS:
                    src = rank(peer_stage(a))
                    queue = queues.get((CHANNEL[a.op], src, s))
                    if not queue:
                        break
                    message = queue.popleft()
                    sent = message.sent
                    if sent.key() != a.key():
                        grid = format_grid([list(x) for x in lowered], mark=(s, pc[s]))
                        raise ValueError(
                            f"stage {s} receives {a} but the next {CHANNEL[a.op]} message from "
                            f"stage {sent.stage} is {sent}: sends and receives of a channel must "
                            f"come in the same order.\n{grid}"
                        )
                    if on_demand:  # the message leaves once this receive is posted
                        free = link_free.get((src, s), 0.0)
                        moved = max(message.arrival, start)
                        message.arrival = transfer(sent, moved, free) if transfer else moved
                        link_free[(src, s)] = max(free, message.arrival)
                    message.posted = True
                    arrival = message.arrival
                    end = max(start, arrival) + duration(a)
                    if wake and arrival > start:
                        end += wake(arrival - start)
                elif a.op in SEND_OPS:
                    dst = rank(peer_stage(a))
                    free = link_free.get((s, dst), 0.0)
                    issued = start + duration(a)  # the send's own work, then the message leaves
                    if on_demand:  # it leaves when its receive is posted: timed there
                        arrival = issued
                    else:
                        arrival = transfer(a, issued, free) if transfer else issued
                        link_free[(s, dst)] = max(free, arrival)
                    message = _Message(a, arrival)
                    queues.setdefault((CHANNEL[a.op], s, dst), deque()).append(message)
                    if send_waits:
                        unfinished[s].append(message)
                    end = issued
                else:
                    end = start + duration(a)
                    last_kind[s] = a.op
                records.append(TimelineRecord.of(a, start, end))
                clock[s] = end
                pc[s] += 1
                progress = True
    if any(pc[s] < len(lowered[s]) for s in range(stages)):
        blocked = [
            f"stage {s} waits at {lowered[s][pc[s]]}" for s in range(stages) if pc[s] < len(lowered[s])
        ]
        grid = "\n".join(
            format_grid([list(lowered[s])], mark=(0, pc[s]) if pc[s] < len(lowered[s]) else None).replace(
                "stage 0", f"stage {s}", 1
            )
            for s in range(stages)
        )
        raise ValueError("deadlock: " + "; ".join(blocked) + "\n" + grid)
    return records


def _fail(schedule: Schedule, message: str) -> None:
    raise ValueError(f"schedule {schedule.name!r} (N={schedule.stages}, U={schedule.units}): {message}")


def _stage_lists(schedule: Schedule) -> list[list[Action]]:
    """Each stage's compute actions in the order its rank runs them.

    Raises:
        ValueError: if an action sits in the list of a rank its stage is not placed on.
    """
    lists: list[list[Action]] = [[] for _ in range(schedule.stages)]
    for r, actions in enumerate(schedule.compute):
        for a in actions:
            if not 0 <= a.stage < schedule.stages or schedule.rank_of(a.stage) != r:
                _fail(schedule, f"{a} is in the list of rank {r}, its stage is not placed there")
            lists[a.stage].append(a)
    return lists


def _check_exactly_once(schedule: Schedule) -> None:
    last = schedule.stages - 1
    parts = [None] if schedule.backward_pieces == 1 else list(range(schedule.backward_pieces))
    for s, actions in enumerate(_stage_lists(schedule)):
        seen: set[Action] = set()
        for a in actions:
            if a in seen:
                _fail(schedule, f"{a} appears twice")
            seen.add(a)
        expected: set[Action] = set()
        for b in range(schedule.batches):
            for u in range(schedule.units):
                expected |= {Action(s, Op.TF, b, u), Action(s, Op.SF, b, u)}
                expected |= {Action(s, Op.SB, b, u, p) for p in parts}
                if schedule.split_backward:
                    expected |= {Action(s, Op.SW, b, u, p) for p in parts}
            expected.add(Action(s, Op.OPT, b))
        losses = {a for a in seen if a.op == Op.LOSS}
        if s != last and losses:
            _fail(schedule, f"stage {s} is not the last stage but runs {sorted(losses)[0]}")
        missing, extra = expected - seen, (seen - losses) - expected
        if missing:
            _fail(schedule, f"stage {s} never runs {sorted(missing)[0]} ({len(missing)} missing)")
        if extra:
            _fail(schedule, f"stage {s} runs unexpected {sorted(extra)[0]}")
        if s == last:
            for b in range(schedule.batches):
                mine = {a for a in losses if a.batch == b}
                whole = {Action(s, Op.LOSS, b)}
                per_unit = {Action(s, Op.LOSS, b, u) for u in range(schedule.units)}
                if mine != whole and mine != per_unit:
                    _fail(schedule, f"batch {b} needs one whole-batch LOSS or one LOSS per unit")


def _check_stage_order(schedule: Schedule) -> None:
    """Per-stage order: versions of student and teacher, loss after forwards, step after backwards."""
    ema = schedule.teacher == "ema"
    for s, actions in enumerate(_stage_lists(schedule)):
        steps_done = 0
        forwarded: set[tuple[int, int]] = set()
        teacher_done: dict[int, int] = {}
        student_done: dict[int, int] = {}
        backward_done: dict[int, int] = {}
        weights_done: dict[int, int] = {}
        inputs_done: set[tuple[int, int | None, int | None]] = set()
        losses: dict[int, set[int | None]] = {}
        for a in actions:
            if a.op == Op.TF:
                teacher_done[a.batch] = teacher_done.get(a.batch, 0) + 1
                want = schedule.teacher_version(a.batch)
                if ema and steps_done != want:
                    _fail(
                        schedule,
                        f"{a} reads teacher version {steps_done}, the version rule says {want} "
                        f"(staleness {schedule.staleness})",
                    )
            elif a.op == Op.SF:
                if steps_done != a.batch:
                    _fail(schedule, f"{a} reads student version {steps_done}, must be {a.batch}")
                forwarded.add((a.batch, a.microbatch))
                student_done[a.batch] = student_done.get(a.batch, 0) + 1
            elif a.op == Op.LOSS:
                units = schedule.units
                if teacher_done.get(a.batch, 0) != units:
                    _fail(schedule, f"{a} runs before every teacher forward of batch {a.batch}")
                if a.microbatch is None and student_done.get(a.batch, 0) != units:
                    _fail(schedule, f"{a} runs before every student forward of batch {a.batch}")
                if a.microbatch is not None and (a.batch, a.microbatch) not in forwarded:
                    _fail(schedule, f"{a} runs before the forward of its micro-batch")
                losses.setdefault(a.batch, set()).add(a.microbatch)
            elif a.op == Op.SB:
                if (a.batch, a.microbatch) not in forwarded:
                    _fail(schedule, f"{a} runs before the forward of its micro-batch")
                if steps_done != a.batch:
                    _fail(schedule, f"{a} runs after the optimizer step of its batch")
                if s == schedule.stages - 1:
                    done = losses.get(a.batch, set())
                    if None not in done and a.microbatch not in done:
                        _fail(schedule, f"{a} runs before the loss of its micro-batch")
                backward_done[a.batch] = backward_done.get(a.batch, 0) + 1
                inputs_done.add((a.batch, a.microbatch, a.part))
            elif a.op == Op.SW:
                if (a.batch, a.microbatch, a.part) not in inputs_done:
                    _fail(schedule, f"{a} runs before the input-gradient backward of its piece")
                if steps_done != a.batch:
                    _fail(schedule, f"{a} runs after the optimizer step of its batch")
                weights_done[a.batch] = weights_done.get(a.batch, 0) + 1
            elif a.op == Op.OPT:
                if a.batch != steps_done:
                    _fail(schedule, f"{a} is out of order: {steps_done} steps done before it")
                per_batch = schedule.units * schedule.backward_pieces
                if backward_done.get(a.batch, 0) != per_batch:
                    _fail(schedule, f"{a} runs before every backward of batch {a.batch}")
                if schedule.split_backward and weights_done.get(a.batch, 0) != per_batch:
                    _fail(schedule, f"{a} runs before every weight-gradient backward of batch {a.batch}")
                steps_done += 1


def _check_cross_stage(schedule: Schedule, records: list[TimelineRecord]) -> None:
    """What flows down (forwards) runs on stage s after stage s - 1, what flows up (input
    gradients) on stage s after stage s + 1, in logical time."""
    when = {r.action: (r.start_ms, r.end_ms) for r in records}
    for r in records:
        op = Op(r.op)
        flow = OPS[op].flow if op not in CHANNEL else None
        source = r.stage - 1 if flow == "down" else r.stage + 1 if flow == "up" else None
        if source is None or not 0 <= source < schedule.stages:
            continue
        before = str(Action(source, op, r.batch, r.microbatch, r.part))
        if when[before][1] > r.start_ms:
            _fail(schedule, f"{r.action} starts before {before} ends")


def validate(schedule: Schedule) -> list[TimelineRecord]:
    """Check every invariant of ARCHITECTURE.md ("Schedules") on ``schedule``.

    Checks: each compute action exactly once; student forward and backward of batch b on
    student version b, backward before the step; the loss after every teacher and student forward
    it needs; the step after all backwards of its batch; each teacher forward of an EMA teacher
    on version ``max(0, b - staleness)``; a split backward's weight half after its input half and
    before the step; forwards in stage order and backwards in reverse stage
    order; and the lowered lists run to the end without deadlock or mismatched messages.

    Returns:
        The logical-time records of the dry run (unit durations, instant messages).

    Raises:
        ValueError: naming the first invariant broken and the action that breaks it.
    """
    _check_exactly_once(schedule)
    _check_stage_order(schedule)
    records = dry_run(schedule.lowered, stage_to_rank=schedule.stage_to_rank)
    _check_cross_stage(schedule, records)
    return records
