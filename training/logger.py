"""Loss lines of a run (JSON lines, TensorBoard, a progress bar) on the rank that computes them."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


class RunLogger:
    """Writes ``log.jsonl`` and TensorBoard scalars and shows a tqdm bar, on one rank only.

    Args:
        run_dir: the run folder.
        total: steps of the run (for the bar).
        active: whether this rank logs.
        log_every: a loss line every this many steps (and at every skipped step).
        start: the first step (a resumed run).
    """

    def __init__(self, run_dir: Path, total: int, active: bool, log_every: int, start: int = 0) -> None:
        self.active, self.log_every = active, log_every
        if not active:
            return
        from torch.utils.tensorboard import SummaryWriter
        from tqdm import tqdm

        self.file = (run_dir / "log.jsonl").open("a")
        self.tb = SummaryWriter(str(run_dir / "tb"))
        self.bar = tqdm(
            total=total, initial=start, desc=run_dir.name, unit="step", dynamic_ncols=True, file=sys.stderr
        )
        self.start = time.perf_counter()

    def step(self, step: int, losses: dict[str, float] | None, lr: float, skipped: int = 0) -> None:
        if not self.active or losses is None:
            return
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{losses['loss']:.4f}", skipped=skipped)
        if step % self.log_every == 0 or skipped:
            line = {
                "step": step,
                "lr": lr,
                "time_s": time.perf_counter() - self.start,
                "skipped_steps": skipped,
                **losses,
            }
            self.file.write(json.dumps(line) + "\n")
            self.file.flush()
            for key, value in losses.items():
                self.tb.add_scalar(f"train/{key}", value, step)
            self.tb.add_scalar("train/lr", lr, step)

    def scalars(self, prefix: str, values: dict[str, float], step: int) -> None:
        if self.active:
            for key, value in values.items():
                self.tb.add_scalar(f"{prefix}/{key}", value, step)

    def close(self) -> None:
        if self.active:
            self.bar.close()
            self.file.close()
            self.tb.close()
