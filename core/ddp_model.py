"""Data parallelism's cost model: every replica runs the whole step on its share of the
mini-batch, then a ring all-reduce of the gradients (there is no action list to simulate)."""

from __future__ import annotations

from core.link import Link


def ring_allreduce_ms(nbytes: float, replicas: int, link: Link) -> float:
    """A ring all-reduce of ``nbytes`` over ``replicas`` ranks: ``2 (R - 1) / R x nbytes`` over
    the link and ``2 (R - 1)`` message latencies (0 for one rank)."""
    ring = 2 * (replicas - 1) / replicas
    return ring * nbytes / (link.gbps * 1e9) * 1e3 + 2 * (replicas - 1) * link.latency_us / 1e3


def ddp_step(
    forward_ms: float,
    backward_ms: float,
    other_ms: float,
    grad_bytes: float,
    replicas: int,
    link: Link,
    overlap: float = 1.0,
) -> tuple[float, float]:
    """Data parallelism: one replica's step and its gradient all-reduce (the one DDP model).

    Every replica runs the whole teacher and student on its share of the mini-batch
    (``forward_ms + backward_ms + other_ms``, ``other_ms`` being the loss, optimizer and teacher
    update), and a ring all-reduce moves ``2 (R - 1) / R x grad_bytes`` over the link with
    ``2 (R - 1)`` message latencies. A share ``overlap`` of the all-reduce hides behind the
    backward (1: DDP's bucketed best case, used for GPU calibrations; 0: none, used on CPU,
    where gloo's all-reduce competes for the same cores).

    Returns:
        ``(step_ms, allreduce_ms)``.

    Raises:
        ValueError: for fewer than 2 replicas or an overlap outside [0, 1].
    """
    if replicas < 2:
        raise ValueError(f"ddp needs at least 2 replicas, got {replicas}")
    if not 0.0 <= overlap <= 1.0:
        raise ValueError(f"overlap must lie in [0, 1], got {overlap}")
    allreduce = ring_allreduce_ms(grad_bytes, replicas, link)
    hidden = min(overlap * allreduce, backward_ms)
    return forward_ms + backward_ms + allreduce - hidden + other_ms, allreduce
