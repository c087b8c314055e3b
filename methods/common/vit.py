"""Vision Transformers from timm as a list of pipeline blocks, optionally at half-block grain.

The timm model is built as usual (``timm.create_model(..., pretrained=False)``), then cut into
units: the embedding (patch projection, class token, position embedding), each transformer
block, or each block's attention half ``x + attn(norm1(x))`` and MLP half ``x + mlp(norm2(x))``
as separate units (so 16 or more stages balance), and the final norm with class-token pooling.
The units reuse timm's modules, so weights and initialisation are timm's.
"""

from __future__ import annotations

import timm
import torch
from torch import nn

# timm model names of the presets (random init; no hub access)
VIT_MODELS = {
    "vit_small": "vit_small_patch16_224",
    "vit_base": "vit_base_patch16_224",
    "vit_large": "vit_large_patch16_224",
    "vit_huge": "vit_huge_patch14_224",
}


class Embed(nn.Module):
    """Patch embedding, class token and position embedding of a timm ViT."""

    def __init__(self, vit: nn.Module, frozen_patch_projection: bool = False) -> None:
        super().__init__()
        self.vit = vit  # holds only the embedding parts once ViTBlocks has taken the rest
        if frozen_patch_projection:  # MoCo-v3's random, fixed patch projection
            vit.patch_embed.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.vit.patch_embed(x)
        x = self.vit._pos_embed(x)
        x = self.vit.patch_drop(x)
        return self.vit.norm_pre(x)


class AttentionHalf(nn.Module):
    """``x + drop_path(ls(attn(norm1(x))))`` of one timm block."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.norm1, self.attn, self.ls1, self.drop_path1 = (
            block.norm1,
            block.attn,
            block.ls1,
            block.drop_path1,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop_path1(self.ls1(self.attn(self.norm1(x))))


class MlpHalf(nn.Module):
    """``x + drop_path(ls(mlp(norm2(x))))`` of one timm block."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.norm2, self.mlp, self.ls2, self.drop_path2 = block.norm2, block.mlp, block.ls2, block.drop_path2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))


class ClassToken(nn.Module):
    """Final norm, then the class token as the image representation."""

    def __init__(self, norm: nn.Module) -> None:
        super().__init__()
        self.norm = norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x)[:, 0]


def vit_blocks(
    name: str = "vit_small_patch16_224",
    img_size: int = 224,
    patch_size: int | None = None,
    half_blocks: bool = False,
    frozen_patch_projection: bool = False,
    **kwargs: object,
) -> tuple[list[nn.Module], int]:
    """A timm ViT (random init) as pipeline units.

    Args:
        name: timm model name, e.g. ``vit_base_patch16_224``, or a key of :data:`VIT_MODELS`.
        img_size: input side.
        patch_size: override the model's patch size (small images: 4 on 32x32).
        half_blocks: split every transformer block into its attention and MLP halves.
        frozen_patch_projection: keep the patch projection at its random init (MoCo-v3).
        **kwargs: passed to ``timm.create_model`` (``embed_dim``, ``depth``, ``num_heads``, ...).

    Returns:
        (units: embedding, blocks or halves, final norm + class token; feature width).
    """
    name = VIT_MODELS.get(name, name)
    extra = dict(kwargs)
    if patch_size is not None:
        extra["patch_size"] = patch_size
    vit = timm.create_model(name, pretrained=False, img_size=img_size, num_classes=0, **extra)
    blocks = list(vit.blocks)
    norm = vit.norm
    units: list[nn.Module] = []
    for block in blocks:
        units += [AttentionHalf(block), MlpHalf(block)] if half_blocks else [block]
    # the embedding unit keeps only what the embedding needs
    vit.blocks = nn.Sequential()
    vit.norm = nn.Identity()
    vit.head = nn.Identity()
    return [Embed(vit, frozen_patch_projection), *units, ClassToken(norm)], vit.embed_dim
