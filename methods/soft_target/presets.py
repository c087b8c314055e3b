"""Soft-target KD presets: teacher training, the CPU default, the accuracy runs, tests, the
benchmark and the paper-scale throughput settings, each derived from a base."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from core.config import Config, RunConfig
from methods.soft_target.config import SoftTargetConfig, TeacherConfig
from methods.soft_target.models import Arch, default_teacher_path

# `python -m methods.soft_target.teacher --preset NAME`: the teacher a KD preset loads.
# make teacher-kd: a ResNet-18 of width 32 (2.8M parameters) with a CIFAR stem on all 60,000
# Fashion-MNIST images at 16x16, one epoch, both cores (a few minutes).
TEACHER_CPU = TeacherConfig(threads=2)
TEACHER_PRESETS: dict[str, TeacherConfig] = {
    "cpu": TEACHER_CPU,
    # tests: scikit-learn digits at 8x8, a narrow ResNet-18, a few dozen steps (seconds)
    "tiny": replace(
        TEACHER_CPU,
        teacher="resnet18w8",
        image=8,
        dataset="digits",
        batch=64,
        steps=40,
        warmup_steps=5,
        threads=1,
    ),
}

# CPU default: the `make teacher-kd` teacher (ResNet-18 w32) distilled into a ResNet-18 of
# width 8 (0.18M parameters), Fashion-MNIST at 16x16, one epoch.
CPU = Config(method=SoftTargetConfig(), run=RunConfig(threads=1))

PRESETS: dict[str, Config] = {
    "cpu": CPU,
    # make accuracy-kd: the student sees a fixed subset of 10,000 training images (the teacher
    # saw all 60,000), 10 epochs, top-1 on the 10,000 test images after every epoch; two
    # micro-batches and one backward piece in every run, so sequential and tspipe compute the
    # same thing (BatchNorm statistics per micro-batch included).
    "accuracy": CPU.derive(
        method=dict(train_subset=10000, warmup_steps=100),
        pipeline=dict(microbatches=2, backward_pieces=1),
        run=dict(epochs=10, eval_every=1),
    ),
    # tests: scikit-learn digits at 8x8, the `tiny` teacher, a few steps
    "tiny": CPU.derive(
        method=dict(
            teacher="resnet18w8",
            student="resnet18w4",
            image=8,
            dataset="digits",
            batch=32,
            lr=0.05,
            warmup_steps=1,
        ),
        run=dict(steps=3),
    ),
    # make bench-kd: the CPU default at batch 128, backwards whole
    "bench": CPU.derive(method=dict(batch=128), pipeline=dict(backward_pieces=1)),
    # GPU check against the H200 calibration's kd_resnet152_to_resnet50_bf16.json: ResNet-152
    # teacher, ResNet-50 student, 224x224 synthetic images, bf16, batch 256, random teacher.
    "resnet152-to-resnet50-224": CPU.derive(
        method=dict(
            teacher="resnet152",
            student="resnet50",
            cifar_stem=False,
            image=224,
            in_channels=3,
            classes=1000,
            dataset="synthetic",
            teacher_checkpoint="random",
            batch=256,
            weight_decay=1e-4,
            warmup_steps=5,
        ),
        pipeline=dict(amp_bf16=True),
        run=dict(steps=30, device="cuda", threads=0),
    ),
    # paper throughput (Lim et al. 2022): timm ViT-L/16 or ViT-H/14 teacher, ResNet-101 or -152
    # student, 224x224, batch 256, random weights and synthetic images; teacher_checkpoint=PATH
    # takes real weights.
    **{
        f"{short}-to-resnet{depth}-224-{gpus}gpu": CPU.derive(
            method=dict(
                teacher=teacher,
                student=f"resnet{depth}",
                cifar_stem=False,
                image=224,
                in_channels=3,
                classes=1000,
                dataset="synthetic",
                teacher_checkpoint="random",
                batch=256,
                weight_decay=1e-4,
                warmup_steps=10,
            ),
            pipeline=dict(schedule="tspipe", stages=gpus, microbatches=gpus, amp_bf16=True),
            run=dict(steps=50, device="cuda", threads=0),
        )
        for short, teacher in (("vitl16", "vit_large"), ("vith14", "vit_huge"))
        for depth in (101, 152)
        for gpus in (4, 8)
    },
}


def teacher_command(arch: Arch, dataset: str, path: Path) -> str:
    """The command that makes a teacher checkpoint of ``arch`` on ``dataset`` at ``path``:
    ``make teacher-kd`` for the default teacher, else the teacher script with overrides."""
    cpu = TEACHER_PRESETS["cpu"]
    if arch == cpu.arch() and dataset == cpu.dataset and Path(path) == cpu.path():
        return "make teacher-kd"
    preset = "tiny" if dataset == "digits" else "cpu"
    base = TEACHER_PRESETS[preset]
    overrides = []
    for key, value in arch.to_dict().items():
        field = "teacher" if key == "model" else key
        if getattr(base, field) != value:
            overrides.append(f"{field}={value}")
    if Path(path) != default_teacher_path(arch, dataset):
        overrides.append(f"out={path}")
    return " ".join(["python -m methods.soft_target.teacher --preset", preset, *overrides])
