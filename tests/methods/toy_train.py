"""A toy method on the shared trainer (the engine tests' ToyTask), for fault-handling tests:
``python -m tests.methods.toy_train --schedule gpipe --stages 2 teacher=frozen ...``."""

from __future__ import annotations

import sys
from dataclasses import dataclass

import torch

from methods.common.trainer import Method, Setup, TrainConfig, main
from tests.core.toy import ToyTask, sgd


@dataclass(frozen=True)
class ToyConfig(TrainConfig):
    """Toy run: ``teacher`` is ``ema`` (two views, predictor) or ``frozen``; ``batch`` samples."""

    teacher: str = "ema"
    batch: int = 24

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.teacher not in ("ema", "frozen"):
            raise ValueError(f"teacher must be ema or frozen, got {self.teacher!r}")


def make_task(config: ToyConfig) -> ToyTask:
    return ToyTask(config.teacher, True, config.steps or 1)


def setup(config: ToyConfig) -> Setup:
    steps = config.steps or 4

    def batches(start: int, count: int):
        for step in range(start, start + count):
            g = torch.Generator().manual_seed(1000 + step)
            yield torch.randn(config.batch, 6, generator=g), torch.randint(0, 6, (config.batch,), generator=g)

    def evaluate(state):
        return {
            "weight_norm": float(
                sum(v.double().norm() for v in state["student"].values() if v.is_floating_point())
            )
        }

    return Setup(
        task=ToyTask(config.teacher, True, steps),
        batches=batches,
        optimizer=sgd,
        scheduler=None,
        steps=steps,
        steps_per_epoch=steps,
        samples_per_step=config.batch,
        model="toy",
        evaluate=evaluate,
        metric="weight_norm",
    )


METHOD = Method(
    "toy", ToyConfig, {"default": {"steps": 4, "threads": 1}}, "default", lambda c: None, setup, make_task
)

if __name__ == "__main__":
    sys.exit(main(METHOD))
