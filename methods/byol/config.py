"""The config of a BYOL run (the ``method`` section)."""

from __future__ import annotations

from dataclasses import dataclass

from methods.common.ssl import SslConfig


@dataclass(frozen=True)
class ByolConfig(SslConfig):
    """A BYOL run's model (data, optimiser and evaluation fields in :class:`SslConfig`).

    Attributes:
        depth: ResNet depth (18, 34, 50, 101 or 152).
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
