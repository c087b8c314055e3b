"""Steady-state timing: only steps that do a full step's work count (no warm-up, no last step),
so a schedule whose last step does less (tspipe: no next mini-batch's teacher forwards) gains
nothing from it."""

from __future__ import annotations

import pytest

from core.action import Op
from core.bench import median_step_s, steady_steps
from core.schedules import Program, schedules


def test_steady_steps_leave_out_the_warm_up_and_the_last_step():
    ends = [0.0, 5.0, 6.0, 7.0, 8.0, 8.2]  # step 0 slow (warm-up), the last one short
    assert steady_steps(ends, warmup=1) == pytest.approx([1.0, 1.0, 1.0])
    assert median_step_s(ends, warmup=1) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="need at least 2 steps"):
        steady_steps([0.0, 1.0, 2.0], warmup=1)


def test_tspipes_last_step_does_less_and_is_not_counted():
    program = Program.build("tspipe", 2, 2, "ema", steps=6, views=2)
    for rank in range(2):
        compute = [[a for a in program.segment(rank, b) if a.op == Op.TF] for b in program.batches()]
        middle = len(compute[2])
        assert len(compute[-1]) < middle  # the epilogue: no next mini-batch to start
        assert all(len(c) == middle for c in compute[1:-1])
    # what counts: the durations of steps 2 .. 4 of 0 .. 5 with warm-up 1, never step 5
    ends = [float(b) for b in program.batches()]
    assert len(steady_steps(ends, warmup=1)) == 3


@pytest.mark.parametrize("spec", [s for s in schedules("pipeline") if s.stages is None], ids=lambda s: s.name)
def test_every_schedules_middle_steps_repeat(spec):
    program = Program.build(spec.name, 3, spec.microbatches or 2, "ema", steps=6, views=2)
    for rank in range(3):
        sizes = [len(program.segment(rank, b)) for b in program.batches()]
        assert len(set(sizes[1:-1])) == 1


def test_a_clipped_or_guarded_run_is_predicted_with_its_steps_synced():
    from core.bench import predict
    from core.config import PipelineConfig
    from core.link import Link
    from core.profile import BlockCosts

    # stage 1's backward is the slow one, so stage 0 reaches its step first
    costs = BlockCosts(
        samples=4,
        teacher_fwd=[1.0, 1.0],
        student_fwd=[1.0, 1.0],
        student_bwd=[1.0, 6.0],
        teacher_bytes=[0.0, 0.0],
        student_bytes=[0.0, 0.0],
        loss_ms=0.0,
        opt_ms=[1.0, 1.0],
        param_bytes=[0.0, 0.0],
    )

    def run(**pipeline):
        config = PipelineConfig(schedule="tspipe", stages=2, microbatches=2, **pipeline)
        speed, records = predict("tspipe", costs, config, 1, "frozen", 8, [1, 1], [1, 1], Link())
        starts: dict[int, set[float]] = {}
        for r in records:
            if r["op"] == "OPT":
                starts.setdefault(r["batch"], set()).add(round(r["start_ms"], 9))
        return speed, all(len(s) == 1 for s in starts.values())

    free, clipped, guarded = run(), run(max_grad_norm=1.0), run(nan_guard="skip")
    assert not free[1] and clipped[1] and guarded[1]
    assert clipped[0] <= free[0] and guarded[0] == pytest.approx(clipped[0])
