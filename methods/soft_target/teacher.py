"""Train a KD teacher, a plain single-process classifier run:
``python -m methods.soft_target.teacher --preset cpu`` (what ``make teacher-kd`` runs).

Presets live in ``methods/soft_target/presets.py`` (``TEACHER_PRESETS``); any field can be
overridden as ``key=value``. The checkpoint (weights, architecture, test top-1) goes to
``artifacts/soft_target/<dataset>-<model>-<image>px.pt`` unless ``out=PATH`` says otherwise, with
a JSON summary beside it; KD runs load it with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from core.overrides import ConfigError, apply_overrides
from methods.common.data import BatchOrder, DataNotFound, check_dataset, load_images
from methods.common.optim import optimizer_factory, warmup_cosine
from methods.soft_target.config import TeacherConfig
from methods.soft_target.models import (
    ROOT,
    channels,
    classifier_blocks,
    save_teacher,
    top1,
)
from methods.soft_target.presets import TEACHER_PRESETS


def train_teacher(config: TeacherConfig, progress: bool = True) -> dict:
    """Train the teacher, evaluate it on the test split, save the checkpoint and its summary.

    Returns:
        The summary (also written beside the checkpoint as JSON): path, architecture, test top-1,
        steps, seconds.

    Raises:
        DataNotFound: when the dataset is missing.
    """
    arch = config.arch()
    data = load_images(
        config.dataset, config.data_dir or None, config.train_subset, config.seed, config.image
    )
    order = BatchOrder(len(data.train_images), config.batch, config.seed)
    steps = config.steps or config.epochs * order.steps_per_epoch
    torch.manual_seed(config.seed)
    blocks = classifier_blocks(arch)
    model = nn.Sequential(*blocks)
    optimizer = optimizer_factory(config.optimizer, config.lr, config.weight_decay)(
        list(model.named_parameters())
    )
    scheduler = warmup_cosine(config.warmup_steps, steps)(optimizer)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(
            total=steps, desc=f"teacher {arch.model}", unit="step", dynamic_ncols=True, file=sys.stderr
        )
    started = time.perf_counter()
    model.train()
    loss = torch.zeros(())
    for step, idx in enumerate(order.iterate(0, steps)):
        images = channels(data.prepare(data.train_images[idx], config.image), config.in_channels)
        loss = F.cross_entropy(model(images), data.train_labels[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        if bar is not None:
            bar.update(1)
            if step % config.log_every == 0:
                bar.set_postfix(loss=f"{float(loss.detach()):.4f}")
    if bar is not None:
        bar.close()
    train_s = time.perf_counter() - started
    test_images = channels(data.prepare(data.test_images, config.image), config.in_channels)
    accuracy = top1(model, test_images, data.test_labels)
    path = config.path()
    summary = {
        "path": str(path),
        "arch": arch.to_dict(),
        "test_top1": accuracy,
        "dataset": config.dataset,
        "train_images": len(data.train_images),
        "batch": config.batch,
        "steps": steps,
        "epochs": steps / order.steps_per_epoch,
        "train_s": train_s,
        "final_loss": float(loss.detach()),
        "parameters": sum(p.numel() for p in model.parameters()),
        "torch": str(torch.__version__),
        "date": _dt.datetime.now().isoformat(timespec="seconds"),
        "config": dataclasses.asdict(config),
    }
    save_teacher(
        path, arch, blocks, **{k: v for k, v in summary.items() if k not in ("path", "arch", "config")}
    )
    path.with_suffix(".json").write_text(json.dumps(summary, indent=1))
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry.

    Returns:
        0 on success; 2 for a bad config or missing data (one line on stderr).
    """
    parser = argparse.ArgumentParser(prog="python -m methods.soft_target.teacher", description=__doc__)
    parser.add_argument("--preset", default="cpu", help=f"one of: {', '.join(TEACHER_PRESETS)}")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        if args.preset not in TEACHER_PRESETS:
            raise ConfigError(f"unknown preset {args.preset!r}; choose one of: {', '.join(TEACHER_PRESETS)}")
        config = apply_overrides(TEACHER_PRESETS[args.preset], args.overrides)
        check_dataset(config.dataset, config.data_dir or None)
    except (ConfigError, DataNotFound, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if config.threads:
        torch.set_num_threads(config.threads)
    summary = train_teacher(config)
    try:
        shown = Path(summary["path"]).relative_to(ROOT)
    except ValueError:
        shown = summary["path"]
    print(
        f"teacher {config.teacher}: test top-1 {100 * summary['test_top1']:.2f}% after {summary['steps']} steps "
        f"({summary['train_s']:.0f} s); saved {shown}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
