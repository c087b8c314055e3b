"""Data-parallel replicas of a pipeline, the parts that need no processes: the config, the
slice each replica reads, the manifest's dp (the runs themselves: ``test_runtime_dist``, the
BYOL and MoCo-v3 tests)."""

import pytest
import torch

from core.checkpoint import check_manifest
from core.config import PipelineConfig
from core.runtime.replicas import Replicas


def test_dp_multiplies_the_processes_of_a_pipeline_schedule():
    config = PipelineConfig(schedule="tspipe", stages=2, dp=3, microbatches=2)
    assert config.world == 6 and config.replicas == 3
    assert PipelineConfig(schedule="ddp", stages=4).world == 4  # ddp's replicas are its stages
    assert PipelineConfig(schedule="gpipe", stages=2).world == 2


@pytest.mark.parametrize("dp", [0, -1, True, 1.5])
def test_a_bad_dp_is_refused(dp):
    with pytest.raises(ValueError, match="dp must be an integer >= 1"):
        PipelineConfig(schedule="gpipe", stages=2, dp=dp)


@pytest.mark.parametrize("schedule, stages, micro", [("ddp", 2, 1), ("torch-gpipe", 2, 2)])
def test_dp_is_for_pipeline_schedules_only(schedule, stages, micro):
    with pytest.raises(ValueError, match="replicates a pipeline schedule"):
        PipelineConfig(schedule=schedule, stages=stages, microbatches=micro, dp=2)


def test_each_replica_reads_its_slice_in_replica_order():
    x = {"a": torch.arange(8.0), "b": torch.arange(8)}
    parts = [Replicas(size=2, index=d).part(x, 2) for d in range(2)]
    assert torch.equal(parts[0]["a"], torch.arange(4.0)) and torch.equal(parts[1]["b"], torch.arange(4, 8))
    one = torch.arange(6.0)
    assert Replicas().part(one, 4) is one  # a single pipeline reads the whole batch
    assert Replicas().gather(one, with_grad=True) is one


def test_a_batch_that_does_not_split_into_dp_times_m_is_refused():
    with pytest.raises(ValueError, match="divisible by 4, got 6 samples"):
        Replicas(size=2, index=0).part(torch.zeros(6, 3), 2)


def test_a_resume_with_another_dp_is_refused_and_an_old_manifest_means_dp_1():
    old = {"method": "byol", "schedule": "gpipe", "world_size": 2, "microbatches": 2}
    check_manifest(old, {**old, "dp": 1})  # written before dp existed: one pipeline
    with pytest.raises(ValueError, match=r"world_size: checkpoint 2, now 4; dp: checkpoint 1, now 2"):
        check_manifest(old, {**old, "world_size": 4, "dp": 2})


def test_gradients_are_bucketed_by_dtype_in_order_up_to_the_bucket_size(monkeypatch):
    from core.runtime import replicas

    monkeypatch.setattr(replicas, "BUCKET_BYTES", 32)  # eight float32 values
    grads = [
        torch.zeros(4),
        torch.zeros(4),
        torch.zeros(2, dtype=torch.float64),
        torch.zeros(1),
        torch.zeros(9),
    ]
    buckets = replicas._buckets(grads)
    # float32: [4, 4] reaches 32 bytes and closes; then [1, 9]; float64 on its own
    assert [[g.numel() for g in b] for b in buckets] == [[4, 4], [1, 9], [2]]
    assert all(len({g.dtype for g in b}) == 1 for b in buckets)
    assert Replicas().start_reduce([torch.nn.Parameter(torch.zeros(2))]) is None  # one replica: nothing


@pytest.mark.parametrize("schedule", ["tspipe", "gpipe", "zb", "tspipe-zb", "tspipe-zbh1"])
def test_the_dp_gradient_sum_starts_after_each_stage_s_last_backward_of_the_step(schedule):
    from core.action import Op
    from core.runtime.pipeline import last_backward
    from core.schedules import Program

    program = Program.build(schedule, 2, 2, "ema", steps=4, views=2)
    late_teacher = 0
    for rank in (0, 1):
        segment = program.segment(rank, 2)
        last = last_backward(segment, 2)
        at = segment.index(last)
        assert last.op in (Op.SB, Op.SW) and last.batch == 2
        assert not [a for a in segment[at + 1 :] if a.op in (Op.SB, Op.SW) and a.batch == 2]
        assert [a.op for a in segment[at + 1 :] if a.op == Op.OPT] == [Op.OPT]  # the step waits for it
        late_teacher += sum(a.op == Op.TF and a.batch == 3 for a in segment[at + 1 :])
    # tspipe runs next-batch teacher forwards between a stage's last backward and its step:
    # the sum overlaps them
    assert (late_teacher > 0) == schedule.startswith("tspipe")
