"""Train BYOL with any schedule: ``python -m methods.byol.train --schedule tspipe --stages 2``.

Presets live in ``experiments/byol.py`` (``--preset cpu`` by default); any config field can be
overridden as ``key=value``. With more than one stage the command relaunches itself with one
process per stage (``core.launch``); under ``torchrun`` it joins the job instead.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from experiments.byol import PRESETS
from methods.byol.byol import ByolTask
from methods.common import ssl
from methods.common.trainer import Method, Setup, main


@dataclass(frozen=True)
class ByolConfig(ssl.SslConfig):
    """A BYOL run (data, optimiser and evaluation fields in :class:`ssl.SslConfig`, pipeline
    fields in ``TrainConfig``).

    Attributes:
        depth: ResNet depth (18 or 50 for the presets).
        width: channels of the first ResNet stage (64 is the standard network).
        cifar_stem: 3x3 stride-1 stem without max-pool, for small images.
        proj_hidden, proj_dim, pred_hidden: projector and predictor sizes.
    """

    depth: int = 18
    width: int = 16
    cifar_stem: bool = True
    proj_hidden: int = 512
    proj_dim: int = 128
    pred_hidden: int = 512


def task_for(config: ByolConfig, total_steps: int) -> ByolTask:
    return ByolTask(
        depth=config.depth,
        width=config.width,
        cifar_stem=config.cifar_stem,
        proj_hidden=config.proj_hidden,
        proj_dim=config.proj_dim,
        pred_hidden=config.pred_hidden,
        base_momentum=config.base_momentum,
        total_steps=total_steps,
        seed=config.seed,
        views=config.view_config(),
    )


def setup(config: ByolConfig) -> Setup:
    return ssl.setup(config, task_for, f"resnet{config.depth}w{config.width}-{config.image}px")


METHOD = Method(
    name="byol",
    config_cls=ByolConfig,
    presets=PRESETS,
    default_preset="cpu",
    check=ssl.check,
    setup=setup,
    make_task=lambda config: task_for(config, 1),
)

if __name__ == "__main__":
    sys.exit(main(METHOD))
