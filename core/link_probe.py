"""Measuring the link between two stage processes: the wire (latency and bandwidth, from
ping-pongs), the CPU cost of a message's bytes at each end, and what one message costs each end
through the runtime's own transport (:func:`message_ms`), for the simulator's
:class:`~core.simulate.Link`."""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist

from core.calibration import fit_fixed_per_sample
from core.runtime.transport import Transport
from core.simulate import Link


def message_ms(transport: Transport, size: int = 8, count: int = 24, work_ms: float = 1.0) -> float:
    """What one message of ``size`` bytes costs the process at its end, sent or received
    through ``transport`` as the runtime does it (header and payload; receives posted ahead, as
    a step posts them), in milliseconds: the median of a piece of compute followed by the
    message, less the median of the compute alone, so the time the transport's own threads
    take from the compute counts too. First rank 0 sends ``count`` messages, each after a
    piece of ``work_ms``, to rank 1 waiting in its receives; then rank 1 receives ``count``,
    each after a piece longer than rank 0 takes to send one (so the message is there when it
    asks). Every rank must call it.

    Returns:
        This rank's end: rank 0 the send, rank 1 the receive (at least 0); 0 on other ranks.
    """
    rank = dist.get_rank()
    a = torch.randn(64, 64)
    reps = 1
    while True:  # how many products make a piece of about work_ms
        start = time.perf_counter()
        for _ in range(reps):
            torch.mm(a, a)
        took_ms = (time.perf_counter() - start) * 1e3
        if took_ms >= work_ms / 4 or reps >= 1 << 20:
            break
        reps *= 2
    reps = max(round(reps * work_ms / max(took_ms, 1e-6)), 1)

    def compute(n: int) -> None:
        for _ in range(n):
            torch.mm(a, a)

    def median_s(fn: Any) -> float:
        times = []
        for _ in range(count):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    x = torch.zeros(max(size // 4, 1), device=getattr(transport, "device", None))
    key = ("probe", size)

    def receive() -> None:
        transport.recv("TF", 0, key)

    def post_all() -> None:
        for _ in range(count):
            transport.prepost("TF", 0, key)

    if rank == 0:  # the first message makes its shape known, so later receives can be posted
        transport.send("TF", 1, x)
    elif rank == 1:
        receive()
    cost = alone = 0.0
    if rank == 0:
        alone = median_s(lambda: compute(reps))
    elif rank == 1:
        post_all()
    dist.barrier()
    if rank == 0:  # the sender's end
        cost = median_s(lambda: (compute(reps), transport.send("TF", 1, x))) - alone
    elif rank == 1:
        for _ in range(count):
            receive()
    transport.drain()
    sent = torch.tensor([max(cost, 0.0)], dtype=torch.float64)
    dist.broadcast(sent, 0)
    longer = reps + round(reps * (0.5 + 2 * float(sent) * 1e3 / work_ms))
    if rank == 1:
        alone = median_s(lambda: compute(longer))
        post_all()
    dist.barrier()
    if rank == 0:
        for _ in range(count):
            compute(reps)
            transport.send("TF", 1, x)
    elif rank == 1:  # the receiver's end
        cost = median_s(lambda: (compute(longer), receive())) - alone
    transport.drain()
    dist.barrier()
    return max(cost, 0.0) * 1e3 if rank < 2 else 0.0


def probe_link(
    sizes: Sequence[int] = (8, 1 << 16, 1 << 20, 1 << 22),
    repeats: int = 9,
    transport: Transport | None = None,
) -> Link:
    """Measure the link between ranks 0 and 1 over the default process group: ping-pongs of
    several message sizes, the median one-way time of each, and a ``latency + bytes /
    bandwidth`` fit through them (non-negative terms; with no measurable growth the largest
    message's time bounds the bandwidth). Every rank must call it; ranks >= 2 just wait.

    ``transport``: the runtime's own message path; the cost of a small message to each end is
    then measured through it (:func:`message_ms`, the mean of the two ends), which is what the
    runtime pays per message. Without it, that cost is the wall time of issuing a bare send and
    of taking a posted receive (the transport's header, bookkeeping and threads not counted).

    Returns:
        The :class:`Link`: latency and bandwidth of the wire, the CPU cost of handling a small
        message (at each end), and (on CPUs) the rate at which a message's bytes take
        CPU time on each end (the process's CPU time over a large message, both ends, halved).
    """
    rank = dist.get_rank()
    device = (
        torch.device("cuda", torch.cuda.current_device())
        if dist.get_backend() == "nccl"
        else torch.device("cpu")
    )

    def pingpong(size: int) -> float:
        buf = torch.zeros(max(size // 4, 1), dtype=torch.float32, device=device)
        times = []
        for _ in range(repeats):
            dist.barrier()
            start = time.perf_counter()
            if rank == 0:
                dist.send(buf, 1)
                dist.recv(buf, 1)
            elif rank == 1:
                dist.recv(buf, 0)
                dist.send(buf, 0)
            times.append((time.perf_counter() - start) / 2)
        return statistics.median(times)

    def handling(size: int, count: int = 16) -> tuple[float, float]:
        """A message's cost to its end's CPU (rank 0 sends, rank 1 receives): wall time of
        issuing ``count`` sends / taking messages already posted for, and the process's CPU
        time over the exchange (every thread, the transport's own included), per message."""
        buf = torch.zeros(max(size // 4, 1), dtype=torch.float32, device=device)
        works = [dist.irecv(torch.empty_like(buf), 0) for _ in range(count)] if rank == 1 else []
        dist.barrier()  # the receives are posted
        wall, cpu = 0.0, time.process_time()
        if rank == 0:
            start = time.perf_counter()
            sends = [dist.isend(buf, 1) for _ in range(count)]
            wall = (time.perf_counter() - start) / count
            for w in sends:
                w.wait()  # delivered into the posted receives
        if rank == 1:
            start = time.perf_counter()
            for w in works:
                w.wait()
            wall = (time.perf_counter() - start) / count
        cpu = (time.process_time() - cpu) / count
        dist.barrier()
        return wall, cpu

    small = [handling(8) for _ in range(5)]
    large = [handling(sizes[-1]) for _ in range(5)]
    cpu_large = statistics.median(x[1] for x in large) - statistics.median(x[1] for x in small)
    per_message = statistics.median(x[0] for x in small)
    if transport is not None:
        per_message = statistics.median(message_ms(transport) for _ in range(3)) / 1e3
    mine = [pingpong(size) for size in sizes] + [per_message, cpu_large]
    measured = torch.tensor(mine if rank < 2 else [0.0] * len(mine), dtype=torch.float64)
    dist.all_reduce(measured)  # ranks 0 and 1 timed the same ping-pongs, and each its end's handling
    pings = [float(t) / 2 for t in measured[: len(sizes)]]
    latency, per_byte = fit_fixed_per_sample(list(sizes), pings)
    if per_byte <= 0:
        per_byte = pings[-1] / sizes[-1]
    # issue on one end + take on the other; through the transport, the mean of the two ends
    overhead = float(measured[-2]) / (2 if transport is not None else 1)
    # the bytes' CPU time, both ends together, charged to each end at half (None on a GPU, where
    # copy engines move them and the process's CPU time says nothing)
    cpu_bytes = float(measured[-1]) / 2 / sizes[-1]
    cpu_gbps = 1.0 / (cpu_bytes * 1e9) if device.type == "cpu" and cpu_bytes > 0 else None
    return Link(
        gbps=1.0 / (per_byte * 1e9), latency_us=latency * 1e6, overhead_us=overhead * 1e6, cpu_gbps=cpu_gbps
    )
