"""Soft-target knowledge distillation (Hinton et al., 2015): a trained, frozen classifier
teaches a smaller one. ``make teacher-kd`` trains the teacher (``methods.soft_target.teacher``);
``python -m training soft_target --schedule tspipe --stages 2`` distils it."""

from __future__ import annotations

import torch
from torch import nn

from core.config import Config
from core.overrides import ConfigError
from methods.common.data import BatchOrder, check_dataset, load_images
from methods.common.optim import optimizer_factory, warmup_cosine
from methods.soft_target.config import SoftTargetConfig
from methods.soft_target.kd import SoftTargetTask
from methods.soft_target.models import load_teacher, top1
from methods.soft_target.presets import PRESETS, teacher_command
from methods.spec import MethodSpec, Setup


def check(config: Config) -> None:
    """Fail before any process starts when the data or the teacher checkpoint is missing or wrong."""
    m = config.method
    try:
        check_dataset(m.dataset, m.data_dir or None)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    path = m.teacher_path()
    if path is not None:
        load_teacher(path, m.teacher_arch(), teacher_command(m.teacher_arch(), m.dataset, path))


def task_for(config: Config) -> SoftTargetTask:
    """The KD task of a config, its teacher's weights loaded (checked) from the checkpoint."""
    m = config.method
    path = m.teacher_path()
    state = None
    if path is not None:
        command = teacher_command(m.teacher_arch(), m.dataset, path)
        state = load_teacher(path, m.teacher_arch(), command)["state_dict"]
    return SoftTargetTask(m.student_arch(), m.teacher_arch(), state, m.alpha, m.temperature, config.run.seed)


def setup(config: Config) -> Setup:
    """The run: task (teacher loaded), data batches, optimizer, schedule, top-1 evaluation.

    Raises:
        ConfigError: if the teacher checkpoint is missing or does not fit.
        DataNotFound: if the dataset is missing.
    """
    m, run = config.method, config.run
    data = load_images(m.dataset, m.data_dir or None, m.train_subset, run.seed, m.image, m.batch)
    order = BatchOrder(len(data.train_images), m.batch, run.seed)
    steps = run.steps or run.epochs * order.steps_per_epoch
    task = task_for(config)

    def batches(start: int, count: int):
        for idx in order.iterate(start, count):
            yield data.prepare(data.train_images[idx], m.image), data.train_labels[idx]

    teacher_top1: dict[str, float] = {}
    device = torch.device("cuda" if run.device == "cuda" else "cpu")

    def evaluate(state: dict[str, dict[str, torch.Tensor]]) -> dict[str, float]:
        images = task.channels(data.prepare(data.test_images, m.image))
        student = nn.Sequential(*task.build_student())  # plain BatchNorm: same state dict keys
        student.load_state_dict(state["student"])
        metrics = {"top1": top1(student.to(device), images, data.test_labels)}
        if task.uses_teacher:
            if not teacher_top1:  # the teacher is frozen: once is enough
                teacher = nn.Sequential(*task.build_teacher(list(student)))
                teacher.load_state_dict(state["teacher"])
                teacher_top1["value"] = top1(teacher.to(device), images, data.test_labels)
            metrics["teacher_top1"] = teacher_top1["value"]
        return metrics

    model = f"{m.teacher}-to-{m.student}-{m.image}px"
    return Setup(
        task=task,
        batches=batches,
        optimizer=optimizer_factory(m.optimizer, m.lr, m.weight_decay),
        scheduler=warmup_cosine(m.warmup_steps, steps),
        steps=steps,
        steps_per_epoch=order.steps_per_epoch,
        samples_per_step=m.batch,
        model=model if m.alpha > 0 else f"{m.student}-{m.image}px",
        evaluate=None if data.synthetic else evaluate,
        metric=None if data.synthetic else "top1",
        synthetic_data=data.synthetic,
    )


METHOD = MethodSpec(
    name="soft_target",
    title="Soft-target KD",
    config_cls=SoftTargetConfig,
    presets=PRESETS,
    default_preset="cpu",
    setup=setup,
    make_task=task_for,
    check=check,
    bench_command="make bench-kd",
    bench_presets={"cpu": "bench", "cuda": "resnet152-to-resnet50-224"},
    accuracy_command="make accuracy-kd",
)
