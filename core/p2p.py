"""Point-to-point messages of tensors and dicts of tensors, one process group per message kind.

Teacher activations, student activations and student gradients each travel on their own process
group over the same ranks (NCCL ignores tags), so a message of one kind is never matched against
another. A message is a fixed-size int64 header (dtypes, shapes, dict keys) followed by its
tensors; receives block until the data is there, sends stay pending until the peer takes them
(a gloo send completes only once the peer posts its receive) and are drained at shutdown.

Message shapes repeat from step to step, so once a message of a given kind and unit has been
seen, its receive can be posted ahead of time (:meth:`Channels.prepost`), header and payload
together: the transfer then overlaps computation instead of costing two round trips when the
data is needed. A message whose header differs from the remembered one is an error (batch
sizes must stay fixed; use ``drop_last``).
"""

from __future__ import annotations

import datetime as _dt
from collections import deque
from typing import Any

import torch
import torch.distributed as dist

from core.task import Structure, rebuild, tensors

HEADER = 512
_MAGIC = 0x7E5
_DTYPES = [
    torch.float32,
    torch.float64,
    torch.float16,
    torch.bfloat16,
    torch.int64,
    torch.int32,
    torch.int16,
    torch.int8,
    torch.uint8,
    torch.bool,
]
_CODE = {dtype: i for i, dtype in enumerate(_DTYPES)}
CHANNELS = ("TF", "SF", "SB")


def encode_header(x: Structure) -> list[int]:
    """Header integers describing a structure: magic, kind, count, then per tensor its dtype,
    rank, shape and (for dicts) key."""
    is_dict = isinstance(x, dict)
    keys = sorted(x) if is_dict else [""]
    values = tensors(x)
    out = [_MAGIC, int(is_dict), len(values)]
    for key, t in zip(keys, values):
        if t.dtype not in _CODE:
            raise TypeError(f"cannot send dtype {t.dtype}; supported: {_DTYPES}")
        encoded = list(key.encode())
        out += [_CODE[t.dtype], t.dim(), *t.shape, len(encoded), *encoded]
    if len(out) > HEADER:
        raise ValueError(f"message structure too large for the {HEADER}-integer header: {len(out)}")
    return out + [0] * (HEADER - len(out))


def decode_header(header: list[int]) -> tuple[bool, list[tuple[str, torch.dtype, tuple[int, ...]]]]:
    """Inverse of :func:`encode_header`: (is_dict, [(key, dtype, shape), ...])."""
    if header[0] != _MAGIC:
        raise RuntimeError(
            f"corrupt message header (magic {header[0]:#x}); sends and receives are out of step"
        )
    is_dict, count = bool(header[1]), header[2]
    pos, specs = 3, []
    for _ in range(count):
        dtype, ndim = _DTYPES[header[pos]], header[pos + 1]
        shape = tuple(header[pos + 2 : pos + 2 + ndim])
        pos += 2 + ndim
        klen = header[pos]
        key = bytes(header[pos + 1 : pos + 1 + klen]).decode()
        pos += 1 + klen
        specs.append((key, dtype, shape))
    return is_dict, specs


class Channels:
    """The three message groups of a pipeline and the sends still in flight.

    Args:
        device: where received tensors live (CUDA for NCCL, CPU for gloo).
        timeout_s: how long a receive may wait before the run is declared stuck.
    """

    def __init__(self, device: torch.device, timeout_s: float = 300.0) -> None:
        self.device = device
        self.timeout = _dt.timedelta(seconds=timeout_s)
        ranks = list(range(dist.get_world_size()))
        self.groups = {name: dist.new_group(ranks) for name in CHANNELS}
        self._pending: list[tuple[list[Any], list[torch.Tensor]]] = []
        self._headers: dict[tuple[str, Any], list[int]] = {}
        self._posted: dict[tuple[str, int], deque] = {}

    def send(self, channel: str, dst: int, x: Structure) -> None:
        """Start sending ``x`` to rank ``dst``; returns at once."""
        group = self.groups[channel]
        header = torch.tensor(encode_header(x), dtype=torch.int64, device=self.device)
        payload = [header] + [t.detach().contiguous() for t in tensors(x)]
        works = [dist.isend(t, dst, group=group) for t in payload]
        self._pending.append((works, payload))
        self.poll()

    def prepost(self, channel: str, src: int, key: Any) -> bool:
        """Post the receive of the next ``channel`` message from ``src`` now, if a message with
        this ``key`` (e.g. unit and piece) was received before. Receives of one channel must be
        pre-posted in the order the messages come, and not after an unknown one.

        Returns:
            True if posted; False if the shape is unknown (receive it with :meth:`recv`).
        """
        header = self._headers.get((channel, key))
        if header is None:
            return False
        group = self.groups[channel]
        head = torch.empty(HEADER, dtype=torch.int64, device=self.device)
        _, specs = decode_header(header)
        buffers = [torch.empty(shape, dtype=dtype, device=self.device) for _, dtype, shape in specs]
        works = [dist.irecv(t, src, group=group) for t in [head, *buffers]]
        self._posted.setdefault((channel, src), deque()).append((key, head, buffers, works))
        return True

    def recv(self, channel: str, src: int, key: Any = None) -> Structure:
        """Receive the next ``channel`` message from rank ``src`` (blocks until it is there).

        Args:
            channel: ``"TF"``, ``"SF"`` or ``"SB"``.
            src: sending rank.
            key: what the message is (unit, piece); its shape is remembered under this key so
                later receives can be pre-posted.

        Raises:
            RuntimeError: on a timeout or a broken peer, naming the channel and the peer; or if a
                pre-posted message arrives with another shape than before.
        """
        queue = self._posted.get((channel, src))
        if queue:
            posted_key, head, buffers, works = queue.popleft()
            if posted_key != key:
                raise RuntimeError(f"{channel} receive for {key} found the pre-posted one for {posted_key}")
            for work in works:
                self._wait(work, channel, src)
            header = head.tolist()
            if header != self._headers[(channel, key)]:
                raise RuntimeError(
                    f"{channel} message {key} from rank {src} changed shape between steps; "
                    "keep batch sizes fixed (drop_last=True)"
                )
            is_dict, specs = decode_header(header)
        else:
            group = self.groups[channel]
            head = torch.empty(HEADER, dtype=torch.int64, device=self.device)
            self._wait(dist.irecv(head, src, group=group), channel, src)
            header = head.tolist()
            is_dict, specs = decode_header(header)
            buffers = [torch.empty(shape, dtype=dtype, device=self.device) for _, dtype, shape in specs]
            works = [dist.irecv(t, src, group=group) for t in buffers]
            for work in works:
                self._wait(work, channel, src)
            if key is not None:
                self._headers[(channel, key)] = header
        if is_dict:
            return {name: t for (name, _, _), t in zip(specs, buffers)}
        return rebuild(buffers[0], buffers)

    def _wait(self, work: Any, channel: str, peer: int) -> None:
        try:
            work.wait(self.timeout)
        except Exception as err:  # gloo and NCCL raise different types
            raise RuntimeError(
                f"{channel} message from rank {peer} did not arrive within {self.timeout.total_seconds():.0f} s "
                f"or the peer failed: {err}"
            ) from err

    def poll(self) -> None:
        """Forget sends that completed (surfacing their errors)."""
        still = []
        for works, payload in self._pending:
            if all(w.is_completed() for w in works):
                for w in works:
                    w.wait()
            else:
                still.append((works, payload))
        self._pending = still

    def drain(self) -> None:
        """Wait for every pending send."""
        for works, _ in self._pending:
            for w in works:
                w.wait(self.timeout)
        self._pending = []

    def close(self) -> None:
        """Drain and destroy the groups."""
        self.drain()
        for group in self.groups.values():
            dist.destroy_process_group(group)
        self.groups = {}
