"""The interpreter's receives posted ahead of time: in message order per channel and peer, never
past a message whose shape is unknown, and a step ahead once shapes are known."""

from __future__ import annotations

from collections import deque

import pytest
import torch

from core.action import RECV_OPS, Op
from core.runtime.interpreter import Interpreter
from core.schedules.build import Program


class Store(dict):
    """A stage store whose sends find nothing to send (the compute here does nothing)."""

    def pop(self, key, *default):
        return super().pop(key, None)


class FakeTransport:
    """Matches posted receives to messages the way gloo does: per channel and peer, in the
    order they were posted, each message to the oldest posted receive. Shapes become known
    when a message is received."""

    def __init__(self) -> None:
        self.known: set[tuple[str, object]] = set()
        self.posted: dict[tuple[str, int], deque] = {}
        self.step = -1
        # per receive: the step it ran in, and the step its receive was posted in (None: not posted)
        self.received: list[tuple[int, int | None]] = []

    def prepost(self, channel, src, key) -> bool:
        if (channel, key) not in self.known:
            return False
        self.posted.setdefault((channel, src), deque()).append((key, self.step))
        return True

    def recv(self, channel, src, key=None):
        queue = self.posted.get((channel, src))
        if queue:
            got, step = queue.popleft()
            assert got == key, f"{channel} message {key} matched the receive posted for {got}"
            self.received.append((self.step, step))
        else:
            self.known.add((channel, key))
            self.received.append((self.step, None))
        return torch.zeros(1)

    def send(self, channel, dst, x) -> None:
        pass


def run_rank(program: Program, rank: int) -> FakeTransport:
    transport = FakeTransport()
    compute = {op: (lambda a: None) for op in (Op.TF, Op.SF, Op.LOSS, Op.SB, Op.SW, Op.OPT)}
    interpreter = Interpreter(
        compute, Store(), transport, program.template.rank_of, rank, torch.device("cpu")
    )
    end = program.batches().stop
    for b in program.batches():
        transport.step = b
        ahead = [program.segment(rank, b + 1)] if b + 1 < end else []
        interpreter.prepost(b, [program.segment(rank, b), *ahead])
        interpreter.run(program.segment(rank, b), b, 0.0, [], lambda: [])
    return transport


@pytest.mark.parametrize("name", ["gpipe", "1f1b", "tspipe", "tspipe-zb", "zb", "tspipe-zbh1"])
@pytest.mark.parametrize("stages", [2, 3])
def test_every_receive_gets_its_own_message(name: str, stages: int) -> None:
    program = Program.build(name, stages, 2, "ema", steps=5, views=2)
    for rank in range(stages):
        transport = run_rank(program, rank)  # the fake asserts each match
        expected = [a for b in program.batches() for a in program.segment(rank, b) if a.op in RECV_OPS]
        assert len(transport.received) == len(expected)
        assert all(not q for q in transport.posted.values()), "a posted receive was left over"


def test_the_next_steps_receives_are_posted_before_it_begins() -> None:
    """Once shapes are known, a step's receives are posted while the step before it runs, so
    a message sent during that step need not wait for its receiver's step to begin."""
    for rank in (0, 1):
        transport = run_rank(Program.build("tspipe", 2, 2, "ema", steps=6, views=2), rank)
        later = [posted for step, posted in transport.received if step >= 2]
        assert later and all(posted == step - 1 for step, posted in transport.received if step >= 2), (
            transport.received
        )
