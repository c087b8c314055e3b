"""MoCo-v3 presets, each a :class:`Config` derived from the CPU default.

The CPU ViTs are timm's ``vit_tiny_patch16_224`` reshaped to patch 4 and 4 blocks (MLP ratio
4): width 96 with 3 heads (0.45M backbone parameters) on 32x32 views (64 patches plus the class
token) for the default and the benchmark; width 64 with 4 heads (0.20M) on 16x16 views (16
patches) for the accuracy runs, which must fit 6 runs of 20 epochs into an hour on 2 cores.
MoCo-v3's ViT recipe (Chen et al. 2021): AdamW, lr 1.5e-4 x batch / 256, weight decay 0.1,
temperature 0.2, momentum 0.99 rising to 1 on a cosine, 4096/256 projector and predictor,
frozen random patch projection.
"""

from __future__ import annotations

from core.config import Config, RunConfig
from methods.moco_v3.config import MocoV3Config

# CPU default (make bench-mocov3 at batch 64): Fashion-MNIST padded to 32x32, two augmented views.
CPU = Config(method=MocoV3Config(), run=RunConfig(threads=1))

PRESETS: dict[str, Config] = {
    "cpu": CPU,
    # make accuracy-mocov3: Fashion-MNIST at 16x16 (16 patches of 4x4), 10,000 training images,
    # 20 epochs, kNN (memory: those 10,000; queries: the 10,000 test images) after every epoch;
    # one process, one thread (about 14 min a run on an idle core).
    "accuracy": CPU.derive(
        method=dict(
            embed_dim=64,
            heads=4,
            image=16,
            lr=2e-3,
            warmup_steps=78,
            train_subset=10000,
            eval_train_subset=10000,
        ),
        pipeline=dict(backward_pieces=1),
        run=dict(epochs=20, eval_every=1),
    ),
    # tests: scikit-learn digits at 16x16, a two-block ViT of width 32, a few steps
    "tiny": CPU.derive(
        method=dict(
            embed_dim=32,
            depth=2,
            heads=2,
            image=16,
            proj_hidden=64,
            proj_dim=32,
            pred_hidden=64,
            batch=32,
            warmup_steps=1,
            dataset="digits",
            eval_train_subset=1000,
            knn_k=20,
        ),
        run=dict(steps=3),
    ),
    # make bench-mocov3: the CPU default at batch 64, backwards whole
    "bench": CPU.derive(method=dict(batch=64), pipeline=dict(backward_pieces=1)),
    # paper throughput (Lim et al. 2022): ViT-S/B/L with 16x16 patches (ViT-H: 14x14) at 224x224,
    # synthetic images, bf16, batch 256, M = N micro-batches; every block split into its attention
    # and MLP halves so 16 stages balance (ViT-S and ViT-B: 26 units, ViT-L: 50, ViT-H: 66).
    **{
        f"{size}-224-{gpus}gpu": CPU.derive(
            method=dict(
                vit=size,
                patch=14 if size == "vit_huge" else 16,
                embed_dim=0,
                depth=0,
                heads=0,
                half_blocks=True,
                image=224,
                proj_hidden=4096,
                proj_dim=256,
                pred_hidden=4096,
                batch=256,
                lr=1.5e-4,
                warmup_steps=10,
                dataset="synthetic",
            ),
            pipeline=dict(schedule="tspipe", stages=gpus, microbatches=gpus, amp_bf16=True),
            run=dict(steps=50, device="cuda", threads=0),
        )
        for size in ("vit_small", "vit_base", "vit_large", "vit_huge")
        for gpus in (4, 8, 16)
    },
}
