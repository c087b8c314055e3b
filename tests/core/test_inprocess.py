"""Whole pipelines in one process (a thread per stage over the in-process network): every
pipeline schedule equals the single-process reference, and a stage can be tested without any
process group."""

from __future__ import annotations

import threading

import pytest
import torch

from core.config import PipelineConfig
from core.runtime import LocalNetwork
from core.schedules import get_schedule, schedules
from tests.core.inprocess import run_in_process
from tests.core.test_runtime_dist import relative_difference
from tests.core.toy import ToyTask, make_batches, reference

STEPS = 3
MULTI_STAGE = [s.name for s in schedules("pipeline") if s.stages is None]


@pytest.mark.parametrize("stages", [2, 3])
@pytest.mark.parametrize("teacher", ["ema", "frozen"])
@pytest.mark.parametrize("name", MULTI_STAGE)
def test_every_pipeline_schedule_equals_the_reference_in_threads(name, teacher, stages):
    spec = get_schedule(name)
    micro = spec.microbatches or 2
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        config = PipelineConfig(name, stages, micro, max_grad_norm=0.05)
        got, logs = run_in_process(lambda: ToyTask(teacher, True, STEPS), config, make_batches(STEPS), STEPS)
        want = reference(
            ToyTask(teacher, True, STEPS),
            make_batches(STEPS),
            micro,
            config.pieces,
            spec.staleness(teacher),
            max_grad_norm=0.05,
        )
    finally:
        torch.set_default_dtype(previous)
    assert relative_difference(got["student"], want["student"]) <= 1e-12
    assert relative_difference(got["teacher"], want["teacher"]) <= 1e-12
    assert len(logs[-1].losses) == STEPS and not logs[0].losses  # the last stage computes the loss


def test_a_stage_alone_with_a_fake_network():
    # stage 1 of 2 runs by itself: the test plays stage 0 by putting its messages on the network
    network = LocalNetwork(2, timeout_s=5.0)
    from core.runtime import make_runner
    from tests.core.toy import sgd

    config = PipelineConfig("gpipe", 2, 1)
    task = ToyTask("frozen", False, 1)
    stage1 = make_runner(task, config, torch.device("cpu"), sgd, transport=network.transport(1))
    x, _ = make_batches(1)[0]
    peer = network.transport(0)
    stage0 = make_runner(ToyTask("frozen", False, 1), config, torch.device("cpu"), sgd, transport=peer)
    logs = []
    thread = threading.Thread(target=lambda: logs.append(stage1.run(make_batches(1), 1)))
    thread.start()
    peer.barrier()  # the run starts with every stage
    with torch.no_grad():
        peer.send("TF", 1, stage0.teacher(x))
        peer.send("SF", 1, stage0.student(x))
    grad = peer.recv("SB", 1)  # what stage 1 sends back: the gradient of stage 0's output
    thread.join()
    assert len(logs) == 1 and len(logs[0].losses) == 1
    assert grad.shape == x.shape and torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_a_silent_peer_times_out_with_a_clear_message():
    network = LocalNetwork(2, timeout_s=0.5)
    with pytest.raises(RuntimeError, match="SF message from rank 0 did not arrive within"):
        network.transport(1).recv("SF", 0)
