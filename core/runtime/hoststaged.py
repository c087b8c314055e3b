"""Pipeline messages staged through host memory, for ranks that share one GPU.

NCCL refuses two ranks on one device, so several processes on one GPU talk over gloo instead:
every tensor a stage sends is copied from its device into (pinned, when CUDA is there) host
memory, travels over gloo, lands in a host buffer and is moved to the receiver's device
(``non_blocking`` from pinned memory). Reductions go through the host the same way. On CPU the
same path runs with plain copies, so it is tested there.

This is a correctness path, not a fast one: every message crosses PCIe twice and the ranks
share one GPU's compute, so step times measured in this mode are not pipeline throughput.

:func:`choose_transport` resolves ``PipelineConfig.transport`` (``auto``: host-staged when
CUDA ranks outnumber the visible GPUs).
"""

from __future__ import annotations

from typing import Any

import torch

from core.runtime.transport import Collectives, TorchTransport
from core.task import Structure, map_structure


def choose_transport(choice: str, device: str, world: int) -> str:
    """``direct`` or ``host`` for a ``PipelineConfig.transport`` value.

    Args:
        choice: ``auto``, ``direct`` or ``host``.
        device: ``cpu`` or ``cuda``.
        world: number of ranks.

    Raises:
        ValueError: for an unknown choice.
    """
    if choice in ("direct", "host"):
        return choice
    if choice != "auto":
        raise ValueError(f"transport must be auto, direct or host, got {choice!r}")
    if device == "cuda" and world > torch.cuda.device_count():
        return "host"
    return "direct"


class HostStagedTransport(TorchTransport):
    """:class:`TorchTransport` over gloo with every tensor staged through host memory: the same
    channels, headers, pre-posted receives, timeouts and structures; only where tensors live
    differs.

    Args:
        device: this rank's device (where received tensors are delivered).
        timeout_s: how long a receive may wait before the run is declared stuck.
        pipelines, group: data-parallel replicas, as for :class:`TorchTransport`.
    """

    def __init__(
        self,
        device: torch.device,
        timeout_s: float = 300.0,
        pipelines: list[list[int]] | None = None,
        group: Any = None,
    ) -> None:
        super().__init__(torch.device("cpu"), timeout_s, pipelines, group)
        self.target = torch.device(device)
        self.pin = torch.cuda.is_available()

    def _buffer(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        return torch.empty(shape, dtype=dtype, pin_memory=self.pin)

    def _to_host(self, x: Structure) -> Structure:
        """Host copies of ``x``'s tensors, complete when this returns (gloo reads them from
        another thread)."""

        def stage(t: torch.Tensor) -> torch.Tensor:
            host = self._buffer(tuple(t.shape), t.dtype)
            host.copy_(t.detach(), non_blocking=t.device.type == "cuda")
            return host

        out = map_structure(stage, x)
        if self.target.type == "cuda":
            torch.cuda.current_stream(self.target).synchronize()
        return out

    def _to_target(self, x: Structure) -> Structure:
        return map_structure(lambda t: t.to(self.target, non_blocking=self.pin), x)

    def send(self, channel: str, dst: int, x: Structure) -> None:
        """Copy ``x`` to host memory and start sending it to rank ``dst``; returns at once."""
        super().send(channel, dst, self._to_host(x))

    def recv(self, channel: str, src: int, key: Any = None) -> Structure:
        """Receive into host buffers, then move to this rank's device."""
        return self._to_target(super().recv(channel, src, key))

    def all_reduce(self, tensor: torch.Tensor, op: str = "sum") -> None:
        """Reduce ``tensor`` in place over every rank, through a host copy."""
        host = self._to_host(tensor)
        Collectives.all_reduce(self, host, op)
        tensor.copy_(host)
