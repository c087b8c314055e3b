"""Two augmented views per image for BYOL and MoCo-v3 (torchvision.transforms.v2), seeded.

Each image gets its own random crop, flip, brightness/contrast jitter and blur. The random
state is forked from ``(seed, step)``, so every process (and the single-process reference)
draws the same views for the same step, whatever else consumed random numbers before.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torchvision.transforms import v2


@dataclass(frozen=True)
class ViewConfig:
    """Augmentation strengths.

    Attributes:
        size: output side in pixels.
        min_scale: smallest crop area as a share of the image (random resized crop).
        jitter: brightness and contrast jitter strength.
        jitter_p: probability of applying the jitter.
        blur_p: probability of a Gaussian blur (kernel 3, sigma 0.1..2).
        flip_p: probability of a horizontal flip.
    """

    size: int = 32
    min_scale: float = 0.2
    jitter: float = 0.4
    jitter_p: float = 0.8
    blur_p: float = 0.5
    flip_p: float = 0.5

    def __post_init__(self) -> None:
        if not 0.0 < self.min_scale <= 1.0:
            raise ValueError(f"min_scale must lie in (0, 1], got {self.min_scale}")
        for name in ("jitter_p", "blur_p", "flip_p"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {getattr(self, name)}")


class TwoViews:
    """Callable turning a batch of images into two augmented views.

    Images are float tensors in [0, 1], ``B x C x H x W``; views come out ``B x C x size x size``,
    normalised to zero mean and unit spread over [0, 1] (``(x - 0.5) / 0.5``).
    """

    def __init__(self, config: ViewConfig | None = None) -> None:
        self.config = config or ViewConfig()
        c = self.config
        self.transform = v2.Compose(
            [
                v2.RandomResizedCrop(c.size, scale=(c.min_scale, 1.0), antialias=True),
                v2.RandomHorizontalFlip(c.flip_p),
                v2.RandomApply([v2.ColorJitter(brightness=c.jitter, contrast=c.jitter)], p=c.jitter_p),
                v2.RandomApply([v2.GaussianBlur(3, sigma=(0.1, 2.0))], p=c.blur_p),
            ]
        )

    def view(self, images: torch.Tensor) -> torch.Tensor:
        """One augmented view of every image (uses the current random state)."""
        return torch.stack([self.transform(img) for img in images]).sub_(0.5).div_(0.5)

    def __call__(self, images: torch.Tensor, seed: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Two views of ``images``, determined by ``(seed, step)``."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed * 1_000_003 + step)
            return self.view(images), self.view(images)


def plain(images: torch.Tensor) -> torch.Tensor:
    """The evaluation view: no augmentation, the same normalisation as :class:`TwoViews`."""
    return (images - 0.5) / 0.5
