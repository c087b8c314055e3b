"""Start one process per rank on this machine, or join a torchrun job; stop everything if one fails.

Locally::

    python -m core.launch --nproc 4 methods.byol.train --schedule tspipe --stages 4

spawns 4 processes of ``python -m methods.byol.train ...`` with ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and a free ``MASTER_PORT`` set, which is exactly what
``torchrun --nproc-per-node 4 -m methods.byol.train ...`` sets, so the module runs unchanged under
torchrun on a cluster. No fixed ports, no /etc/hosts edits, no ulimit changes. If any rank exits
non-zero, the others are stopped and the launcher exits non-zero, printing that rank's last output
(its traceback, and for the runtime the action grid with the failing action marked).
"""

from __future__ import annotations

import argparse
import collections
import datetime as _dt
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

GRACE_S = 5.0  # after a failure, how long the other ranks get to exit before SIGKILL
_TAIL_LINES = 60


@dataclass(frozen=True)
class Rank:
    """Where this process stands in the job.

    Attributes:
        rank: global rank.
        world: world size.
        local_rank: rank on this machine.
        device: this rank's device.
    """

    rank: int
    world: int
    local_rank: int
    device: torch.device


def init_distributed(device: str = "cpu", timeout_s: float = 300.0, transport: str = "auto") -> Rank:
    """Join the job described by the environment (``core.launch`` or ``torchrun``).

    Without ``WORLD_SIZE`` in the environment this is a single process and no process group
    is created. gloo on CPU; NCCL with one GPU per rank (``cuda:LOCAL_RANK``) on CUDA; with the
    host-staged transport (``transport`` ``host``, or ``auto`` when the ranks outnumber the
    GPUs, see ``core.runtime.hoststaged``) gloo on CUDA too, rank on ``cuda:LOCAL_RANK % GPUs``.

    Returns:
        This process's :class:`Rank`.

    Raises:
        RuntimeError: if CUDA is asked for but missing, or two ranks would share a GPU over NCCL.
    """
    from core.runtime.hoststaged import choose_transport

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    staged = choose_transport(transport, device, world) == "host"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("--device cuda but CUDA is not available; use --device cpu")
        count = torch.cuda.device_count()
        if not staged and local_rank >= count:
            raise RuntimeError(
                f"local rank {local_rank} has no GPU of its own ({count} visible); "
                "NCCL refuses two ranks on one GPU: start at most one process per GPU, "
                "or use pipeline.transport=host"
            )
        dev = torch.device("cuda", local_rank % count)
        torch.cuda.set_device(dev)
    else:
        dev = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        timeout = _dt.timedelta(seconds=timeout_s)
        store = _attempt_store(world, timeout)
        if dev.type == "cuda" and not staged:
            dist.init_process_group(
                "nccl", timeout=timeout, device_id=dev, store=store, rank=rank, world_size=world
            )
        else:
            dist.init_process_group("gloo", timeout=timeout, store=store, rank=rank, world_size=world)
    _configure_logging(rank)
    return Rank(rank, world, local_rank, dev)


def _attempt_store(world: int, timeout: _dt.timedelta) -> dist.Store | None:
    """Under torchrun's agent store, the job's store seen through a prefix of this attempt
    (``TORCHELASTIC_RESTART_COUNT``): a group torchrun restarted must not read the addresses
    the dead attempt's ranks left in the store, or connecting to them is refused. None
    elsewhere (``init_process_group`` reads the environment as usual)."""
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    store = dist.TCPStore(
        os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world, is_master=False, timeout=timeout
    )
    return dist.PrefixStore(f"tspipe/attempt{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)


def _configure_logging(rank: int) -> None:
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(f"[rank {rank}] %(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
        root.setLevel(os.environ.get("LOGLEVEL", "WARNING"))


def in_launched_job() -> bool:
    """True inside a process started by this launcher or torchrun."""
    return "WORLD_SIZE" in os.environ


def _pump(stream, sink, tail: collections.deque) -> None:
    """Forward a child's output to ``sink`` as it comes, keeping its last lines."""
    line = b""
    for chunk in iter(lambda: stream.read1(4096), b""):
        sink.buffer.write(chunk)
        sink.flush()
        line += chunk
        *done, line = line.split(b"\n")
        tail.extend(done)
    if line:
        tail.append(line)


def launch(nproc: int, argv: Sequence[str], env: dict[str, str] | None = None) -> int:
    """Run ``python -m argv[0] argv[1:]`` as ``nproc`` ranks on this machine (through
    :mod:`core.rank`).

    Returns:
        0 if every rank exits 0; otherwise the first failing rank's exit code (1 if that was 0
        or a signal), after stopping the others.
    """
    if nproc < 1:
        raise ValueError(f"--nproc must be >= 1, got {nproc}")
    with tempfile.TemporaryDirectory(prefix="tspipe-status-") as status:
        return _launch(nproc, argv, env, Path(status))


def _launch(nproc: int, argv: Sequence[str], env: dict[str, str] | None, status: Path) -> int:
    # The launcher hosts the rendezvous store itself, on a port the OS picks and that stays
    # bound for the whole job (as torchrun's agent does): no window between choosing a free
    # port and a rank binding it, in which another process could take it.
    store = dist.TCPStore("127.0.0.1", 0, None, True, wait_for_workers=False)
    port = store.port
    procs, tails, pumps = [], [], []
    for rank in range(nproc):
        child_env = dict(os.environ if env is None else env)
        child_env.update(
            RANK=str(rank),
            LOCAL_RANK=str(rank),
            WORLD_SIZE=str(nproc),
            LOCAL_WORLD_SIZE=str(nproc),
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
            TORCHELASTIC_USE_AGENT_STORE="True",  # every rank is a client of the store above
            TORCHELASTIC_RESTART_COUNT="0",
            TSPIPE_STATUS_DIR=str(status),
        )
        proc = subprocess.Popen(
            [sys.executable, "-m", "core.rank", *argv],  # leaves without the teardown (core.rank)
            env=child_env,
            stderr=subprocess.PIPE,
            start_new_session=True,  # its own process group, so we can stop its children too
        )
        tail: collections.deque = collections.deque(maxlen=_TAIL_LINES)
        pump = threading.Thread(target=_pump, args=(proc.stderr, sys.stderr, tail), daemon=True)
        pump.start()
        procs.append(proc)
        tails.append(tail)
        pumps.append(pump)
    failed: tuple[int, int] | None = None
    try:
        while True:
            codes = [p.poll() for p in procs]
            bad = [(r, c) for r, c in enumerate(codes) if c not in (None, 0)]
            if bad:
                failed = bad[0]
                break
            if all(c == 0 for c in codes):
                break
            time.sleep(0.1)
    except KeyboardInterrupt:
        failed = (-1, 130)
    if failed is not None:
        _stop(procs)
    for pump in pumps:
        pump.join(timeout=2.0)
    if failed is None:
        return 0
    rank, code = failed
    if rank >= 0:
        text = b"\n".join(tails[rank]).decode(errors="replace")
        how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
        print(
            f"\n[core.launch] rank {rank} of {nproc} {how}; stopped the other ranks.\n"
            f"{_status_report(status, nproc)}Last output of rank {rank}:\n{text}",
            file=sys.stderr,
        )
    return code if code > 0 else 1


def _status_report(status: Path, nproc: int) -> str:
    """Where each rank was (``TSPIPE_STATUS_DIR`` lines) and the last checkpoint, if known."""
    lines = []
    for rank in range(nproc):
        path = status / f"rank{rank}"
        where = path.read_text().strip() if path.exists() else "(no action started)"
        lines.append(f"  rank {rank}: {where}")
    checkpoint = status / "checkpoint"
    if checkpoint.exists():
        lines.append(f"  last checkpoint: {checkpoint.read_text().strip()} (continue with --resume auto)")
    else:
        lines.append("  no checkpoint was written")
    return "Where the ranks were:\n" + "\n".join(lines) + "\n"


def _stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + GRACE_S
    for p in procs:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    for p in procs:
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m core.launch",
        description="Start one process per rank of MODULE on this machine (what torchrun --standalone does).",
    )
    parser.add_argument("--nproc", type=int, required=True, help="processes (ranks) to start")
    parser.add_argument("module", help="python module to run, e.g. methods.byol.train")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="arguments for the module")
    args = parser.parse_args(argv)
    try:
        return launch(args.nproc, [args.module, *args.args])
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
