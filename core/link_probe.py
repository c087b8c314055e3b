"""Measuring the link between two stage processes: the wire (latency and bandwidth, from
ping-pongs), the CPU cost of a message's bytes at each end, and what one message costs each end
through the runtime's own transport (:func:`message_ms`), for the simulator's
:class:`~core.link.Link`."""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist

from core.calibration import fit_fixed_per_sample
from core.link import Link
from core.runtime.transport import Transport


def message_ms(transport: Transport, size: int = 8, count: int = 24) -> float:
    """What one message of ``size`` bytes costs the process at its end, sent or received
    through ``transport`` as the runtime does it (header and payload; receives posted ahead, as
    a step posts them), in milliseconds: the median wall time of the calls the stage makes
    (the send; the pre-post and the receive of a message already there), plus the CPU time the
    process's other threads (the transport's own) spend per message, which on a busy machine
    is taken from the compute. CPU time, not wall time, so load from elsewhere on the machine
    does not count. Rank 0 sends ``count`` messages to rank 1, which has posted their
    receives and takes them once all were sent. Every rank must call it.

    Returns:
        This rank's end: rank 0 the send, rank 1 the receive (at least 0); 0 on other ranks.
    """
    rank = dist.get_rank()
    x = torch.zeros(max(size // 4, 1), device=getattr(transport, "device", None))
    key = ("probe", size)

    def timed(fn: Any) -> float:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    def background() -> float:  # CPU time of every thread but this one
        return time.process_time() - time.thread_time()

    def exchange(messages: int) -> tuple[float, float]:
        """``messages`` sent and received; (median wall of this end's calls, the other threads'
        CPU time over the exchange)."""
        calls = [0.0]
        cpu = background()
        if rank == 1:
            posts = [timed(lambda: transport.prepost("TF", 0, key)) for _ in range(messages)]
        dist.barrier()  # the receives are posted
        if rank == 0:
            calls = [timed(lambda: transport.send("TF", 1, x)) for _ in range(messages)] or calls
        transport.drain()  # every send delivered into a posted receive
        dist.barrier()
        if rank == 1 and messages:
            takes = [timed(lambda: transport.recv("TF", 0, key)) for _ in range(messages)]
            calls = [p + t for p, t in zip(posts, takes)]
        dist.barrier()
        return statistics.median(calls), background() - cpu

    if rank == 0:  # the first message makes its shape known, so later receives can be posted
        transport.send("TF", 1, x)
    elif rank == 1:
        transport.recv("TF", 0, key)
    transport.drain()
    _, idle = exchange(0)  # the barriers' own background work, without messages
    call, cpu = exchange(count)
    cost = call + max(cpu - idle, 0.0) / count
    return cost * 1e3 if rank < 2 else 0.0


def probe_link(
    sizes: Sequence[int] = (8, 1 << 16, 1 << 20, 1 << 22),
    repeats: int = 9,
    transport: Transport | None = None,
) -> Link:
    """Measure the link between ranks 0 and 1 over the default process group: ping-pongs of
    several message sizes, the median one-way time of each, and a ``latency + bytes /
    bandwidth`` fit through them (non-negative terms; with no measurable growth the largest
    message's time bounds the bandwidth). Every rank must call it; ranks >= 2 just wait.

    ``transport``: the runtime's own message path; the cost of a message to each end is then
    measured through it (:func:`message_ms`, the mean of the two ends) at 8 bytes (the
    per-message cost) and at 1 MiB (the growth with size gives the bytes' CPU rate), which is
    what the runtime pays per message. Without it, that cost is the wall time of issuing a bare
    send and of taking a posted receive, and the bytes' rate the process CPU time of bare
    sends (the transport's header, buffers, bookkeeping and threads not counted).

    Returns:
        The :class:`Link`: latency and bandwidth of the wire, the CPU cost of handling a small
        message (at each end), and (on CPUs) the rate at which a message's bytes take
        CPU time on each end (through the transport: the growth of its cost from 8 bytes to
        1 MiB; bare: the process's CPU time over a large message, both ends, halved).
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

    if transport is not None:  # each end's cost through the runtime's transport, small and large
        big = 1 << 20
        small_ms = statistics.median(message_ms(transport) for _ in range(7))
        big_ms = statistics.median(message_ms(transport, big) for _ in range(7))
        per_message = small_ms / 1e3
        cpu_large = max(big_ms - small_ms, 0.0) / 1e3 * sizes[-1] / big  # as at the largest size
    else:  # bare sends and receives
        small = [handling(8) for _ in range(5)]
        large = [handling(sizes[-1]) for _ in range(5)]
        cpu_large = statistics.median(x[1] for x in large) - statistics.median(x[1] for x in small)
        per_message = statistics.median(x[0] for x in small)
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
