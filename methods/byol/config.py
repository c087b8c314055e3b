"""The config of a BYOL run (the ``method`` section)."""

from __future__ import annotations

from dataclasses import dataclass

from methods.common.ssl import SslConfig

BACKBONES = ("resnet", "vit")


@dataclass(frozen=True)
class ByolConfig(SslConfig):
    """A BYOL run's model (data, optimiser and evaluation fields in :class:`SslConfig`).

    Attributes:
        backbone: ``resnet`` (BYOL's own) or ``vit`` (a timm ViT as MoCo-v3 builds it, with a
            frozen random patch projection; the accuracy runs, whose random ResNet already
            scores what BYOL trains it to).
        depth: ResNet depth (18, 34, 50, 101 or 152), or the ViT's blocks.
        width: channels of the first ResNet stage (64 is the standard network), or the ViT's
            token width.
        cifar_stem: 3x3 stride-1 stem without max-pool, for small images (ResNet only).
        patch, heads: the ViT's patch size and attention heads (ViT only).
        proj_hidden, proj_dim, pred_hidden: projector and predictor sizes.
    """

    backbone: str = "resnet"

    depth: int = 18
    width: int = 16
    cifar_stem: bool = True
    proj_hidden: int = 512
    proj_dim: int = 128
    pred_hidden: int = 512
    patch: int = 4
    heads: int = 4

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.backbone not in BACKBONES:
            raise ValueError(f"backbone must be one of {BACKBONES}, got {self.backbone!r}")
        if self.backbone == "vit":
            if self.patch < 1 or self.image % self.patch:
                raise ValueError(f"image {self.image} is not a multiple of patch {self.patch}; change either")
            if self.heads < 1 or self.width % self.heads:
                raise ValueError(f"heads {self.heads} must divide the ViT's width {self.width}")

    def model_name(self) -> str:
        """The row's model name, e.g. ``resnet18w16-32px`` or ``vit-d64x4h4-p4-16px``."""
        if self.backbone == "vit":
            return f"vit-d{self.width}x{self.depth}h{self.heads}-p{self.patch}-{self.image}px"
        return f"resnet{self.depth}w{self.width}-{self.image}px"
