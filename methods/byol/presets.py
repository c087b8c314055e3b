"""BYOL presets: the CPU default, the accuracy runs, tests, the benchmark and the paper-scale
throughput settings, each a :class:`Config` derived from the CPU default."""

from __future__ import annotations

from core.config import Config, RunConfig
from methods.byol.config import ByolConfig

# CPU default: a narrow ResNet-18 with a CIFAR stem on Fashion-MNIST padded to 32x32, one epoch.
CPU = Config(method=ByolConfig(), run=RunConfig(threads=1))

PRESETS: dict[str, Config] = {
    "cpu": CPU,
    # make accuracy-byol: Fashion-MNIST at 16x16, 10,000 training images, 12 epochs, kNN (memory:
    # those 10,000; queries: the 10,000 test images) after every epoch; one process, one thread.
    "accuracy": CPU.derive(
        method=dict(
            image=16, lr=1.5, warmup_steps=78, base_momentum=0.99, train_subset=10000, eval_train_subset=10000
        ),
        pipeline=dict(backward_pieces=1),
        run=dict(epochs=12, eval_every=1),
    ),
    # tests: scikit-learn digits, tiny network, a few steps
    "tiny": CPU.derive(
        method=dict(
            width=4,
            image=16,
            proj_hidden=32,
            proj_dim=16,
            pred_hidden=32,
            batch=32,
            lr=0.2,
            warmup_steps=1,
            dataset="digits",
            eval_train_subset=1000,
            knn_k=20,
        ),
        run=dict(steps=3),
    ),
    # make bench-byol: the CPU default at batch 64, backwards whole (CPU: no split)
    "bench": CPU.derive(method=dict(batch=64), pipeline=dict(backward_pieces=1)),
    # paper throughput (Lim et al. 2022): ResNet-18/50/101/152, 224x224, batch 256, BYOL's 4096/256 heads
    **{
        f"resnet{depth}-224-{gpus}gpu": CPU.derive(
            method=dict(
                depth=depth,
                width=64,
                cifar_stem=False,
                image=224,
                proj_hidden=4096,
                proj_dim=256,
                pred_hidden=4096,
                batch=256,
                lr=0.2,
                warmup_steps=10,
                dataset="synthetic",
            ),
            pipeline=dict(schedule="tspipe", stages=gpus, microbatches=gpus, amp_bf16=True),
            run=dict(steps=50, device="cuda", threads=0),
        )
        for depth in (18, 50, 101, 152)
        for gpus in (4, 8)
    },
}
