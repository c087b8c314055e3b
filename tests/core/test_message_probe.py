"""The per-message cost the link probe charges each end comes from the runtime's own transport:
work a send does shows up in the sender's cost, not the receiver's. What messages cost the work
beside them is what that work loses while they flow."""

from __future__ import annotations

import json

import pytest

from tests.conftest import launch_module
from tests.core.probe_worker import BESIDE_MS, DELAY_MS


@pytest.mark.dist
def test_message_cost_is_measured_through_the_transport(tmp_path):
    out = tmp_path / "probe.json"
    proc = launch_module("tests.core.probe_worker", 2, str(out), timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    sender, receiver = json.loads(out.read_text())
    for end in (sender, receiver):
        assert 0 <= end["direct"] < DELAY_MS  # a small message costs well under the delay
        assert end["overhead_us"] > 0 and end["overhead_us"] == sender["overhead_us"]
    # every send sleeps DELAY_MS: the sender pays it (the sleep is its wall time), the receiver,
    # whose message is already there when it asks, does not
    assert sender["slow"] >= 0.9 * DELAY_MS
    assert receiver["slow"] < 0.5 * DELAY_MS
    # a piece of work that messages slow by BESIDE_MS (one send and one receive at each end per
    # piece): BESIDE_MS / 2 per message and end, the same for both ends; one they do not, ~0
    for end in (sender, receiver):
        assert end["traffic_slow_ms"] == pytest.approx(BESIDE_MS / 2, rel=0.25)
        assert end["traffic_slow_ms"] == sender["traffic_slow_ms"]
        assert 0 <= end["traffic_plain_ms"] < 0.25 * BESIDE_MS
