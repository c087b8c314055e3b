"""A toy method (the engine tests' ToyTask) registered from outside ``methods/``, for the
fault-handling tests: ``TSPIPE_PLUGINS=tests.methods.toy_method python -m training toy
--schedule gpipe --stages 2 teacher=frozen ...``. It also shows that a method needs nothing but
its spec and one registration."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from core.config import Config, RunConfig
from methods.registry import register
from methods.spec import MethodSpec, Setup
from tests.core.toy import ToyTask, sgd


@dataclass(frozen=True)
class ToyConfig:
    """Toy run: ``teacher`` is ``ema`` (two views, predictor) or ``frozen``; ``batch`` samples."""

    teacher: str = "ema"
    batch: int = 24

    def __post_init__(self) -> None:
        if self.teacher not in ("ema", "frozen"):
            raise ValueError(f"teacher must be ema or frozen, got {self.teacher!r}")


def make_task(config: Config) -> ToyTask:
    return ToyTask(config.method.teacher, True, config.run.steps or 1)


def setup(config: Config) -> Setup:
    steps = config.run.steps or 4
    batch = config.method.batch

    def batches(start: int, count: int):
        for step in range(start, start + count):
            g = torch.Generator().manual_seed(1000 + step)
            yield torch.randn(batch, 6, generator=g), torch.randint(0, 6, (batch,), generator=g)

    def evaluate(state):
        return {
            "weight_norm": float(
                sum(v.double().norm() for v in state["student"].values() if v.is_floating_point())
            )
        }

    return Setup(
        task=ToyTask(config.method.teacher, True, steps),
        batches=batches,
        optimizer=sgd,
        scheduler=None,
        steps=steps,
        steps_per_epoch=steps,
        samples_per_step=batch,
        model="toy",
        evaluate=evaluate,
        metric="weight_norm",
    )


METHOD = register(
    MethodSpec(
        name="toy",
        title="Toy",
        config_cls=ToyConfig,
        presets={"default": Config(method=ToyConfig(), run=RunConfig(steps=4, threads=1))},
        default_preset="default",
        setup=setup,
        make_task=make_task,
    )
)
