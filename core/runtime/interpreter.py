"""Runs a rank's lowered actions: a table from op to handler, receives posted ahead of time,
each action's start and end recorded, and on failure the whole action grid with the failing
action marked."""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable, Sequence

import torch

from core.action import CHANNEL, RECV_OPS, SEND_OPS, Action, Op, format_grid, peer_stage
from core.metrics import TimelineRecord
from core.runtime.transport import Transport

Handler = Callable[[Action], None]
# where a received message goes in the stage's store: activations are inputs, gradients are
# the gradients of this stage's outputs
RECEIVED_AS = {"TF": "in:TF", "SF": "in:SF", "SB": "grad"}


class StatusFile:
    """One line per rank saying which step and action it is on, for the launcher's failure
    report (``TSPIPE_STATUS_DIR``, set by ``core.launch``); nothing without the variable."""

    def __init__(self, fd: int | None) -> None:
        self.fd = fd

    @classmethod
    def open(cls, rank: int) -> StatusFile:
        folder = os.environ.get("TSPIPE_STATUS_DIR")
        if not folder:
            return cls(None)
        return cls(os.open(os.path.join(folder, f"rank{rank}"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644))

    def write(self, step: int, action: Action) -> None:
        if self.fd is not None:
            os.pwrite(self.fd, f"step {step} action {action}".ljust(64).encode(), 0)


class Interpreter:
    """Executes actions on one rank.

    Args:
        compute: handler of each compute op (``TF``, ``SF``, ``LOSS``, ``SB``, ``OPT``).
        store: the stage's store, which receives fill and sends empty (see ``core.runtime.stage``).
        transport: the network to the other ranks.
        rank_of: the rank a stage runs on.
        rank: this rank.
        device: synchronised before each record ends on CUDA.
        record: record every compute action's start and end.
    """

    def __init__(
        self,
        compute: dict[Op, Handler],
        store: dict,
        transport: Transport,
        rank_of: Callable[[int], int],
        rank: int,
        device: torch.device,
        record: bool = False,
    ) -> None:
        self.store, self.transport, self.rank_of, self.rank = store, transport, rank_of, rank
        self.handlers: dict[Op, Handler] = dict(compute)
        for op in RECV_OPS:
            self.handlers[op] = self._receive
        for op in SEND_OPS:
            self.handlers[op] = self._send
        self.record = record
        self.sync = record and device.type == "cuda"
        self.device = device
        self.status = StatusFile.open(rank)
        # receives not posted yet, per (channel, peer) in message order, and the last step queued
        self._unposted: dict[tuple[str, int], deque[Action]] = {}
        self._queued_through = -1

    def _receive(self, a: Action) -> None:
        channel, src = CHANNEL[a.op], self.rank_of(peer_stage(a))
        waiting = self._unposted.get((channel, src))
        if waiting and waiting[0] == a:  # not pre-posted: received now, in its turn
            waiting.popleft()
        message = self.transport.recv(channel, src, (a.microbatch, a.part))
        self.store[(RECEIVED_AS[channel], a.batch, a.microbatch, a.part)] = message

    def _send(self, a: Action) -> None:
        channel = CHANNEL[a.op]
        message = self.store.pop((f"out:{channel}", a.batch, a.microbatch, a.part))
        self.transport.send(channel, self.rank_of(peer_stage(a)), message)

    def prepost(self, batch: int, segments: Sequence[Sequence[Action]]) -> None:
        """Post receives ahead of time: ``segments`` are this rank's segments of steps ``batch``,
        ``batch + 1``, ... (the step about to run and the ones after it). Their receives join,
        in message order per channel and peer, the ones not posted yet, and each queue is posted
        from its head up to the first message whose shape is not known yet
        (``Transport.prepost``); the rest are tried again at the next step, or received when
        their turn comes.

        Posting the next step's receives too lets a message sent while this step runs travel
        at once: gloo moves a message only once its receive is posted, so a receive posted at
        the start of its own step would leave every message sent during the step before waiting
        for that step to end.
        """
        for offset, segment in enumerate(segments):
            if batch + offset <= self._queued_through:
                continue
            self._queued_through = batch + offset
            for a in segment:
                if a.op in RECV_OPS:
                    key = (CHANNEL[a.op], self.rank_of(peer_stage(a)))
                    self._unposted.setdefault(key, deque()).append(a)
        for (channel, src), waiting in self._unposted.items():
            while waiting and self.transport.prepost(channel, src, (waiting[0].microbatch, waiting[0].part)):
                waiting.popleft()

    def run(
        self,
        segment: Sequence[Action],
        step: int,
        t0_s: float,
        records: list[TimelineRecord],
        grid: Callable[[], list[list[Action]]],
    ) -> None:
        """Run ``segment`` (the actions of step ``step``), appending records (ms from ``t0_s``).

        Raises:
            RuntimeError: when an action fails; the message names the rank and the action and
                shows every rank's actions of that step with the failing one marked.
        """
        for index, a in enumerate(segment):
            began = time.perf_counter()
            self.status.write(step, a)
            try:
                self.handlers[a.op](a)
            except Exception as err:
                text = format_grid(grid(), mark=(self.rank, index))
                raise RuntimeError(
                    f"rank {self.rank} failed at action {a} of step {step}: {err}\n{text}"
                ) from err
            if self.record and a.is_compute:
                if self.sync:
                    torch.cuda.synchronize(self.device)
                end = time.perf_counter()
                records.append(TimelineRecord.of(a, (began - t0_s) * 1e3, (end - t0_s) * 1e3))
