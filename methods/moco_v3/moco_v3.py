"""MoCo-v3 (Chen, Xie and He, 2021) as an engine task: a timm ViT with projector and predictor,
a momentum encoder (EMA of backbone + projector), and the symmetric InfoNCE loss whose negatives
are the other keys of the whole mini-batch.

Units (pipeline blocks): the ViT embedding, each transformer block (or its attention and MLP
halves), then final norm + class token + projector as one unit, then the predictor (student
only). The momentum encoder mirrors every unit but the predictor.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from core.task import unit_slices
from methods.common.augment import ViewConfig
from methods.common.resnet import mlp
from methods.common.ssl import TwoViewTask
from methods.common.vit import vit_blocks


def info_nce_logits(q: torch.Tensor, k: torch.Tensor, temperature: float) -> torch.Tensor:
    """Cosine similarities of every query with every key over the temperature.

    Returns:
        ``len(q) x len(k)`` logits; row i's positive is key i (of the same image).
    """
    return F.normalize(q, dim=1) @ F.normalize(k, dim=1).T / temperature


def info_nce_from_logits(
    logits: torch.Tensor, temperature: float, offset: int = 0, reduction: str = "mean"
) -> torch.Tensor:
    """MoCo-v3's ``ctr`` from logits: cross-entropy of query i against key ``offset + i``,
    scaled by ``2 * temperature`` as in the paper (so the gradient scale does not depend on it).

    Args:
        offset: index of the first query's key (queries of one micro-batch against all keys).
        reduction: ``mean`` or ``sum`` over the queries, or ``none`` for per-query terms.
    """
    labels = torch.arange(offset, offset + logits.shape[0], device=logits.device)
    return F.cross_entropy(logits, labels, reduction=reduction) * (2 * temperature)


def contrastive_loss(q: torch.Tensor, k: torch.Tensor, temperature: float) -> torch.Tensor:
    """``ctr(q, k)``: InfoNCE of queries against keys, the other keys being the negatives."""
    return info_nce_from_logits(info_nce_logits(q, k, temperature), temperature)


def moco_v3_loss(queries: list[torch.Tensor], keys: list[torch.Tensor], temperature: float) -> torch.Tensor:
    """Symmetric MoCo-v3 loss ``ctr(q1, k2) + ctr(q2, k1)``: each view's predictions are the
    queries, the other view's momentum-encoder projections the keys."""
    return contrastive_loss(queries[0], keys[1], temperature) + contrastive_loss(
        queries[1], keys[0], temperature
    )


class MocoV3Task(TwoViewTask):
    """MoCo-v3 on the engine.

    Args:
        vit: timm model name or a key of ``methods.common.vit.VIT_MODELS``.
        image: input side in pixels.
        patch: patch size (None: the model's).
        embed_dim, depth, heads: override the model's width, blocks and attention heads (None:
            the model's).
        half_blocks: attention and MLP halves of each block as separate units (16 stages balance).
        frozen_patch_projection: keep the patch projection at its random init (MoCo-v3's trick
            for ViT stability).
        proj_hidden, proj_dim, pred_hidden: projector (3 layers) and predictor (2 layers) sizes
            (MoCo-v3: 4096/256/4096).
        temperature: InfoNCE temperature (0.2 for ViT).
        base_momentum, total_steps, seed, views, in_channels: as :class:`TwoViewTask`.
    """

    def __init__(
        self,
        vit: str = "vit_small",
        image: int = 224,
        patch: int | None = None,
        embed_dim: int | None = None,
        depth: int | None = None,
        heads: int | None = None,
        half_blocks: bool = False,
        frozen_patch_projection: bool = True,
        proj_hidden: int = 4096,
        proj_dim: int = 256,
        pred_hidden: int = 4096,
        temperature: float = 0.2,
        base_momentum: float = 0.99,
        total_steps: int = 1000,
        seed: int = 0,
        views: ViewConfig | None = None,
        in_channels: int = 3,
    ) -> None:
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        super().__init__(base_momentum, total_steps, seed, views, in_channels)
        self.vit, self.image, self.patch = vit, image, patch
        self.overrides = {
            k: v for k, v in (("embed_dim", embed_dim), ("depth", depth), ("num_heads", heads)) if v
        }
        self.half_blocks, self.frozen_patch_projection = half_blocks, frozen_patch_projection
        self.proj_hidden, self.proj_dim, self.pred_hidden = proj_hidden, proj_dim, pred_hidden
        self.temperature = temperature

    def build_student(self) -> list[nn.Module]:
        torch.manual_seed(self.seed)
        units, dim = vit_blocks(
            self.vit,
            img_size=self.image,
            patch_size=self.patch,
            half_blocks=self.half_blocks,
            frozen_patch_projection=self.frozen_patch_projection,
            in_chans=self.in_channels,
            **self.overrides,
        )
        *backbone, class_token = units
        head = nn.Sequential(class_token, mlp(dim, self.proj_hidden, self.proj_dim, layers=3, last_bn=True))
        predictor = mlp(self.proj_dim, self.pred_hidden, self.proj_dim, layers=2)
        return [*backbone, head, predictor]

    def logits(self, queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """Logits of queries against every key of the mini-batch (see :func:`info_nce_logits`)."""
        return info_nce_logits(queries, keys, self.temperature)

    def loss(self, student, teacher, context):
        t = self.temperature
        total = info_nce_from_logits(self.logits(student[0], teacher[1]), t) + info_nce_from_logits(
            self.logits(student[1], teacher[0]), t
        )
        return {"loss": total}

    def microbatch_loss(self, view, microbatch, microbatches, student, teacher, context):
        # the unit's queries against all keys of the other view: its rows of the full logits
        index = unit_slices(context, microbatches)[microbatch]
        logits = self.logits(student, teacher[1 - view])
        return info_nce_from_logits(logits, self.temperature, index.start, reduction="sum") / context

    @staticmethod
    def encoder(student_blocks: list[nn.Module]) -> nn.Sequential:
        """The representation kNN evaluates: the backbone's class token after the final norm
        (no projector)."""
        return nn.Sequential(*student_blocks[:-2], student_blocks[-2][0])
