"""Export a run's partitioned checkpoint as plain state dicts of the whole student and teacher.

``python -m core.export RUN_DIR [--step N] [--out DIR]`` writes ``student.pt`` and ``teacher.pt``
(default ``RUN_DIR/export/``): state dicts of ``nn.Sequential(*blocks)`` that load into the
unpartitioned model, e.g. ``nn.Sequential(*task.build_student()).load_state_dict(torch.load(
"student.pt", weights_only=True))``, for evaluation or fine-tuning without the engine.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from core.checkpoint import atomic_save, latest, merged_weights, read_manifest, step_folder


def export(run_dir: Path, step: int | None = None, out: Path | None = None) -> tuple[Path, Path]:
    """Merge a checkpoint (the latest complete one by default) into two state-dict files.

    Returns:
        Paths of the student and teacher files.

    Raises:
        FileNotFoundError: if the run has no (complete) checkpoint at that step.
    """
    folder = step_folder(run_dir, step) if step is not None else latest(run_dir)
    if folder is None:
        raise FileNotFoundError(f"{run_dir} has no complete checkpoint")
    weights = merged_weights(folder)
    out = Path(out) if out is not None else Path(run_dir) / "export"
    out.mkdir(parents=True, exist_ok=True)
    manifest = read_manifest(folder)
    student = atomic_save(weights["student"], out / "student.pt")
    teacher = atomic_save(weights["teacher"], out / "teacher.pt")
    (out / "README.txt").write_text(
        f"Exported from {folder} (step {manifest['step']}, schedule {manifest.get('schedule')}, "
        f"{manifest.get('world_size')} processes). Load with "
        "nn.Sequential(*blocks).load_state_dict(torch.load(path, weights_only=True)).\n"
    )
    return student, teacher


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m core.export", description=__doc__)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument(
        "--step", type=int, default=None, help="checkpoint step (default: the latest complete one)"
    )
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    try:
        student, teacher = export(args.run_dir, args.step, args.out)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {student} and {teacher}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
