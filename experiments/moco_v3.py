"""MoCo-v3 presets: the CPU defaults and the paper-scale throughput settings.

The CPU ViTs are timm's ``vit_tiny_patch16_224`` reshaped to patch 4 and 4 blocks (MLP ratio
4): width 96 with 3 heads (0.45M backbone parameters) on 32x32 views (64 patches plus the class
token) for the default and the benchmark; width 64 with 4 heads (0.20M) on 16x16 views (16
patches) for the accuracy runs, which must fit 6 runs of 20 epochs into an hour on 2 cores.
"""

# MoCo-v3's ViT recipe (Chen et al. 2021): AdamW, lr 1.5e-4 x batch / 256, weight decay 0.1,
# temperature 0.2, momentum 0.99 rising to 1 on a cosine, 4096/256 projector and predictor,
# frozen random patch projection.
_CPU_VIT = dict(vit="vit_tiny_patch16_224", patch=4, embed_dim=96, depth=4, heads=3)

PRESETS: dict[str, dict] = {
    # CPU default (make bench-mocov3): Fashion-MNIST padded to 32x32, two augmented views.
    "cpu": dict(
        **_CPU_VIT,
        image=32,
        proj_hidden=512,
        proj_dim=128,
        pred_hidden=512,
        temperature=0.2,
        batch=128,
        epochs=1,
        optimizer="adamw",
        lr=1e-3,
        weight_decay=0.1,
        warmup_steps=50,
        base_momentum=0.99,
        dataset="fashion_mnist",
        threads=1,
    ),
    # make accuracy-mocov3: Fashion-MNIST at 16x16 (16 patches of 4x4), 10,000 training images,
    # 20 epochs, kNN (memory: those 10,000; queries: the 10,000 test images) after every epoch;
    # one process, one thread (about 14 min a run on an idle core).
    "accuracy": dict(
        **{**_CPU_VIT, "embed_dim": 64, "heads": 4},
        image=16,
        proj_hidden=512,
        proj_dim=128,
        pred_hidden=512,
        temperature=0.2,
        batch=128,
        epochs=20,
        optimizer="adamw",
        lr=2e-3,
        weight_decay=0.1,
        warmup_steps=78,
        base_momentum=0.99,
        dataset="fashion_mnist",
        train_subset=10000,
        eval_every=1,
        threads=1,
        eval_train_subset=10000,
        backward_pieces=1,
    ),
    # tests: scikit-learn digits at 16x16, a two-block ViT of width 32, a few steps
    "tiny": dict(
        vit="vit_tiny_patch16_224",
        patch=4,
        embed_dim=32,
        depth=2,
        heads=2,
        image=16,
        proj_hidden=64,
        proj_dim=32,
        pred_hidden=64,
        temperature=0.2,
        batch=32,
        steps=3,
        optimizer="adamw",
        lr=1e-3,
        weight_decay=0.1,
        warmup_steps=1,
        dataset="digits",
        eval_train_subset=1000,
        threads=1,
        knn_k=20,
    ),
    # paper throughput (Lim et al. 2022): ViT-S/B/L with 16x16 patches at 224x224, synthetic
    # images, bf16, batch 256, M = N micro-batches; every block split into its attention and MLP
    # halves so 16 stages balance (ViT-S and ViT-B: 26 units, ViT-L: 50).
    **{
        f"{size}-224-{gpus}gpu": dict(
            vit=size,
            patch=16,
            embed_dim=0,
            depth=0,
            heads=0,
            half_blocks=True,
            image=224,
            proj_hidden=4096,
            proj_dim=256,
            pred_hidden=4096,
            temperature=0.2,
            batch=256,
            steps=50,
            optimizer="adamw",
            lr=1.5e-4,
            weight_decay=0.1,
            warmup_steps=10,
            base_momentum=0.99,
            dataset="synthetic",
            device="cuda",
            amp_bf16=True,
            schedule="tspipe",
            stages=gpus,
            microbatches=gpus,
        )
        for size in ("vit_small", "vit_base", "vit_large")
        for gpus in (4, 8, 16)
    },
}
