"""The link between neighbouring pipeline stages: what a message costs in flight and at each end
(the simulator's :class:`Link`; :mod:`core.link_probe`, :mod:`core.wake_probe` and
:mod:`core.traffic_probe` measure it on a CPU host)."""

from __future__ import annotations

import math
from dataclasses import dataclass

DEFAULT_LINK_GBPS = 450.0
DEFAULT_LATENCY_US = 10.0


@dataclass(frozen=True)
class Link:
    """A point-to-point link between neighbouring stages.

    Attributes:
        gbps: bandwidth in gigabytes (not bits) per second.
        latency_us: fixed cost of one message in microseconds (in flight).
        overhead_us: time a send or a receive occupies its stage (the CPU work of the transport:
            0 for a GPU link driven by copy engines; on CPUs, what the link probe measures).
        cpu_gbps: rate at which a message's bytes occupy each end's CPU besides ``overhead_us``
            (between processes of one CPU host the kernel copies every byte on both ends, on the
            cores the stages compute on); None: the bytes cost the ends nothing (copy engines).
        beside_gbps: rate at which a message's bytes slow the work running beside them at each
            end (between processes of one CPU host the copies share the cores' caches and memory
            with the computation: :func:`core.traffic_probe.probe_traffic`); None: they do not.
        wake_ms, wake_tau_ms: what a wait for a message costs the stage that waited, on top of
            the wait: ``wake_ms x (1 - exp(-wait / wake_tau_ms))`` (a CPU core left idle resumes
            slower, more so the longer it idled: :func:`core.wake_probe.probe_wake` measures
            it); 0 for a GPU link.
    """

    gbps: float = DEFAULT_LINK_GBPS
    latency_us: float = DEFAULT_LATENCY_US
    overhead_us: float = 0.0
    cpu_gbps: float | None = None
    wake_ms: float = 0.0
    wake_tau_ms: float = 1.0
    beside_gbps: float | None = None

    def __post_init__(self) -> None:
        if (
            self.gbps <= 0
            or self.latency_us < 0
            or self.overhead_us < 0
            or (self.cpu_gbps is not None and self.cpu_gbps <= 0)
            or (self.beside_gbps is not None and self.beside_gbps <= 0)
            or self.wake_ms < 0
            or self.wake_tau_ms <= 0
        ):
            raise ValueError(
                "link needs gbps > 0, latency_us >= 0, overhead_us >= 0, cpu_gbps > 0, wake_ms >= 0, "
                f"wake_tau_ms > 0 and beside_gbps > 0, got {self}"
            )

    def handling_ms(self, nbytes: float) -> float:
        """Milliseconds a message of ``nbytes`` occupies each end's stage (its handling, and
        what its bytes cost the work beside them)."""
        per_byte = sum(1.0 / (g * 1e9) for g in (self.cpu_gbps, self.beside_gbps) if g)
        return self.overhead_us / 1e3 + nbytes * per_byte * 1e3

    def transfer_ms(self, nbytes: float) -> float:
        """Milliseconds to move ``nbytes`` over the link, latency included."""
        return self.latency_us / 1e3 + nbytes / (self.gbps * 1e9) * 1e3

    def wake_penalty_ms(self, waited_ms: float) -> float:
        """Milliseconds a stage loses resuming after waiting ``waited_ms`` for a message."""
        if self.wake_ms <= 0 or waited_ms <= 0:
            return 0.0
        return self.wake_ms * (1.0 - math.exp(-waited_ms / self.wake_tau_ms))
