"""BYOL (Grill et al., 2020) as an engine task: ResNet (or ViT) online network with projector
and predictor, an EMA target network, and the symmetric normalised regression loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from core.task import unit_slices
from methods.common.augment import ViewConfig
from methods.common.resnet import Pool, mlp, resnet_blocks
from methods.common.ssl import TwoViewTask
from methods.common.vit import vit_blocks


def regression_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Per-sample BYOL loss ``2 - 2 cos(p, z)`` (the squared distance of the normalised vectors)."""
    return 2 - 2 * (F.normalize(p, dim=1) * F.normalize(z, dim=1)).sum(dim=1)


def byol_loss(online: list[torch.Tensor], target: list[torch.Tensor]) -> torch.Tensor:
    """Symmetric BYOL loss over a mini-batch: view 1's prediction regresses view 2's target
    projection and vice versa, each averaged over the samples, the two terms added."""
    return regression_loss(online[0], target[1]).mean() + regression_loss(online[1], target[0]).mean()


class ByolTask(TwoViewTask):
    """BYOL on the engine: blocks = ResNet stem and residual blocks, then pooling + projector,
    then the predictor (student only); the teacher is an EMA of everything but the predictor.
    With ``backbone="vit"`` the blocks are a ViT's embedding and transformer blocks, then final
    norm + class token + projector (as MoCo-v3's, frozen random patch projection included).

    Args:
        backbone: ``resnet`` or ``vit``.
        depth, width, cifar_stem: the ResNet (see ``methods.common.resnet``); for the ViT, its
            blocks and token width.
        image, patch, heads: the ViT's input side, patch size and attention heads.
        proj_hidden, proj_dim, pred_hidden: projector and predictor sizes (BYOL: 4096/256/4096).
        base_momentum, total_steps, seed, views, in_channels: as :class:`TwoViewTask`.
    """

    def __init__(
        self,
        depth: int = 18,
        width: int = 64,
        cifar_stem: bool = True,
        backbone: str = "resnet",
        image: int = 32,
        patch: int = 4,
        heads: int = 4,
        proj_hidden: int = 4096,
        proj_dim: int = 256,
        pred_hidden: int = 4096,
        base_momentum: float = 0.996,
        total_steps: int = 1000,
        seed: int = 0,
        views: ViewConfig | None = None,
        in_channels: int = 3,
    ) -> None:
        super().__init__(base_momentum, total_steps, seed, views, in_channels)
        if backbone not in ("resnet", "vit"):
            raise ValueError(f"backbone must be resnet or vit, got {backbone!r}")
        self.depth, self.width, self.cifar_stem = depth, width, cifar_stem
        self.backbone, self.image, self.patch, self.heads = backbone, image, patch, heads
        self.proj_hidden, self.proj_dim, self.pred_hidden = proj_hidden, proj_dim, pred_hidden

    def build_student(self) -> list[nn.Module]:
        torch.manual_seed(self.seed)
        if self.backbone == "vit":
            *blocks, class_token = vit_blocks(
                "vit_tiny_patch16_224",
                img_size=self.image,
                patch_size=self.patch,
                frozen_patch_projection=True,
                in_chans=self.in_channels,
                embed_dim=self.width,
                depth=self.depth,
                num_heads=self.heads,
            )[0]
            projector = nn.Sequential(class_token, mlp(self.width, self.proj_hidden, self.proj_dim))
        else:
            blocks, features = resnet_blocks(self.depth, self.width, self.cifar_stem, self.in_channels)
            projector = nn.Sequential(Pool(), mlp(features, self.proj_hidden, self.proj_dim))
        predictor = mlp(self.proj_dim, self.pred_hidden, self.proj_dim)
        return [*blocks, projector, predictor]

    def loss(self, student, teacher, context):
        return {"loss": byol_loss(student, teacher)}

    def microbatch_loss(self, view, microbatch, microbatches, student, teacher, context):
        index = unit_slices(context, microbatches)[microbatch]
        return regression_loss(student, teacher[1 - view][index]).sum() / context

    @staticmethod
    def encoder(student_blocks: list[nn.Module]) -> nn.Sequential:
        """The representation kNN evaluates: the backbone and its global pooling (ResNet) or final
        norm + class token (ViT): the projector's first module. No projector."""
        return nn.Sequential(*student_blocks[:-2], student_blocks[-2][0])
