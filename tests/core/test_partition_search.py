"""The partition search: its neighbours, a start two blocks off the balance that the search
walks back to, a memory limit that holds it, and its refusals. The planner's use of it on a real
calibration is tested in ``tests/core/test_calibration.py``."""

from __future__ import annotations

import json

import pytest

from core.calibration import load_calibration
from core.link import Link
from core.paper_scale import calibration_memory, simulate_calibration
from core.partition_search import neighbours, search_partition

FAST = Link(gbps=1e6, latency_us=0.0)


@pytest.fixture
def skewed(tmp_path):
    """A frozen-teacher pair of four blocks each at a batch of 8 (linear in samples): the first
    student block costs three times each other one (forward 3 ms, backward 6 ms; 1 and 2 ms for
    the rest), the teacher almost nothing, and every student block's output is 250,000 floats a
    sample, so a stage's activations grow with its block count. On 2 stages the balance [1, 3]
    gives each stage 9 ms; [2, 2] gives 12 and 6."""
    data = {
        "pair": "kd_skewed",
        "batch": 8,
        "microbatch": 8,
        "amp_bf16": False,
        "teacher_blocks": {"fwd_ms": [0.01] * 4, "out_shape": [[8, 10]] * 4},
        "student_blocks": {
            "fwd_ms": [3.0, 1.0, 1.0, 1.0],
            "bwd_ms": [6.0, 2.0, 2.0, 2.0],
            "out_shape": [[8, 250000]] * 4,
        },
    }
    path = tmp_path / "kd_skewed_fp32.json"
    path.write_text(json.dumps(data))
    return load_calibration(path)


def peak_gib(cal, balance, microbatches=4):
    _, built, part = simulate_calibration(cal, "gpipe", 2, microbatches, FAST, balance, 1)
    return max(p.bytes for p in calibration_memory(cal, built, part)) / 2**30


def test_neighbours_move_one_block_across_one_boundary():
    assert neighbours([1, 2, 1]) == [[2, 1, 1], [1, 1, 2]]
    assert neighbours([2, 2]) == [[1, 3], [3, 1]]
    assert neighbours([1, 1]) == []
    assert neighbours([5]) == []


def test_the_search_walks_back_to_the_balance_known_by_hand(skewed):
    assert search_partition(skewed, "gpipe", 2, 4, FAST, [3, 1], 1)[0] == [1, 3]  # two moves
    balance, speed = search_partition(skewed, "gpipe", 2, 4, FAST, [2, 2], 1)
    assert balance == [1, 3]
    start = simulate_calibration(skewed, "gpipe", 2, 4, FAST, [2, 2], 1, 6)[0].samples_per_s
    assert speed > 1.15 * start  # busiest stage 9 ms instead of 12 (about 1.2x, less the bubble)
    assert search_partition(skewed, "gpipe", 2, 4, FAST, [1, 3], 1)[0] == [1, 3]  # nothing gains


def test_a_memory_limit_holds_the_search(skewed):
    here, there = peak_gib(skewed, [2, 2]), peak_gib(skewed, [1, 3])
    assert there > here  # three blocks' activations on stage 1
    limit = (here + there) / 2
    assert search_partition(skewed, "gpipe", 2, 4, FAST, [2, 2], 1, memory_gib=limit)[0] == [2, 2]
    assert search_partition(skewed, "gpipe", 2, 4, FAST, [2, 2], 1, memory_gib=there * 1.01)[0] == [1, 3]


def test_rounds_bound_the_search(skewed):
    assert search_partition(skewed, "gpipe", 2, 4, FAST, [2, 2], 1, rounds=0)[0] == [2, 2]
    assert search_partition(skewed, "gpipe", 2, 4, FAST, [3, 1], 1, rounds=1)[0] == [2, 2]
    with pytest.raises(ValueError, match="rounds"):
        search_partition(skewed, "gpipe", 2, 4, FAST, [2, 2], 1, rounds=-1)
    with pytest.raises(ValueError, match="balance"):
        search_partition(skewed, "gpipe", 2, 4, FAST, [2, 3], 1)
