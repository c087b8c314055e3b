"""BYOL (Grill et al., 2020): a ResNet (or ViT) student with projector and predictor, its EMA
teacher, kNN evaluation. ``python -m training byol --schedule tspipe --stages 2``."""

from __future__ import annotations

from core.config import Config
from methods.byol.byol import ByolTask
from methods.byol.config import ByolConfig
from methods.byol.presets import PRESETS
from methods.common import ssl
from methods.spec import MethodSpec, Setup


def task_for(config: Config, total_steps: int) -> ByolTask:
    """The BYOL task of a config, its momentum schedule over ``total_steps``."""
    m = config.method
    return ByolTask(
        depth=m.depth,
        width=m.width,
        cifar_stem=m.cifar_stem,
        backbone=m.backbone,
        image=m.image,
        patch=m.patch,
        heads=m.heads,
        proj_hidden=m.proj_hidden,
        proj_dim=m.proj_dim,
        pred_hidden=m.pred_hidden,
        base_momentum=m.base_momentum,
        total_steps=total_steps,
        seed=config.run.seed,
        views=m.view_config(),
    )


def setup(config: Config) -> Setup:
    return ssl.setup(config, task_for, config.method.model_name())


METHOD = MethodSpec(
    name="byol",
    title="BYOL",
    config_cls=ByolConfig,
    presets=PRESETS,
    default_preset="cpu",
    setup=setup,
    make_task=lambda config: task_for(config, 1),
    check=ssl.check,
    bench_command="make bench-byol",
    bench_presets={"cpu": "bench", "cuda": "resnet50-224-4gpu"},
    accuracy_command="make accuracy-byol",
)
