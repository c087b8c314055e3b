"""Image data for the methods: Fashion-MNIST from disk, scikit-learn digits, synthetic images,
and a deterministic batch order that every rank reproduces.

Fashion-MNIST is read from the original IDX files: ``$DATA_DIR``, then
``/usr/share/datasets/fashion-mnist`` (Debian package ``dataset-fashion-mnist``, which
``make data`` installs where it can), then torchvision's download for users with internet;
otherwise :class:`DataNotFound` says how to get the data.
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)


class DataNotFound(FileNotFoundError):
    """The data is not on this machine; the message says how to get it."""


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped): magic, dimensions, then uint8 data."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        raw = fh.read()
    magic = int.from_bytes(raw[:4], "big")
    if magic >> 8 != 0x08:  # 0x0000 08 NN: unsigned bytes, NN dimensions
        raise ValueError(f"{path} is not an unsigned-byte IDX file (magic {magic:#x})")
    ndim = magic & 0xFF
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{path}: header says {dims}, file holds {data.size} values")
    return data.reshape(dims)


def _find(folder: Path, stem: str) -> Path | None:
    for name in (f"{stem}.gz", stem):
        for candidate in (folder / name, folder / "FashionMNIST" / "raw" / name):
            if candidate.exists():
                return candidate
    return None


def _load_split(folder: Path, prefix: str) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Images and labels of one split from ``folder``, None if its files are absent.

    Raises:
        DataNotFound: if the files are there but unreadable or inconsistent.
    """
    images, labels = (
        _find(folder, f"{prefix}-images-idx3-ubyte"),
        _find(folder, f"{prefix}-labels-idx1-ubyte"),
    )
    if not (images and labels):
        return None
    try:
        x, y = read_idx(images), read_idx(labels)
    except (ValueError, OSError, EOFError) as err:
        raise DataNotFound(f"{folder}: unreadable Fashion-MNIST file ({err}); replace the files") from None
    if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
        raise DataNotFound(f"{folder}: images {x.shape} and labels {y.shape} do not match; replace the files")
    return torch.from_numpy(x.copy()), torch.from_numpy(y.astype(np.int64))


def fashion_mnist(
    split: str = "train", data_dir: str | Path | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fashion-MNIST images (uint8, N x 28 x 28) and labels (int64).

    Args:
        split: ``"train"`` (60,000) or ``"test"`` (10,000).
        data_dir: folder with the IDX files (then only there); default ``$DATA_DIR`` (likewise),
            else the Debian location, else a download where possible.

    Raises:
        ValueError: for an unknown split.
        DataNotFound: when no copy is found and none can be downloaded.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    prefix = "train" if split == "train" else "t10k"
    explicit = data_dir or os.environ.get("DATA_DIR")
    if explicit:  # a folder the user named must hold the data; no silent fallback
        folder = Path(explicit)
        if not folder.is_dir():
            raise DataNotFound(
                f"data folder {folder} does not exist; fix data_dir (or DATA_DIR) or leave it empty"
            )
        found = _load_split(folder, prefix)
        if found is None:
            raise DataNotFound(
                f"data folder {folder} holds no Fashion-MNIST {split} files ({prefix}-images-idx3-ubyte[.gz], "
                f"{prefix}-labels-idx1-ubyte[.gz]); fix data_dir or leave it empty"
            )
        return found
    folders = [DEBIAN_DIR]
    found = _load_split(DEBIAN_DIR, prefix)
    if found is not None:
        return found
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "tspipe-bench"
    allow_download = os.environ.get("TSPIPE_DOWNLOAD", "1") != "0"
    if allow_download:
        try:  # users with internet; the machines of this project have none
            from torchvision.datasets import FashionMNIST

            ds = FashionMNIST(str(cache), train=split == "train", download=allow_download)
            return ds.data.clone(), ds.targets.clone()
        except Exception:  # noqa: BLE001 - any failure means: not available here
            pass
    looked = ", ".join(str(f) for f in folders)
    raise DataNotFound(
        f"Fashion-MNIST not found (looked in {looked}; download failed or disabled). Get it with "
        "`make data` (runs `apt-get install dataset-fashion-mnist` as root), or put the IDX files "
        "(train-images-idx3-ubyte.gz, ...) in a folder and set DATA_DIR to it."
    )


def digits() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 1,797 8x8 digits as uint8 images (0..255) and int64 labels: always present,
    for fast tests."""
    from sklearn.datasets import load_digits

    data = load_digits()
    images = torch.from_numpy((data.images * (255.0 / 16.0)).round().astype(np.uint8))
    return images, torch.from_numpy(data.target.astype(np.int64))


def to_rgb(images: torch.Tensor, size: int = 32) -> torch.Tensor:
    """uint8 gray images (N x H x W) to float RGB in [0, 1] (N x 3 x size x size): centred
    zero padding when the image is smaller by an even margin (28 -> 32), resizing otherwise."""
    x = images.to(torch.get_default_dtype()).div(255.0).unsqueeze(1)
    h = x.shape[-1]
    if size > h and (size - h) % 2 == 0 and size - h <= 8:
        pad = (size - h) // 2
        x = F.pad(x, (pad, pad, pad, pad))
    elif size != h:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=size < h)
    return x.expand(-1, 3, -1, -1).contiguous()


def synthetic_images(
    count: int, size: int, seed: int = 0, classes: int = 10
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random float RGB images in [0, 1] and labels, for pure-throughput runs."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(count, 3, size, size, generator=g), torch.randint(0, classes, (count,), generator=g)


@dataclass(frozen=True)
class BatchOrder:
    """A deterministic order of mini-batches over a dataset: a fresh permutation per epoch from
    ``seed + epoch``, incomplete last batches dropped (pipelines need fixed shapes).

    Attributes:
        size: number of samples.
        batch: samples per mini-batch.
        seed: permutation seed.
    """

    size: int
    batch: int
    seed: int = 0

    def __post_init__(self) -> None:
        if self.batch < 1 or self.batch > self.size:
            raise ValueError(f"batch must be between 1 and the dataset size {self.size}, got {self.batch}")

    @property
    def steps_per_epoch(self) -> int:
        return self.size // self.batch

    def indices(self, step: int) -> torch.Tensor:
        """Sample indices of global step ``step``."""
        epoch, within = divmod(step, self.steps_per_epoch)
        perm = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed + epoch))
        return perm[within * self.batch : (within + 1) * self.batch]

    def iterate(self, start: int, steps: int) -> Iterator[torch.Tensor]:
        """Indices of steps ``start .. start + steps - 1`` (one permutation per epoch)."""
        cached_epoch, perm = -1, None
        for step in range(start, start + steps):
            epoch, within = divmod(step, self.steps_per_epoch)
            if epoch != cached_epoch:
                perm = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed + epoch))
                cached_epoch = epoch
            yield perm[within * self.batch : (within + 1) * self.batch]


DATASETS = ("fashion_mnist", "digits", "synthetic")


@dataclass
class ImageSet:
    """Train and test images of a run: uint8 gray (N x H x W) for real data, float RGB for
    synthetic data; int64 labels.

    Attributes:
        name: dataset name.
        train_images, train_labels, test_images, test_labels: the splits.
        synthetic: whether the images are random.
    """

    name: str
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    synthetic: bool = False

    def prepare(self, images: torch.Tensor, size: int) -> torch.Tensor:
        """Images as the models take them: float in [0, 1], ``B x C x size x size``."""
        if self.synthetic:
            images = images.to(torch.get_default_dtype())
            return images if images.shape[-1] == size else F.interpolate(images, size=(size, size))
        return to_rgb(images, size)[:, :1]  # one channel; tasks repeat it to the model's channels


def check_dataset(name: str, data_dir: str | Path | None = None) -> None:
    """Raise :class:`DataNotFound` (or ValueError for an unknown name) before a run starts."""
    if name not in DATASETS:
        raise ValueError(f"dataset must be one of {DATASETS}, got {name!r}")
    if name == "fashion_mnist":
        fashion_mnist("test", data_dir)


def load_images(
    name: str,
    data_dir: str | Path | None = None,
    train_subset: int = 0,
    seed: int = 0,
    size: int = 32,
    batch: int = 1,
) -> ImageSet:
    """Load a dataset's splits; ``train_subset`` > 0 keeps a fixed random subset of training images.

    Synthetic sets hold ``max(4 x batch, 64)`` random RGB images of ``size`` (for throughput runs).
    """
    if name == "synthetic":
        n = max(4 * batch, 64)
        images, labels = synthetic_images(n, size, seed)
        return ImageSet(name, images, labels, images[:64], labels[:64], synthetic=True)
    if name == "digits":
        images, labels = digits()
        cut = 1500
        train = (images[:cut], labels[:cut])
        test = (images[cut:], labels[cut:])
    elif name == "fashion_mnist":
        train = fashion_mnist("train", data_dir)
        test = fashion_mnist("test", data_dir)
    else:
        raise ValueError(f"dataset must be one of {DATASETS}, got {name!r}")
    if train_subset and train_subset < len(train[0]):
        keep = torch.randperm(len(train[0]), generator=torch.Generator().manual_seed(seed + 12345))[
            :train_subset
        ]
        train = (train[0][keep], train[1][keep])
    return ImageSet(name, train[0], train[1], test[0], test[1])
