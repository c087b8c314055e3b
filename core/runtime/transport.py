"""How stages talk: the :class:`Transport` protocol, its ``torch.distributed`` implementation,
and an in-process one for tests (one thread per stage).

The runtime sends and receives through a transport only, so a stage can run over
``torch.distributed`` (gloo on CPU, NCCL on GPUs) or inside one process with a fake network.

Point-to-point messages of tensors and dicts of tensors, one process group per message kind.

Teacher activations, student activations and student gradients each travel on their own process
group over the same ranks (NCCL ignores tags), so a message of one kind is never matched against
another. A message is a fixed-size int64 header (dtypes, shapes, dict keys) followed by its
tensors; receives block until the data is there, sends stay pending until the peer takes them
(a gloo send completes only once the peer posts its receive) and are drained at shutdown.

Message shapes repeat from step to step, so once a message of a given kind and unit has been
seen, its receive can be posted ahead of time (:meth:`TorchTransport.prepost`), header and payload
together: the transfer then overlaps computation instead of costing two round trips when the
data is needed. The interpreter posts each step's receives while the step before it runs
(``Interpreter.prepost``), so a message sent a step early moves as soon as it is sent. A message whose header differs from the remembered one is an error (batch
sizes must stay fixed; use ``drop_last``).
"""

from __future__ import annotations

import datetime as _dt
import queue
import threading
from collections import deque
from typing import Any, Protocol

import torch
import torch.distributed as dist

from core.action import CHANNELS
from core.task import Structure, map_structure, rebuild, tensors

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
REDUCE_OPS = ("sum", "max")


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


class Transport(Protocol):
    """What the runtime needs of the network between its stages.

    Attributes:
        rank: this stage's rank.
        world: number of ranks.
    """

    rank: int
    world: int

    def send(self, channel: str, dst: int, x: Structure) -> None:
        """Start sending ``x`` to rank ``dst`` on ``channel``; returns at once."""

    def prepost(self, channel: str, src: int, key: Any) -> bool:
        """Post a receive ahead of time if its shape is known; True if posted."""

    def recv(self, channel: str, src: int, key: Any = None) -> Structure:
        """The next ``channel`` message from ``src`` (blocks until it is there)."""

    def all_reduce(self, tensor: torch.Tensor, op: str = "sum") -> None:
        """Reduce ``tensor`` in place over every rank (``sum`` or ``max``)."""

    def barrier(self) -> None:
        """Wait until every rank gets here."""

    def drain(self) -> None:
        """Wait for every pending send."""

    def close(self) -> None:
        """Drain and release what the transport holds."""


class Solo:
    """The transport of a single process: nobody to talk to, reductions are the identity."""

    rank, world = 0, 1

    def send(self, channel: str, dst: int, x: Structure) -> None:
        raise RuntimeError("a single process has no peer to send to")

    def prepost(self, channel: str, src: int, key: Any) -> bool:
        return False

    def recv(self, channel: str, src: int, key: Any = None) -> Structure:
        raise RuntimeError("a single process has no peer to receive from")

    def all_reduce(self, tensor: torch.Tensor, op: str = "sum") -> None:
        """Nothing to reduce with."""

    def barrier(self) -> None:
        """Nothing to wait for."""

    def drain(self) -> None:
        """Nothing pending."""

    def close(self) -> None:
        """Nothing held."""


class Collectives:
    """Reductions over ``group`` (default: every rank of ``torch.distributed``'s default group)
    and barriers over every rank of the job (what runners that exchange no messages of their own
    need of a transport)."""

    def __init__(self, group: Any = None) -> None:
        self.group = group
        self.rank, self.world = dist.get_rank(group), dist.get_world_size(group)

    def all_reduce(self, tensor: torch.Tensor, op: str = "sum") -> None:
        """Reduce ``tensor`` in place over every rank of the group."""
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM, group=self.group)

    def barrier(self) -> None:
        dist.barrier()


class TorchTransport(Collectives):
    """The three message groups of a pipeline over ``torch.distributed`` and the sends still in
    flight; reductions over the pipeline's ranks, barriers over the job's.

    Args:
        device: where received tensors live (CUDA for NCCL, CPU for gloo).
        timeout_s: how long a receive may wait before the run is declared stuck.
        pipelines: with data-parallel replicas, the global ranks of every replica's stages
            (``pipelines[d][p]``, see ``core.runtime.replicas``); ``rank`` and ``world`` are then
            this rank's stage and the stage count, and messages stay inside its replica.
        group: the process group of this rank's pipeline (with ``pipelines``).
    """

    def __init__(
        self,
        device: torch.device,
        timeout_s: float = 300.0,
        pipelines: list[list[int]] | None = None,
        group: Any = None,
    ) -> None:
        super().__init__(group)
        self.device = device
        self.timeout = _dt.timedelta(seconds=timeout_s)
        pipelines = pipelines or [list(range(dist.get_world_size()))]
        self.ranks = next(r for r in pipelines if dist.get_rank() in r)
        if len(pipelines) == 1:
            self.groups = {name: dist.new_group(self.ranks) for name in CHANNELS}
        else:  # every rank creates every replica's groups, in the same order
            self.groups = {name: dist.new_subgroups_by_enumeration(pipelines)[0] for name in CHANNELS}
        self._pending: list[tuple[list[Any], list[torch.Tensor]]] = []
        self._headers: dict[tuple[str, Any], list[int]] = {}
        self._posted: dict[tuple[str, int], deque] = {}

    def send(self, channel: str, dst: int, x: Structure) -> None:
        """Start sending ``x`` to rank ``dst``; returns at once."""
        group = self.groups[channel]
        header = torch.tensor(encode_header(x), dtype=torch.int64, device=self.device)
        payload = [header] + [t.detach().contiguous() for t in tensors(x)]
        works = [dist.isend(t, self.ranks[dst], group=group) for t in payload]
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
        buffers = [self._buffer(shape, dtype) for _, dtype, shape in specs]
        works = [dist.irecv(t, self.ranks[src], group=group) for t in [head, *buffers]]
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
            self._wait(dist.irecv(head, self.ranks[src], group=group), channel, src)
            header = head.tolist()
            is_dict, specs = decode_header(header)
            buffers = [self._buffer(shape, dtype) for _, dtype, shape in specs]
            works = [dist.irecv(t, self.ranks[src], group=group) for t in buffers]
            for work in works:
                self._wait(work, channel, src)
            if key is not None:
                self._headers[(channel, key)] = header
        if is_dict:
            return {name: t for (name, _, _), t in zip(specs, buffers)}
        return rebuild(buffers[0], buffers)

    def _buffer(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """An empty tensor a message is received into."""
        return torch.empty(shape, dtype=dtype, device=self.device)

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


class LocalNetwork:
    """An in-process network for ``world`` stages run as threads of one process: a queue per
    channel and pair of ranks, and a barrier for reductions. Tests run whole pipelines this way
    without process groups; :meth:`transport` gives each stage its end.

    Args:
        world: number of stages.
        timeout_s: how long a receive or a reduction may wait.
    """

    def __init__(self, world: int, timeout_s: float = 60.0) -> None:
        if world < 1:
            raise ValueError(f"world must be >= 1, got {world}")
        self.world = world
        self.timeout_s = timeout_s
        self._queues: dict[tuple[str, int, int], queue.Queue] = {}
        self._lock = threading.Lock()
        self._barrier = threading.Barrier(world, timeout=timeout_s)
        self._slots: list[torch.Tensor | None] = [None] * world

    def _queue(self, channel: str, src: int, dst: int) -> queue.Queue:
        with self._lock:
            return self._queues.setdefault((channel, src, dst), queue.Queue())

    def transport(self, rank: int) -> LocalTransport:
        """The transport of stage ``rank``."""
        return LocalTransport(self, rank)


class LocalTransport:
    """One stage's end of a :class:`LocalNetwork`. Messages are copies (the receiver never
    shares storage or a graph with the sender), delivered in order per channel and pair."""

    def __init__(self, network: LocalNetwork, rank: int) -> None:
        self.network, self.rank, self.world = network, rank, network.world

    def send(self, channel: str, dst: int, x: Structure) -> None:
        self.network._queue(channel, self.rank, dst).put(map_structure(lambda t: t.detach().clone(), x))

    def prepost(self, channel: str, src: int, key: Any) -> bool:
        return False

    def recv(self, channel: str, src: int, key: Any = None) -> Structure:
        try:
            return self.network._queue(channel, src, self.rank).get(timeout=self.network.timeout_s)
        except queue.Empty:
            raise RuntimeError(
                f"{channel} message from rank {src} did not arrive within {self.network.timeout_s:.0f} s"
            ) from None

    def all_reduce(self, tensor: torch.Tensor, op: str = "sum") -> None:
        if op not in REDUCE_OPS:
            raise ValueError(f"op must be one of {REDUCE_OPS}, got {op!r}")
        net = self.network
        net._slots[self.rank] = tensor.detach().clone()
        net._barrier.wait()
        stacked = torch.stack([t.to(tensor.device) for t in net._slots])
        result = stacked.sum(dim=0) if op == "sum" else stacked.amax(dim=0)
        net._barrier.wait()  # everyone has read the slots before they are reused
        tensor.copy_(result)

    def barrier(self) -> None:
        self.network._barrier.wait()

    def drain(self) -> None:
        """Sends complete at once."""

    def close(self) -> None:
        """Nothing held."""
