"""The far end of the transport micro-benchmark: rank 1 of a 2-process gloo group that sends
every message it receives straight back (``benchmarks/test_transport.py`` starts it).

Usage: ``python -m benchmarks.echo SIZES COUNT`` with ``MASTER_ADDR``/``MASTER_PORT`` set.
"""

import sys

import torch
import torch.distributed as dist

from core.runtime import TorchTransport


def main() -> None:
    sizes = [int(s) for s in sys.argv[1].split(",")]
    count = int(sys.argv[2])
    dist.init_process_group("gloo", rank=1, world_size=2)
    torch.set_num_threads(1)
    transport = TorchTransport(torch.device("cpu"), timeout_s=120)
    for _ in sizes:
        for _ in range(count):
            transport.send("SF", 0, transport.recv("SF", 0))
    transport.close()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
