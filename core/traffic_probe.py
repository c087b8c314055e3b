"""What messages cost the work running beside them, on a CPU host.

Between two processes of one host a message's bytes are copied by the transport's threads and
the kernel while the stages compute, on the same cores and through the same caches: the
computation beside them runs slower. The link probe (:mod:`core.link_probe`) measures what the
calls and the transport's threads cost, not this. Timed on the synthetic pair's teacher forward
(16 samples, 2.3 ms), a 512 KiB message each way per forward slowed it by 0.1-0.2 ms at each end.

:func:`probe_traffic` times one piece of work back to back on ranks 0 and 1 at once, with and
without each rank sending a message of a given size to the other after every piece (receives
posted ahead, as a step posts them, taken after the timed pieces), in alternating blocks so slow
drifts of the machine hit both alike. The simulator charges the difference per byte at each end
(:attr:`core.link.Link.beside_gbps`).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
import torch.distributed as dist

from core.runtime.transport import Transport

CHANNEL = "TF"


def _key(x: torch.Tensor) -> tuple[str, int]:
    """The receive key of the probe's messages (their shape is fixed by the first one)."""
    return ("traffic", x.numel())


def _block(
    transport: Transport, work: Callable[[], object], peer: int | None, x, key: tuple[str, int], count: int
) -> float:
    """Median ms of ``work`` over ``count`` pieces; with a ``peer``, a message ``x`` to it after
    each piece and as many from it (receive key ``key``) posted for ahead and taken at the end."""
    if peer is not None:
        for _ in range(count):
            transport.prepost(CHANNEL, peer, key)
    dist.barrier()
    times = []
    for _ in range(count):
        start = time.perf_counter()
        work()
        times.append((time.perf_counter() - start) * 1e3)
        if peer is not None:
            transport.send(CHANNEL, peer, x)
    if peer is not None:
        for _ in range(count):
            transport.recv(CHANNEL, peer, key)
    transport.drain()
    dist.barrier()
    return statistics.median(times)


def probe_traffic(
    transport: Transport, work: Callable[[], object], size: int, count: int = 24, repeats: int = 5
) -> float:
    """Per byte of a message, the extra milliseconds ``work`` takes at each end while messages
    of ``size`` bytes flow both ways beside it: the median over ``repeats`` alternating blocks of
    ``count`` pieces of (with - without), halved (each piece saw one send and one receive at its
    end), over ``size``; at least 0. Ranks 0 and 1 measure (the mean of the two); every rank
    must call it (ranks >= 2 only wait).

    Raises:
        ValueError: for ``size``, ``count`` or ``repeats`` below 1.
    """
    if size < 1 or count < 1 or repeats < 1:
        raise ValueError(f"need size, count and repeats >= 1, got {size}, {count}, {repeats}")
    rank = dist.get_rank()
    active = rank < 2 and dist.get_world_size() >= 2
    peer = 1 - rank if active else None
    x = torch.zeros(max(size // 4, 1), device=getattr(transport, "device", None))
    key = _key(x)
    if active:  # the first message each way makes its shape known, so later receives post ahead
        transport.send(CHANNEL, peer, x)
        transport.recv(CHANNEL, peer, key)
    transport.drain()
    idle = (lambda: None) if not active else work
    idle()  # warm up
    extra = []
    for k in range(repeats):
        order = (None, peer) if k % 2 == 0 else (peer, None)
        took = {p: _block(transport, idle, p if active else None, x, key, count) for p in order}
        extra.append(took[peer] - took[None] if active else 0.0)
    mine = torch.tensor([statistics.median(extra) / 2 if active else 0.0], dtype=torch.float64)
    dist.all_reduce(mine)
    return max(float(mine) / 2, 0.0) / (x.numel() * x.element_size())
