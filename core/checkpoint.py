"""Checkpoints of a multi-process run: one file per rank, a manifest, atomic writes, resume.

Layout::

    RUN_DIR/checkpoints/step0000040/rank0.pt   every rank's own state (runner.checkpoint_state)
                                   rank1.pt
                                   manifest.json  written last, by rank 0: step, world size,
                                                  schedule, micro-batches, balances, versions

A checkpoint counts (:func:`latest`) only when its manifest and every rank file exist. Files are
written to a temporary name, flushed and renamed, so a crash mid-write never leaves a corrupt
file under the final name. Rank files hold tensors and plain containers only and are read with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

# what must match between a checkpoint and the run resuming from it
MANIFEST_KEYS = (
    "method",
    "schedule",
    "world_size",
    "dp",
    "microbatches",
    "backward_pieces",
    "teacher_lookahead",
    "balance",
    "teacher_balance",
)

# what a manifest written before a key existed means by its absence
MANIFEST_DEFAULTS = {"dp": 1}


def atomic_save(obj: Any, path: Path) -> Path:
    """``torch.save`` to a temporary file, fsync, then rename over ``path``."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        torch.save(obj, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return path


def atomic_write_text(text: str, path: Path) -> Path:
    """Write text atomically (temporary file, fsync, rename)."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return path


def step_folder(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"step{step:07d}"


def save(run_dir: Path, step: int, rank_state: dict[str, Any], manifest: dict[str, Any]) -> Path:
    """Save this rank's state for ``step`` (every rank calls it); rank 0 writes the manifest once
    all ranks have written theirs.

    Returns:
        The checkpoint folder.
    """
    folder = step_folder(run_dir, step)
    folder.mkdir(parents=True, exist_ok=True)
    rank = dist.get_rank() if dist.is_initialized() else 0
    atomic_save({"step": step, **rank_state}, folder / f"rank{rank}.pt")
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()
    if rank == 0:
        atomic_write_text(
            json.dumps({"step": step, **manifest}, indent=1, default=list), folder / "manifest.json"
        )
    return folder


def complete(folder: Path) -> bool:
    """True when ``folder`` holds a manifest and every rank file it announces."""
    manifest = folder / "manifest.json"
    if not manifest.exists():
        return False
    try:
        world = json.loads(manifest.read_text())["world_size"]
    except (ValueError, KeyError):
        return False
    return all((folder / f"rank{r}.pt").exists() for r in range(world))


def latest(run_dir: Path) -> Path | None:
    """The newest complete checkpoint folder of a run, or None."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return None
    for folder in sorted(root.glob("step*"), reverse=True):
        if complete(folder):
            return folder
    return None


def read_manifest(folder: Path) -> dict[str, Any]:
    return json.loads((Path(folder) / "manifest.json").read_text())


def check_manifest(found: dict[str, Any], expected: dict[str, Any]) -> None:
    """Refuse a resume whose checkpoint was made by a different setup.

    Raises:
        ValueError: naming every differing key, its checkpoint and its current value.
    """
    diffs = [
        f"{key}: checkpoint {found.get(key, MANIFEST_DEFAULTS.get(key))!r}, now {expected.get(key)!r}"
        for key in MANIFEST_KEYS
        if key in expected and _norm(found.get(key, MANIFEST_DEFAULTS.get(key))) != _norm(expected.get(key))
    ]
    if diffs:
        raise ValueError(
            "cannot resume: the checkpoint was made with a different setup ("
            + "; ".join(diffs)
            + "); resume with the same settings or start a new run folder"
        )


def _norm(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def load(folder: Path, rank: int) -> dict[str, Any]:
    """One rank's state from a checkpoint folder (``weights_only``)."""
    return torch.load(Path(folder) / f"rank{rank}.pt", weights_only=True, map_location="cpu")


def merged_weights(folder: Path) -> dict[str, dict[str, torch.Tensor]]:
    """Student and teacher of the whole model, merged from every rank of a checkpoint: plain
    state dicts of ``nn.Sequential`` models of all blocks (keys ``"<block>.<name>"``).

    Raises:
        FileNotFoundError: if the checkpoint is incomplete.
    """
    folder = Path(folder)
    if not complete(folder):
        raise FileNotFoundError(f"{folder} is not a complete checkpoint (manifest or rank files missing)")
    world = read_manifest(folder)["world_size"]
    out: dict[str, dict[str, torch.Tensor]] = {"student": {}, "teacher": {}}
    for rank in range(world):
        stage = load(folder, rank)["stage"]
        for kind in out:
            out[kind].update(stage[kind])
    return out
