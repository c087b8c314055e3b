"""MoCo-v3 (Chen, Xie and He, 2021): a ViT student with projector and predictor, its momentum
encoder, the symmetric InfoNCE loss over the whole mini-batch, kNN evaluation on the class
token. ``python -m training moco_v3 --schedule tspipe --stages 2``."""

from __future__ import annotations

from core.config import Config
from methods.common import ssl
from methods.moco_v3.config import MocoV3Config, model_name
from methods.moco_v3.moco_v3 import MocoV3Task
from methods.moco_v3.presets import PRESETS
from methods.spec import MethodSpec, Setup


def task_for(config: Config, total_steps: int) -> MocoV3Task:
    """The MoCo-v3 task of a config, its momentum schedule over ``total_steps``."""
    m = config.method
    return MocoV3Task(
        vit=m.vit,
        image=m.image,
        patch=m.patch or None,
        embed_dim=m.embed_dim or None,
        depth=m.depth or None,
        heads=m.heads or None,
        half_blocks=m.half_blocks,
        frozen_patch_projection=m.frozen_patch_projection,
        proj_hidden=m.proj_hidden,
        proj_dim=m.proj_dim,
        pred_hidden=m.pred_hidden,
        temperature=m.temperature,
        base_momentum=m.base_momentum,
        total_steps=total_steps,
        seed=config.run.seed,
        views=m.view_config(),
    )


def setup(config: Config) -> Setup:
    return ssl.setup(config, task_for, model_name(config.method))


METHOD = MethodSpec(
    name="moco_v3",
    title="MoCo-v3",
    config_cls=MocoV3Config,
    presets=PRESETS,
    default_preset="cpu",
    setup=setup,
    make_task=lambda config: task_for(config, 1),
    check=ssl.check,
    bench_command="make bench-mocov3",
    bench_presets={"cpu": "bench", "cuda": "vit_base-224-4gpu"},
    accuracy_command="make accuracy-mocov3",
)
