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
    # make staleness-byol: BYOL on MoCo-v3's accuracy ViT (4 blocks of width 64, 4 heads, 4x4
    # patches of 16x16 images, frozen random patch projection) with MoCo-v3's optimiser (AdamW,
    # weight decay 0.1, momentum 0.99), on all 60,000 training images for 8 epochs (3,752 steps,
    # about 13.5 min a run beside another). The random ResNet of "accuracy" already scores about
    # what BYOL trains it to; a random ViT scores about 54 %, so here training has points to show.
    # Explored on seed 0 (kNN top-1): 10,000 images x 20 epochs 63.7 % (after 18), 20,000 x 20
    # 69.0 % (after 11 of 20 epochs), 60,000 x 8 72.8 % (lr 4e-3, batch 64: no faster per sample).
    "staleness": CPU.derive(
        method=dict(
            backbone="vit",
            depth=4,
            width=64,
            heads=4,
            patch=4,
            image=16,
            optimizer="adamw",
            lr=2e-3,
            weight_decay=0.1,
            base_momentum=0.99,
            warmup_steps=78,
            train_subset=0,
            eval_train_subset=10000,
        ),
        pipeline=dict(backward_pieces=1),
        run=dict(epochs=8, eval_every=1),
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
