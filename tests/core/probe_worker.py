"""Measures the per-message cost through a transport on every rank (started by core.launch):
the runtime's own transport, and the same one made slower by a known delay on each send; and
what messages cost a piece of work beside them, for a piece that runs ``BESIDE_MS`` slower after
a send and for one messages do not touch.

Usage: python -m core.launch --nproc 2 tests.core.probe_worker OUT.json
"""

import json
import sys
import time

import torch
import torch.distributed as dist

from core.launch import init_distributed
from core.link_probe import message_ms, probe_link
from core.runtime import TorchTransport
from core.traffic_probe import probe_traffic

DELAY_MS = 3.0
BESIDE_MS = 2.0
TRAFFIC_BYTES = 1 << 16
SENT = [0]


class CountedSends(TorchTransport):
    """The runtime's transport, counting its sends."""

    def send(self, channel, dst, x):
        SENT[0] += 1
        super().send(channel, dst, x)


def piece(seen=[0]) -> None:  # noqa: B006 (the sends counted at the last call)
    """1 ms of work, ``BESIDE_MS`` more when a message was sent since the last piece."""
    time.sleep((1.0 + (BESIDE_MS if SENT[0] != seen[0] else 0.0)) / 1e3)
    seen[0] = SENT[0]


class SlowSends(TorchTransport):
    """The runtime's transport with ``DELAY_MS`` of extra work in every send."""

    def send(self, channel, dst, x):
        time.sleep(DELAY_MS / 1e3)
        super().send(channel, dst, x)


def main(out: str) -> None:
    rank = init_distributed("cpu").rank
    torch.set_num_threads(1)
    direct = TorchTransport(torch.device("cpu"))
    slow = SlowSends(torch.device("cpu"))
    found = {
        "direct": message_ms(direct),
        "slow": message_ms(slow),
        "overhead_us": probe_link(transport=direct).overhead_us,
        "traffic_plain_ms": probe_traffic(direct, lambda: time.sleep(1e-3), TRAFFIC_BYTES) * TRAFFIC_BYTES,
    }
    counted = CountedSends(torch.device("cpu"))
    found["traffic_slow_ms"] = probe_traffic(counted, piece, TRAFFIC_BYTES) * TRAFFIC_BYTES
    counted.close()
    parts = [None] * dist.get_world_size() if rank == 0 else None
    dist.gather_object(found, parts, dst=0)
    direct.close()
    slow.close()
    if rank == 0:
        with open(out, "w") as fh:
            json.dump(parts, fh)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
