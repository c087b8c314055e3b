"""Schedules: pinned action lists, invariants swept over shapes, lowering, and bad input."""

import itertools

import pytest

from core.action import Action, Op, parse_action
from core.schedules import build_schedule, get_schedule, lower, schedules
from core.validate import dry_run, validate


def lists(name, stages, micro, teacher="ema", batches=1, views=1):
    built = build_schedule(name, stages, micro, teacher, batches, views=views)
    return [" ".join(str(a) for a in stage) for stage in built.compute]


# ---- exact action lists, N = 2, M = 2 ------------------------------------------------------


def test_sequential_pinned():
    assert lists("sequential", 1, 2, batches=2) == [
        "0TF0 0TF1 0SF0 0SF1 0LOSS 0SB0 0SB1 0OPT 0TF0@1 0TF1@1 0SF0@1 0SF1@1 0LOSS@1 0SB0@1 0SB1@1 0OPT@1"
    ]


def test_mp_pinned():
    assert lists("mp", 2, 1, views=2) == [
        "0TF0 0TF1 0SF0 0SF1 0SB0 0SB1 0OPT",
        "1TF0 1TF1 1SF0 1SF1 1LOSS 1SB0 1SB1 1OPT",
    ]


def test_mp_lowering_hoists_receives():
    built = build_schedule("mp", 2, 1, "ema", 1, views=2)
    assert " ".join(map(str, built.lowered[1])) == (
        "1RECV_TF0 1RECV_TF1 1RECV_SF0 1RECV_SF1 1TF0 1TF1 1SF0 1SF1 1LOSS 1SB0 1SEND_SB0 1SB1 1SEND_SB1 1OPT"
    )


def test_gpipe_pinned():
    assert lists("gpipe", 2, 2) == [
        "0TF0 0TF1 0SF0 0SF1 0SB0 0SB1 0OPT",
        "1TF0 1TF1 1SF0 1SF1 1LOSS 1SB0 1SB1 1OPT",
    ]


def test_1f1b_pinned():
    assert lists("1f1b", 2, 2) == [
        "0TF0 0TF1 0SF0 0SF1 0SB0 0SB1 0OPT",
        "1TF0 1TF1 1SF0 1LOSS0 1SB0 1SF1 1LOSS1 1SB1 1OPT",
    ]
    # with more stages the warm-up shrinks down the pipeline
    assert lists("1f1b", 3, 3)[1] == "1TF0 1TF1 1TF2 1SF0 1SF1 1SB0 1SF2 1SB1 1SB2 1OPT"


def test_tspipe_pinned():
    assert lists("tspipe", 2, 2, batches=2) == [
        "0TF0 0TF1 0SF0 0SF1 0TF0@1 0TF1@1 0SB0.0 0SB0.1 0SB1.0 0SB1.1 0OPT "
        "0SF0@1 0SF1@1 0SB0.0@1 0SB0.1@1 0SB1.0@1 0SB1.1@1 0OPT@1",
        "1TF0 1TF1 1SF0 1SF1 1LOSS 1SB0.0 1SB0.1 1SB1.0 1SB1.1 1TF0@1 1TF1@1 1OPT "
        "1SF0@1 1SF1@1 1LOSS@1 1SB0.0@1 1SB0.1@1 1SB1.0@1 1SB1.1@1 1OPT@1",
    ]


def test_zb_pinned():
    # 1F1B's order, each input half followed by its weight half
    assert lists("zb", 2, 2) == [
        "0TF0 0TF1 0SF0 0SF1 0SB0 0SW0 0SB1 0SW1 0OPT",
        "1TF0 1TF1 1SF0 1LOSS0 1SB0 1SW0 1SF1 1LOSS1 1SB1 1SW1 1OPT",
    ]


def test_tspipe_zb_pinned():
    # tspipe's order; past stage 0 every input half, then the weight halves, then late teacher work
    assert lists("tspipe-zb", 2, 2, batches=2) == [
        "0TF0 0TF1 0SF0 0SF1 0TF0@1 0TF1@1 0SB0.0 0SW0.0 0SB0.1 0SW0.1 0SB1.0 0SW1.0 0SB1.1 0SW1.1 0OPT "
        "0SF0@1 0SF1@1 0SB0.0@1 0SW0.0@1 0SB0.1@1 0SW0.1@1 0SB1.0@1 0SW1.0@1 0SB1.1@1 0SW1.1@1 0OPT@1",
        "1TF0 1TF1 1SF0 1SF1 1LOSS 1SB0.0 1SB0.1 1SB1.0 1SB1.1 1SW0.0 1SW0.1 1SW1.0 1SW1.1 1TF0@1 1TF1@1 "
        "1OPT 1SF0@1 1SF1@1 1LOSS@1 1SB0.0@1 1SB0.1@1 1SB1.0@1 1SB1.1@1 1SW0.0@1 1SW0.1@1 1SW1.0@1 "
        "1SW1.1@1 1OPT@1",
    ]
    # the late teacher forwards follow the weight halves
    late = lists("tspipe-zb", 3, 4, batches=2)[1].split()
    assert late.index("1TF3@1") > late.index("1SW3.1")


def test_tspipe_zbh1_pinned():
    # zb's order with a loss per unit; stage 0 runs its early teacher forwards of the next
    # mini-batch after its warm-up forward and one more, the last stage all of them late
    assert lists("tspipe-zbh1", 2, 2, batches=2) == [
        "0TF0 0TF1 0SF0 0SF1 0TF0@1 0TF1@1 0SB0.0 0SW0.0 0SB0.1 0SW0.1 0SB1.0 0SW1.0 0SB1.1 0SW1.1 0OPT "
        "0SF0@1 0SF1@1 0SB0.0@1 0SW0.0@1 0SB0.1@1 0SW0.1@1 0SB1.0@1 0SW1.0@1 0SB1.1@1 0SW1.1@1 0OPT@1",
        "1TF0 1TF1 1SF0 1LOSS0 1SB0.0 1SW0.0 1SB0.1 1SW0.1 1SF1 1LOSS1 1SB1.0 1SW1.0 1SB1.1 1SW1.1 "
        "1TF0@1 1TF1@1 1OPT 1SF0@1 1LOSS0@1 1SB0.0@1 1SW0.0@1 1SB0.1@1 1SW0.1@1 1SF1@1 1LOSS1@1 "
        "1SB1.0@1 1SW1.0@1 1SB1.1@1 1SW1.1@1 1OPT@1",
    ]
    # N = 3, U = 3: stage 1 warms up with one forward, runs one more, then its 2 (N - 1 - s)
    # early teacher forwards before its first backward, and the last one after its drain
    assert lists("tspipe-zbh1", 3, 3, batches=2)[1].startswith(
        "1TF0 1TF1 1TF2 1SF0 1SF1 1TF0@1 1TF1@1 1SB0.0 1SW0.0 1SB0.1 1SW0.1 1SF2 1SB1.0 1SW1.0 "
        "1SB1.1 1SW1.1 1SB2.0 1SW2.0 1SB2.1 1SW2.1 1TF2@1 1OPT "
    )


def test_split_backward_lowering_sends_the_gradient_after_the_input_half():
    built = build_schedule("zb", 2, 1, "frozen")
    assert " ".join(map(str, built.lowered[1])) == (
        "1RECV_TF0 1TF0 1RECV_SF0 1SF0 1LOSS0 1SB0 1SEND_SB0 1SW0 1OPT"
    )


def test_tspipe_spreads_late_teacher_forwards_on_stage_zero():
    # N = 2, U = 4: stage 0 runs 2 teacher forwards of batch 1 early, 2 between backward pieces
    first = build_schedule("tspipe", 2, 4, "ema", 2).compute[0]
    text = " ".join(str(a) for a in first if a.batch == 0 or a.op == Op.TF)
    assert "0SB1.1 0TF2@1" in text and text.index("0TF3@1") > text.index("0SB3.1")


def test_lowering_pinned():
    built = build_schedule("gpipe", 2, 1, "frozen")
    assert [" ".join(map(str, s)) for s in built.lowered] == [
        "0TF0 0SEND_TF0 0SF0 0SEND_SF0 0RECV_SB0 0SB0 0OPT",
        "1RECV_TF0 1TF0 1RECV_SF0 1SF0 1LOSS 1SB0 1SEND_SB0 1OPT",
    ]


# ---- invariants over many shapes -------------------------------------------------------------


PIPELINES = [s.name for s in schedules("pipeline")]


def shapes():
    for spec, stages, micro, teacher, views in itertools.product(
        schedules("pipeline"), range(1, 9), range(1, 9), ("frozen", "ema"), (1, 2)
    ):
        if spec.stages not in (None, stages) or spec.microbatches not in (None, micro):
            continue
        yield spec.name, stages, micro, teacher, views


def test_invariants_hold_for_every_shape():
    count = 0
    for name, stages, micro, teacher, views in shapes():
        built = build_schedule(name, stages, micro, teacher, batches=3, views=views)
        validate(built)
        count += 1
    assert count > 500


@pytest.mark.parametrize("pieces", [1, 2, 3])
def test_backward_pieces_are_a_parameter_of_every_schedule(pieces):
    for name in ("gpipe", "1f1b", "tspipe", "zb", "tspipe-zb", "tspipe-zbh1"):
        built = build_schedule(name, 3, 2, "ema", 2, backward_pieces=pieces)
        validate(built)
        sb = [a for a in built.compute[0] if a.op == Op.SB]
        assert len(sb) == 2 * 2 * pieces
        sw = [a for a in built.compute[1] if a.op == Op.SW]
        assert len(sw) == (2 * 2 * pieces if built.split_backward else 0)


def test_staleness_is_one_only_for_the_tspipe_family_with_ema_teacher():
    for spec in schedules("pipeline"):
        for teacher in ("frozen", "ema"):
            name = spec.name
            built = build_schedule(name, spec.stages or 2, spec.microbatches or 2, teacher, 3)
            stale = name in ("tspipe", "tspipe-zb", "tspipe-zbh1") and teacher == "ema"
            assert built.staleness == (1 if stale else 0)


@pytest.mark.parametrize("name", ["tspipe", "tspipe-zb", "tspipe-zbh1"])
def test_tspipe_teacher_reads_version_b_minus_one(name):
    built = build_schedule(name, 3, 2, "ema", 4)
    for actions in built.compute:
        steps = 0
        for a in actions:
            if a.op == Op.OPT:
                steps += 1
            if a.op == Op.TF:
                assert steps == max(0, a.batch - 1)


# ---- the validator catches broken schedules --------------------------------------------------


def broken(name, mutate, teacher="ema"):
    built = build_schedule(name, 2, 2, teacher, 2)
    compute = [list(s) for s in built.compute]
    mutate(compute)
    return built.__class__(
        **{
            **built.__dict__,
            "compute": tuple(map(tuple, compute)),
            "lowered": tuple(map(tuple, lower(compute))),
        }
    )


def test_validator_catches_a_missing_action():
    with pytest.raises(ValueError, match="never runs"):
        validate(broken("gpipe", lambda c: c[0].remove(parse_action("0TF1"))))


def test_validator_catches_a_duplicate():
    with pytest.raises(ValueError, match="twice"):
        validate(broken("gpipe", lambda c: c[0].insert(0, parse_action("0TF1"))))


def test_validator_catches_backward_before_forward():
    def swap(c):
        i, j = c[1].index(parse_action("1SF1")), c[1].index(parse_action("1SB1"))
        c[1][i], c[1][j] = c[1][j], c[1][i]

    with pytest.raises(ValueError):
        validate(broken("gpipe", swap))


def test_validator_catches_a_wrong_teacher_version():
    # move batch 1's teacher forwards before batch 0's step in gpipe: stale but gpipe promises exact
    def move(c):
        tf = parse_action("0TF0@1")
        c[0].remove(tf)
        c[0].insert(c[0].index(parse_action("0OPT")), tf)

    with pytest.raises(ValueError, match="teacher version"):
        validate(broken("gpipe", move))
    validate(broken("gpipe", move, teacher="frozen"))  # a frozen teacher has one version


def test_validator_catches_loss_before_forwards():
    def move(c):
        loss = parse_action("1LOSS")
        c[1].remove(loss)
        c[1].insert(0, loss)

    with pytest.raises(ValueError, match="LOSS"):
        validate(broken("gpipe", move))


def test_validator_catches_a_weight_half_before_its_input_half():
    def swap(c):
        i, j = c[1].index(parse_action("1SB1")), c[1].index(parse_action("1SW1"))
        c[1][i], c[1][j] = c[1][j], c[1][i]

    with pytest.raises(ValueError, match="before the input-gradient backward"):
        validate(broken("zb", swap))


def test_validator_catches_a_weight_half_after_the_step():
    def move(c):
        w = parse_action("1SW1")
        c[1].remove(w)
        c[1].insert(c[1].index(parse_action("1OPT")) + 1, w)

    with pytest.raises(ValueError, match="before every weight-gradient backward"):
        validate(broken("zb", move))


def test_validator_catches_a_missing_weight_half():
    with pytest.raises(ValueError, match="never runs 1SW0"):
        validate(broken("tspipe-zb", lambda c: c[1].remove(parse_action("1SW0.0"))))


def test_dry_run_reports_a_deadlock_with_the_grid():
    # stage 1 waits for a gradient it would itself have to send first
    lowered = [
        [Action(0, Op.RECV_SB, 0, 0), Action(0, Op.SEND_SF, 0, 0)],
        [Action(1, Op.RECV_SF, 0, 0), Action(1, Op.SEND_SB, 0, 0)],
    ]
    with pytest.raises(ValueError, match="deadlock") as err:
        dry_run(lowered)
    assert ">>0RECV_SB0<<" in str(err.value) and ">>1RECV_SF0<<" in str(err.value)


def test_an_on_demand_receive_moves_its_message_only_once_posted():
    # stage 0 sends at 1; stage 1 reaches the receive at 3 (after its teacher forward)
    lowered = [
        [Action(0, Op.SF, 0, 0), Action(0, Op.SEND_SF, 0, 0)],
        [Action(1, Op.TF, 0, 0), Action(1, Op.RECV_SF, 0, 0), Action(1, Op.SF, 0, 0)],
    ]
    costs = {Op.SF: 1.0, Op.TF: 3.0}

    def student_forward_on_1(on_demand):
        records = dry_run(
            lowered,
            lambda a: costs.get(a.op, 0.0),
            lambda a, sent, free: max(sent, free) + 1.0,
            on_demand=on_demand,
        )
        return next((r.start_ms, r.end_ms) for r in records if r.stage == 1 and r.op == "SF")

    assert student_forward_on_1(False) == (3.0, 4.0)  # posted ahead: arrived at 2
    assert student_forward_on_1(True) == (4.0, 5.0)  # moves from 3, arrives at 4


def test_a_stage_waiting_for_its_sends_starts_its_next_kind_of_work_once_they_are_delivered():
    # torch's teacher pass: stage 0 may start its student forward only once stage 1 has posted
    # (at 6, after its first teacher forward) the receive of its second teacher message
    lowered = [
        [
            Action(0, Op.TF, 0, 0),
            Action(0, Op.SEND_TF, 0, 0),
            Action(0, Op.TF, 0, 1),
            Action(0, Op.SEND_TF, 0, 1),
        ]
        + [Action(0, Op.SF, 0, 0)],
        [
            Action(1, Op.RECV_TF, 0, 0),
            Action(1, Op.TF, 0, 0),
            Action(1, Op.RECV_TF, 0, 1),
            Action(1, Op.TF, 0, 1),
        ],
    ]
    costs = {Op.TF: 1.0, Op.SF: 1.0}

    def stage_0_student_forward(**how):
        records = dry_run(lowered, lambda a: costs.get(a.op, 0.0) * (5 if a.stage else 1), **how)
        return next((r.start_ms, r.end_ms) for r in records if r.stage == 0 and r.op == "SF")

    assert stage_0_student_forward() == (2.0, 3.0)
    assert stage_0_student_forward(on_demand=True, send_waits=True) == (6.0, 7.0)


def test_dry_run_reports_mismatched_message_order():
    lowered = [
        [Action(0, Op.SEND_SF, 0, 0), Action(0, Op.SEND_SF, 0, 1)],
        [Action(1, Op.RECV_SF, 0, 1), Action(1, Op.RECV_SF, 0, 0)],
    ]
    with pytest.raises(ValueError, match="same order"):
        dry_run(lowered)


# ---- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: get_schedule("pipedream"), "unknown schedule 'pipedream'; choose one of: sequential"),
        (lambda: build_schedule("gpipe", 0, 2), "stages must be an integer >= 1"),
        (lambda: build_schedule("gpipe", 2, 0), "microbatches must be an integer >= 1"),
        (lambda: build_schedule("gpipe", 2, 2, "momentum"), "teacher must be one of"),
        (lambda: build_schedule("sequential", 2, 2), "sequential runs on one stage"),
        (lambda: build_schedule("mp", 2, 4), "mp runs the whole mini-batch as one micro-batch"),
        (lambda: build_schedule("tspipe", 2, 2, backward_pieces=0), "backward_pieces must be"),
    ],
)
def test_bad_input_raises_value_error_saying_what_to_change(call, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        call()


def test_with_a_step_all_reduce_every_stage_steps_when_the_last_one_reaches_its_step():
    # global-norm clipping all-reduces at the start of OPT: stage 0 is ready at 1, stage 1 at 4
    lowered = [
        [Action(0, Op.SF, 0, 0), Action(0, Op.OPT, 0), Action(0, Op.SF, 1, 0), Action(0, Op.OPT, 1)],
        [Action(1, Op.SF, 0, 0), Action(1, Op.OPT, 0), Action(1, Op.SF, 1, 0), Action(1, Op.OPT, 1)],
    ]

    def steps(**how):
        records = dry_run(lowered, lambda a: 4.0 if a.stage and a.op == Op.SF else 1.0, **how)
        return [(r.stage, r.start_ms) for r in records if r.op == "OPT"]

    assert sorted(steps()) == [(0, 1.0), (0, 3.0), (1, 4.0), (1, 9.0)]
    # stage 0 waits for stage 1 at each step: 4, then 5 + 4 = 9 for the second
    assert sorted(steps(step_sync=True)) == [(0, 4.0), (0, 9.0), (1, 4.0), (1, 9.0)]


def test_a_rank_holding_two_stages_joins_the_step_all_reduce_once_and_does_not_wait_on_itself():
    # rank 0 holds stages 0 and 2, each with its own OPT; rank 1 holds stage 1 (ready at 4)
    lowered = [
        [Action(0, Op.SF, 0, 0), Action(2, Op.SF, 0, 0), Action(0, Op.OPT, 0), Action(2, Op.OPT, 0)],
        [Action(1, Op.SF, 0, 0), Action(1, Op.OPT, 0)],
    ]
    records = dry_run(lowered, lambda a: 4.0 if a.stage == 1 and a.op == Op.SF else 1.0, step_sync=True)
    opts = sorted((r.stage, r.start_ms, r.end_ms) for r in records if r.op == "OPT")
    # rank 0 reaches its first OPT at 2, waits for rank 1 (4); its second OPT follows its first
    assert opts == [(0, 4.0, 5.0), (1, 4.0, 5.0), (2, 5.0, 6.0)]


@pytest.mark.parametrize("name", ["gpipe", "1f1b", "tspipe", "tspipe-zb", "tspipe-zbh1"])
def test_a_synced_step_starts_together_on_every_stage_and_is_never_faster(name):
    from core.cost_model import unit_costs
    from core.simulate import simulate

    schedule = build_schedule(name, 3, 4, "ema", 8, 1, 2)
    costs = unit_costs(3)
    free, synced = simulate(schedule, costs, 8), simulate(schedule, costs, 8, step_sync=True)
    assert synced.step_ms >= free.step_ms - 1e-9
    starts: dict[int, set[float]] = {}
    for r in synced.records:
        if r.op == "OPT":
            starts.setdefault(r.batch, set()).add(round(r.start_ms, 9))
    assert len(starts) == 8 and all(len(s) == 1 for s in starts.values())
