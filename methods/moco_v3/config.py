"""The config of a MoCo-v3 run (the ``method`` section)."""

from __future__ import annotations

from dataclasses import dataclass

import timm

from methods.common.ssl import SslConfig
from methods.common.vit import VIT_MODELS


@dataclass(frozen=True)
class MocoV3Config(SslConfig):
    """A MoCo-v3 run's model (data, optimiser and evaluation fields in :class:`SslConfig`).

    Attributes:
        vit: timm ViT name or ``vit_small``/``vit_base``/``vit_large``; the other fields
            override its shape.
        patch: patch size (0: the model's, 16).
        embed_dim: token width (0: the model's).
        depth: transformer blocks (0: the model's).
        heads: attention heads (0: the model's); must divide ``embed_dim``.
        half_blocks: attention and MLP halves of each block as separate pipeline units.
        frozen_patch_projection: keep the patch projection at its random init (MoCo-v3).
        proj_hidden, proj_dim, pred_hidden: projector (3 layers) and predictor (2 layers) sizes.
        temperature: InfoNCE temperature (MoCo-v3: 0.2 for ViT).
        optimizer, lr, weight_decay, base_momentum: MoCo-v3's ViT recipe by default (AdamW,
            1.5e-4 x batch / 256, 0.1; momentum 0.99 rising to 1).
    """

    vit: str = "vit_tiny_patch16_224"
    patch: int = 4
    embed_dim: int = 96
    depth: int = 4
    heads: int = 3
    half_blocks: bool = False
    frozen_patch_projection: bool = True
    proj_hidden: int = 512
    proj_dim: int = 128
    pred_hidden: int = 512
    temperature: float = 0.2
    optimizer: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.1
    base_momentum: float = 0.99

    def __post_init__(self) -> None:
        super().__post_init__()
        if not timm.is_model(VIT_MODELS.get(self.vit, self.vit)):
            raise ValueError(f"vit {self.vit!r} is not a timm model; use vit_small, vit_base or vit_large")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        for name in ("patch", "embed_dim", "depth", "heads"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0 (0: the model's), got {getattr(self, name)}")
        if self.patch and self.image % self.patch:
            raise ValueError(f"image {self.image} is not a multiple of patch {self.patch}; change either")
        if self.embed_dim and self.heads and self.embed_dim % self.heads:
            raise ValueError(f"heads {self.heads} must divide embed_dim {self.embed_dim}")


def model_name(config: MocoV3Config) -> str:
    """The row's model name, e.g. ``vit_base-p16-224px-halves`` or ``vit-d96x4h3-p4-32px``."""
    custom = config.embed_dim or config.depth or config.heads
    base = f"vit-d{config.embed_dim}x{config.depth}h{config.heads}" if custom else config.vit
    patch = f"-p{config.patch}" if config.patch else ""
    return f"{base}{patch}-{config.image}px{'-halves' if config.half_blocks else ''}"
