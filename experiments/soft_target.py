"""Soft-target KD presets: teacher training, the CPU defaults, the accuracy matrix, tests, and
the paper-scale throughput settings."""

# `python -m methods.soft_target.teacher --preset NAME`: the teacher a KD preset loads.
TEACHER_PRESETS: dict[str, dict] = {
    # make teacher-kd: a ResNet-18 of width 32 (2.8M parameters) with a CIFAR stem on all 60,000
    # Fashion-MNIST images at 16x16, one epoch, both cores (a few minutes).
    "cpu": dict(
        teacher="resnet18w32",
        image=16,
        dataset="fashion_mnist",
        batch=128,
        epochs=1,
        optimizer="sgd",
        lr=0.1,
        weight_decay=5e-4,
        warmup_steps=40,
        threads=2,
    ),
    # tests: scikit-learn digits at 8x8, a narrow ResNet-18, a few dozen steps (seconds)
    "tiny": dict(
        teacher="resnet18w8",
        image=8,
        dataset="digits",
        batch=64,
        steps=40,
        optimizer="sgd",
        lr=0.1,
        weight_decay=5e-4,
        warmup_steps=5,
        threads=1,
    ),
}

_TEACHER_CPU = dict(teacher="resnet18w32", image=16, dataset="fashion_mnist")

PRESETS: dict[str, dict] = {
    # CPU default: the `make teacher-kd` teacher (ResNet-18 w32) distilled into a ResNet-18 of
    # width 8 (0.18M parameters), Fashion-MNIST at 16x16, one epoch.
    "cpu": dict(
        **_TEACHER_CPU,
        student="resnet18w8",
        batch=64,
        epochs=1,
        optimizer="sgd",
        lr=0.1,
        weight_decay=5e-4,
        warmup_steps=50,
        alpha=0.9,
        temperature=4.0,
        threads=1,
    ),
    # make accuracy-kd: the student sees a fixed subset of 10,000 training images (the teacher
    # saw all 60,000), 10 epochs, top-1 on the 10,000 test images after every epoch; two
    # micro-batches and one backward piece in every run, so sequential and tspipe compute the
    # same thing (BatchNorm statistics per micro-batch included).
    "accuracy": dict(
        **_TEACHER_CPU,
        student="resnet18w8",
        train_subset=10000,
        batch=64,
        epochs=10,
        optimizer="sgd",
        lr=0.1,
        weight_decay=5e-4,
        warmup_steps=100,
        alpha=0.9,
        temperature=4.0,
        microbatches=2,
        backward_pieces=1,
        eval_every=1,
        threads=1,
    ),
    # tests: scikit-learn digits at 8x8, the `tiny` teacher, a few steps
    "tiny": dict(
        teacher="resnet18w8",
        student="resnet18w4",
        image=8,
        dataset="digits",
        batch=32,
        steps=3,
        optimizer="sgd",
        lr=0.05,
        weight_decay=5e-4,
        warmup_steps=1,
        alpha=0.9,
        temperature=4.0,
        threads=1,
    ),
    # GPU check against ../shared/calibration/h200/kd_resnet152_to_resnet50_bf16.json: ResNet-152
    # teacher, ResNet-50 student, 224x224 synthetic images, bf16, batch 256, random teacher.
    "resnet152-to-resnet50-224": dict(
        teacher="resnet152",
        student="resnet50",
        cifar_stem=False,
        image=224,
        in_channels=3,
        classes=1000,
        dataset="synthetic",
        teacher_checkpoint="random",
        batch=256,
        steps=30,
        optimizer="sgd",
        lr=0.1,
        weight_decay=1e-4,
        warmup_steps=5,
        device="cuda",
        amp_bf16=True,
    ),
    # paper throughput (Lim et al. 2022): timm ViT-L/16 teacher, ResNet-152 student, 224x224,
    # batch 256, random weights and synthetic images; teacher_checkpoint=PATH takes real weights.
    **{
        f"vitl16-to-resnet152-224-{gpus}gpu": dict(
            teacher="vit_large",
            student="resnet152",
            cifar_stem=False,
            image=224,
            in_channels=3,
            classes=1000,
            dataset="synthetic",
            teacher_checkpoint="random",
            batch=256,
            steps=50,
            optimizer="sgd",
            lr=0.1,
            weight_decay=1e-4,
            warmup_steps=10,
            device="cuda",
            amp_bf16=True,
            schedule="tspipe",
            stages=gpus,
            microbatches=gpus,
        )
        for gpus in (4, 8)
    },
}
