"""ResNet backbones from torchvision's residual blocks, as a list of pipeline blocks.

torchvision's ``ResNet`` fixes the stem and the widths; here the same ``BasicBlock`` and
``Bottleneck`` modules are assembled with a width option and a CIFAR-style stem (3x3
convolution, stride 1, no max-pool) for small images, one block per pipeline unit.
"""

from __future__ import annotations

from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, conv1x1

DEPTHS: dict[int, tuple[type[nn.Module], tuple[int, ...]]] = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
    152: (Bottleneck, (3, 8, 36, 3)),
}


def resnet_blocks(
    depth: int = 18, width: int = 64, cifar_stem: bool = True, in_channels: int = 3
) -> tuple[list[nn.Module], int]:
    """The stem and every residual block of a ResNet.

    Args:
        depth: 18, 34, 50, 101 or 152.
        width: channels of the first stage (64 in the standard network); later stages double it.
        cifar_stem: 3x3 stride-1 stem without max-pool (small images) instead of 7x7 stride 2 + pool.
        in_channels: input channels.

    Returns:
        (blocks, channels of the last block's output).

    Raises:
        ValueError: for an unsupported depth or width.
    """
    if depth not in DEPTHS:
        raise ValueError(f"ResNet depth must be one of {sorted(DEPTHS)}, got {depth}")
    if width < 1:
        raise ValueError(f"width must be >= 1, got {width}")
    block, layers = DEPTHS[depth]
    if cifar_stem:
        stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)
        )
    else:
        stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 7, 2, 3, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, 1),
        )
    blocks: list[nn.Module] = [stem]
    inplanes = width
    for stage, count in enumerate(layers):
        planes = width * 2**stage
        for i in range(count):
            stride = 2 if stage > 0 and i == 0 else 1
            out = planes * block.expansion
            downsample = None
            if stride != 1 or inplanes != out:
                downsample = nn.Sequential(conv1x1(inplanes, out, stride), nn.BatchNorm2d(out))
            blocks.append(block(inplanes, planes, stride, downsample))
            inplanes = out
    for module in nn.ModuleList(blocks).modules():  # torchvision's initialisation
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    return blocks, inplanes


class Pool(nn.Module):
    """Global average pooling to a feature vector."""

    def forward(self, x):
        return x.mean(dim=(2, 3))


def mlp(dim: int, hidden: int, out: int, layers: int = 2, last_bn: bool = False) -> nn.Sequential:
    """BYOL/MoCo-style MLP: (Linear, BatchNorm, ReLU) x (layers - 1), then Linear (+ BatchNorm)."""
    mods: list[nn.Module] = []
    for _ in range(layers - 1):
        mods += [nn.Linear(dim, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True)]
        dim = hidden
    mods.append(nn.Linear(dim, out, bias=not last_bn))
    if last_bn:
        mods.append(nn.BatchNorm1d(out, affine=False))
    return nn.Sequential(*mods)
