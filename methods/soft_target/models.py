"""Classifiers for soft-target KD as pipeline blocks, their cost estimate, and teacher checkpoints.

A model is named by a short string: ``resnet18w32`` (a ResNet-18 whose first stage has 32
channels; ``resnet50`` means the standard width 64) or ``vit_tiny`` / ``vit_small`` /
``vit_base`` / ``vit_large`` (timm ViT/16, random init). Every classifier ends with its head as
the last block: global pooling (the class token for a ViT) and a linear layer to the logits.

A teacher checkpoint is a plain dict loadable with ``torch.load(weights_only=True)``:
``{"arch": {...}, "state_dict": {...}, "test_top1": float, ...}``; ``arch`` names everything that
fixes the weights' shapes and meaning (model, image size, channels, classes, stem), and a KD run
refuses a checkpoint whose ``arch`` differs from the teacher it asks for. Real weights saved from
torchvision's ResNet or timm's ViT (``torch.save(model.state_dict(), PATH)``) load too, renamed
to the blocks and checked against the teacher's shapes.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from core.overrides import ConfigError
from methods.common.resnet import DEPTHS, Pool, resnet_blocks

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "artifacts" / "soft_target"
_RESNET = re.compile(r"resnet(\d+)(?:w(\d+))?")
# timm ViT/16 models by short name (timm is imported only to build one)
VIT_TIMM = {
    "vit_tiny": "vit_tiny_patch16_224",
    "vit_small": "vit_small_patch16_224",
    "vit_base": "vit_base_patch16_224",
    "vit_large": "vit_large_patch16_224",
    "vit_huge": "vit_huge_patch14_224",
}


@dataclass(frozen=True)
class Arch:
    """Everything that fixes a classifier's weights.

    Attributes:
        model: model name (``resnet18w32``, ``resnet152``, ``vit_large``).
        image: input side in pixels.
        in_channels: input channels (1 for gray Fashion-MNIST, 3 for RGB).
        classes: output logits.
        cifar_stem: ResNet only: 3x3 stride-1 stem without max-pool (small images).
        half_blocks: ViT only: one unit per attention or MLP half instead of per block.
    """

    model: str
    image: int
    in_channels: int = 1
    classes: int = 10
    cifar_stem: bool = True
    half_blocks: bool = False

    def __post_init__(self) -> None:
        check_model_name(self.model)
        if self.image < 8:
            raise ValueError(f"image must be >= 8 pixels, got {self.image}")
        if self.in_channels not in (1, 3):
            raise ValueError(f"in_channels must be 1 or 3, got {self.in_channels}")
        if self.classes < 2:
            raise ValueError(f"classes must be >= 2, got {self.classes}")
        # fields that do not apply to the family are normalised, so equal weights compare equal
        if self.model.startswith("resnet"):
            object.__setattr__(self, "half_blocks", False)
        else:
            object.__setattr__(self, "cifar_stem", False)

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "image": self.image,
            "in_channels": self.in_channels,
            "classes": self.classes,
            "cifar_stem": self.cifar_stem,
            "half_blocks": self.half_blocks,
        }

    def describe(self) -> str:
        """One-line summary for messages: ``resnet18w32 at 16px, 1 channel(s), 10 classes``."""
        stem = ", CIFAR stem" if self.cifar_stem and self.model.startswith("resnet") else ""
        return f"{self.model} at {self.image}px, {self.in_channels} channel(s), {self.classes} classes{stem}"


def check_model_name(name: str) -> None:
    """Raise ValueError (listing the accepted forms) for a model name this module cannot build."""
    match = _RESNET.fullmatch(name)
    if match:
        depth, width = int(match[1]), int(match[2] or 64)
        if depth not in DEPTHS or width < 1:
            raise ValueError(f"model {name!r}: ResNet depth must be one of {sorted(DEPTHS)}, width >= 1")
        return
    if name not in VIT_TIMM:
        raise ValueError(
            f"unknown model {name!r}; use resnet<depth>[w<width>] (e.g. resnet18w32, resnet152) "
            f"or one of {', '.join(VIT_TIMM)}"
        )


class Head(nn.Module):
    """Classifier head block: global average pooling, then a linear layer to the logits."""

    def __init__(self, features: int, classes: int) -> None:
        super().__init__()
        self.pool = Pool()
        self.fc = nn.Linear(features, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(x))


def classifier_blocks(arch: Arch) -> list[nn.Module]:
    """The classifier as pipeline blocks, head last (weights from the current torch seed).

    ResNet: stem, every residual block, :class:`Head`. ViT: embedding, every block (or half
    block), then final norm + class token + linear layer as one head block.
    """
    match = _RESNET.fullmatch(arch.model)
    if match:
        depth, width = int(match[1]), int(match[2] or 64)
        blocks, features = resnet_blocks(depth, width, arch.cifar_stem, arch.in_channels)
        return [*blocks, Head(features, arch.classes)]
    from methods.common.vit import vit_blocks  # imports timm

    # the model's patch on large images (ViT-H: 14), 8x8 patches on small ones
    patch = (14 if arch.model == "vit_huge" else 16) if arch.image >= 64 else max(2, arch.image // 8)
    units, dim = vit_blocks(
        VIT_TIMM[arch.model],
        img_size=arch.image,
        patch_size=patch,
        half_blocks=arch.half_blocks,
        in_chans=arch.in_channels,
    )
    return [*units[:-1], nn.Sequential(units[-1], nn.Linear(dim, arch.classes))]


def channels(images: torch.Tensor, want: int) -> torch.Tensor:
    """Images with ``want`` channels: gray repeated, or the first ``want`` channels kept."""
    if images.shape[1] == want:
        return images
    return images.expand(-1, want, -1, -1) if images.shape[1] == 1 else images[:, :want]


@functools.lru_cache(maxsize=32)
def block_macs(arch: Arch) -> tuple[float, ...]:
    """Multiply-accumulates of one sample's forward through each block (convolutions and linear
    layers), from a forward pass on the meta device: no weights, no arithmetic, deterministic,
    so every rank computes the same value (for balancing stages without timing them)."""
    with torch.device("meta"):
        blocks = classifier_blocks(arch)
    counts: list[float] = []

    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        if isinstance(module, nn.Conv2d):
            counts[-1] += output.numel() * module.weight[0].numel()
        else:
            counts[-1] += output.numel() * module.in_features

    x = torch.empty(1, arch.in_channels, arch.image, arch.image, device="meta")
    for block in blocks:
        block.eval()
        handles = [
            m.register_forward_hook(hook) for m in block.modules() if isinstance(m, (nn.Conv2d, nn.Linear))
        ]
        counts.append(0.0)
        with torch.no_grad():
            x = block(x)
        for h in handles:
            h.remove()
    return tuple(counts)


# ---- teacher checkpoints -----------------------------------------------------------------------


def default_teacher_path(arch: Arch, dataset: str) -> Path:
    """Where ``make teacher-kd`` (``python -m methods.soft_target.teacher``) saves a teacher."""
    return ARTIFACTS / f"{dataset}-{arch.model}-{arch.image}px.pt"


def save_teacher(path: Path, arch: Arch, blocks: Sequence[nn.Module], **info: object) -> Path:
    """Write a teacher checkpoint (atomically: a temporary file, then a rename).

    Args:
        path: destination.
        arch: the teacher's architecture.
        blocks: the trained blocks.
        **info: more plain entries (``test_top1``, ``dataset``, ``steps``, ...).

    Returns:
        ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().clone() for k, v in nn.Sequential(*blocks).state_dict().items()}
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"arch": arch.to_dict(), "state_dict": state, **info}, tmp)
    tmp.replace(path)
    return path


def load_teacher(path: Path, arch: Arch, make_command: str) -> dict:
    """Load a teacher checkpoint with ``torch.load(weights_only=True)`` and check it fits ``arch``.

    Args:
        path: the checkpoint.
        arch: the teacher the run asks for.
        make_command: the command that makes a matching checkpoint (named in errors).

    Returns:
        The checkpoint dict (``arch``, ``state_dict``, ``test_top1``, ...).

    Raises:
        ConfigError: one line, when the file is missing, unreadable, not a teacher checkpoint, or
            of another architecture; it says which command makes the right one.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"no teacher checkpoint at {path}; make it with `{make_command}`, or point "
            "teacher_checkpoint=PATH at one (teacher_checkpoint=random: untrained teacher, throughput only)"
        )
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file gets the same advice
        raise ConfigError(
            f"cannot read teacher checkpoint {path} with torch.load(weights_only=True) "
            f"({type(err).__name__}); remake it with `{make_command}`"
        ) from None
    if isinstance(checkpoint, dict) and not {"arch", "state_dict"} <= set(checkpoint):
        converted = from_reference_layout(arch, checkpoint)
        if converted is not None:  # real weights of torchvision's ResNet or timm's ViT
            problem = _state_mismatch(arch, converted)
            if problem:
                raise ConfigError(f"{path}: these weights do not fit {arch.describe()}: {problem}")
            return {"arch": arch.to_dict(), "state_dict": converted, "source": str(path)}
    if not isinstance(checkpoint, dict) or not {"arch", "state_dict"} <= set(checkpoint):
        raise ConfigError(
            f"{path} is neither a teacher checkpoint (no 'arch' and 'state_dict') nor a torchvision "
            f"ResNet or timm ViT state dict; make one with `{make_command}`"
        )
    try:
        found = Arch(**checkpoint["arch"])
    except (TypeError, ValueError) as err:
        raise ConfigError(
            f"{path}: unknown teacher architecture ({err}); remake it with `{make_command}`"
        ) from None
    if found != arch:
        raise ConfigError(
            f"teacher checkpoint {path} holds {found.describe()}, but this run's teacher is "
            f"{arch.describe()}; make a matching one with `{make_command}`, or change the teacher settings"
        )
    problem = _state_mismatch(arch, checkpoint["state_dict"])
    if problem:
        raise ConfigError(
            f"teacher checkpoint {path} does not fit {arch.model}: {problem}; remake it with `{make_command}`"
        )
    return checkpoint


def from_reference_layout(arch: Arch, state: dict) -> dict[str, torch.Tensor] | None:
    """A state dict of torchvision's ``ResNet`` or timm's ``VisionTransformer`` (real, e.g.
    ImageNet-trained weights saved with ``torch.save(model.state_dict(), PATH)``) renamed to this
    module's blocks; None when ``state`` is in neither layout.

    ResNet: ``conv1``/``bn1`` -> stem, ``layerS.I`` -> the residual blocks in order, ``fc`` -> head.
    ViT: embedding entries -> unit 0, ``blocks.I`` -> block units (or their two halves),
    ``norm`` and ``head`` -> the head unit.
    """
    if not state or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        return None
    if arch.model.startswith("resnet") and "conv1.weight" in state and "fc.weight" in state:
        layers = sorted({k.split(".")[0] for k in state if k.startswith("layer")})
        index, order = {}, 1
        for layer in layers:
            for i in sorted({int(k.split(".")[1]) for k in state if k.startswith(layer + ".")}):
                index[f"{layer}.{i}"] = order
                order += 1
        out = {}
        for key, value in state.items():
            head, _, rest = key.partition(".")
            if head == "conv1":
                out[f"0.0.{rest}"] = value
            elif head == "bn1":
                out[f"0.1.{rest}"] = value
            elif head == "fc":
                out[f"{order}.fc.{rest}"] = value
            else:
                block, _, inner = rest.partition(".")
                out[f"{index[f'{head}.{block}']}.{inner}"] = value
        return out
    if arch.model.startswith("vit") and "patch_embed.proj.weight" in state and "head.weight" in state:
        depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
        last = 1 + depth * (2 if arch.half_blocks else 1)
        out = {}
        for key, value in state.items():
            head, _, rest = key.partition(".")
            if head == "blocks":
                block, _, inner = rest.partition(".")
                unit = 1 + int(block)
                if arch.half_blocks:
                    second = inner.split(".")[0] in ("norm2", "mlp", "ls2")
                    unit = 1 + 2 * int(block) + int(second)
                out[f"{unit}.{inner}"] = value
            elif head == "norm":
                out[f"{last}.0.norm.{rest}"] = value
            elif head == "head":
                out[f"{last}.1.{rest}"] = value
            else:
                out[f"0.vit.{key}"] = value
        return out
    return None


def _state_mismatch(arch: Arch, state: dict) -> str | None:
    """What keeps ``state`` from loading into ``arch`` (keys and shapes, checked on the meta
    device, so no weights are built), or None."""
    with torch.device("meta"):
        want = {k: tuple(v.shape) for k, v in nn.Sequential(*classifier_blocks(arch)).state_dict().items()}
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        return "its state_dict is not a dict of tensors"
    missing = sorted(set(want) - set(state))
    extra = sorted(set(state) - set(want))
    if missing or extra:
        return f"missing {missing[:3]}, unexpected {extra[:3]}"
    for key, shape in want.items():
        if tuple(state[key].shape) != shape:
            return f"{key} has shape {tuple(state[key].shape)}, the model's is {shape}"
    return None


def load_state(blocks: Sequence[nn.Module], state: dict[str, torch.Tensor]) -> None:
    """Copy a teacher state dict (checked by :func:`load_teacher`) into its blocks."""
    nn.Sequential(*blocks).load_state_dict(state)


@torch.no_grad()
def top1(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch: int = 500) -> float:
    """Top-1 accuracy of a classifier in eval mode over prepared images (on the model's device)."""
    model.eval()
    device = next(model.parameters()).device
    correct = 0
    for start in range(0, len(images), batch):
        logits = model(images[start : start + batch].to(device))
        correct += int((logits.argmax(dim=1).cpu() == labels[start : start + batch]).sum())
    return correct / len(images)
