"""Calibration files: per-block costs of a teacher/student pair measured on a GPU (with a
micro-batch sweep, the whole networks and one sequential step), read into a
:class:`Calibration` under one of two cost models (``core.paper_scale`` simulates them).

Field names (``experiments/calibration/h200/README.md``): ``teacher_fwd_ms``, ``student_fwd_ms``,
``student_fwdbwd_ms``, ``ema_ms`` at the full ``batch``; ``seq_step_ms`` one sequential step;
``teacher_blocks`` / ``student_blocks``: per-block ``fwd_ms``, ``bwd_ms``, ``out_shape`` at batch
``microbatch``; ``amp_bf16``. A ``*_mbsweep_*`` file adds per-block costs at several micro-batch
sizes.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

COST_MODELS = ("realistic", "linear")
_FIT_POINTS = 3  # the largest sweep sizes a fixed + per-sample model is fitted to


@dataclass(frozen=True)
class Measured:
    """Whole-network costs a calibration measured at its full batch (one view), and one
    sequential training step.

    Attributes:
        teacher_fwd_ms, student_fwd_ms, student_fwdbwd_ms: the whole teacher forward, student
            forward, and student forward + backward.
        seq_step_ms: one sequential teacher-student step (teacher forward, student forward and
            backward, loss, optimiser, EMA) of one view.
    """

    teacher_fwd_ms: float
    student_fwd_ms: float
    student_fwdbwd_ms: float
    seq_step_ms: float


def fit_fixed_per_sample(sizes: Sequence[float], costs: Sequence[float]) -> tuple[float, float]:
    """Least-squares ``cost = fixed + per_sample x size`` through the points, both terms kept
    non-negative.

    Returns:
        ``(fixed, per_sample)``.
    """
    n = len(sizes)
    mx, my = sum(sizes) / n, sum(costs) / n
    var = sum((x - mx) ** 2 for x in sizes)
    slope = sum((x - mx) * (y - my) for x, y in zip(sizes, costs)) / var if var > 0 else 0.0
    slope = max(slope, 0.0)
    fixed = max(my - slope * mx, 0.0)
    if fixed == 0.0 and var > 0:  # refit through the origin
        slope = sum(x * y for x, y in zip(sizes, costs)) / sum(x * x for x in sizes)
    return fixed, slope


@dataclass(frozen=True)
class Calibration:
    """Per-block costs of one teacher/student pair, read from a calibration JSON file.

    Two cost models (``model``):

    - ``realistic`` (the default for every paper-scale claim): per-block costs interpolated from
      the pair's micro-batch sweep (a fixed + per-sample fit beyond its largest size), or scaled
      linearly where the pair has no sweep (``sweep`` None: say so beside its numbers); then
      scaled per kind (teacher forward, student forward, student backward) so that the blocks
      at the full batch add up to the whole-network costs the calibration measured. A block
      timed alone pays its own launch and sync; the whole network does not.
    - ``linear``: the per-block costs at ``microbatch`` scaled linearly, unscaled otherwise:
      every micro-batch size equally efficient, so efficiency measures the schedule alone (an
      ablation, never a claim).

    Attributes:
        pair: the pair's name, e.g. ``"byol_resnet50"``.
        batch: mini-batch samples the file was measured for (images or sequences).
        microbatch: samples at which the per-block costs were measured.
        amp_bf16: whether bf16 autocast was on (2-byte activations) or not (4-byte).
        views: views per sample (2 for BYOL and MoCo-v3, whose costs are per view).
        teacher: ``"ema"`` or ``"frozen"``.
        teacher_fwd, student_fwd, student_bwd: ms per block at ``microbatch`` samples.
        teacher_out, student_out: elements per sample of each block's output.
        ema_ms: one EMA update of the whole teacher.
        sweep: the micro-batch sweep, ``{samples: (teacher_fwd, student_fwd, student_bwd)}``.
        source: file the costs came from.
        student_params, teacher_params: parameter counts.
        measured: the whole-network costs at the full batch (None: not in the file).
        model: ``realistic`` or ``linear``.
    """

    pair: str
    batch: int
    microbatch: int
    amp_bf16: bool
    views: int
    teacher: str
    teacher_fwd: tuple[float, ...]
    student_fwd: tuple[float, ...]
    student_bwd: tuple[float, ...]
    teacher_out: tuple[int, ...]
    student_out: tuple[int, ...]
    ema_ms: float
    sweep: dict[int, tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]]] | None
    source: str
    student_params: int = 0
    teacher_params: int = 0
    measured: Measured | None = None
    model: str = "realistic"

    def __post_init__(self) -> None:
        if self.model not in COST_MODELS:
            raise ValueError(f"cost model must be one of {COST_MODELS}, got {self.model!r}")

    @property
    def method(self) -> str:
        """Project method name of the pair."""
        for prefix, method in (("byol", "byol"), ("mocov3", "moco_v3"), ("kd", "soft_target")):
            if self.pair.startswith(prefix):
                return method
        return "distilbert" if self.pair.startswith("distil") else self.pair

    @property
    def cost_model(self) -> str:
        """``linear``, ``realistic`` (with a sweep) or ``realistic, no sweep``."""
        if self.model == "linear":
            return "linear"
        return "realistic" if self.sweep else "realistic, no sweep"

    def _raw(self, samples: float) -> list[list[float]]:
        """Per-block costs at ``samples`` before scaling."""
        if self.model == "linear" or not self.sweep:
            scale = samples / self.microbatch
            return [
                [c * scale for c in kind] for kind in (self.teacher_fwd, self.student_fwd, self.student_bwd)
            ]
        sizes = sorted(self.sweep)
        if samples <= sizes[0]:  # launch-bound below the sweep: the smallest size's cost
            return [list(kind) for kind in self.sweep[sizes[0]]]
        if samples >= sizes[-1]:
            fits = self.fits()
            return [[a + b * samples for a, b in kind] for kind in fits]
        hi = next(s for s in sizes if s >= samples)
        lo = max(s for s in sizes if s <= samples)
        w = (samples - lo) / (hi - lo) if hi > lo else 0.0
        return [[x + w * (y - x) for x, y in zip(a, b)] for a, b in zip(self.sweep[lo], self.sweep[hi])]

    @functools.cached_property
    def _fits(self) -> list[list[tuple[float, float]]]:
        sizes = sorted(self.sweep)[-_FIT_POINTS:]
        return [
            [
                fit_fixed_per_sample(sizes, [self.sweep[s][k][i] for s in sizes])
                for i in range(len(self.sweep[sizes[0]][k]))
            ]
            for k in range(3)
        ]

    def fits(self) -> list[list[tuple[float, float]]]:
        """Per kind and block, the ``(fixed, per_sample)`` fit beyond the sweep (sweep only)."""
        if not self.sweep:
            raise ValueError(f"{self.source} has no micro-batch sweep to fit")
        return self._fits

    @functools.cached_property
    def scales(self) -> tuple[float, float, float]:
        """Factors on (teacher forward, student forward, student backward) block costs that make
        the blocks at the full batch add up to the measured whole networks (1 in the linear
        model, or without measurements)."""
        if self.model == "linear" or self.measured is None:
            return (1.0, 1.0, 1.0)
        t, f, b = (sum(kind) for kind in self._raw(self.batch))
        m = self.measured
        return (m.teacher_fwd_ms / t, m.student_fwd_ms / f, (m.student_fwdbwd_ms - m.student_fwd_ms) / b)

    def block_costs(self, samples: float) -> tuple[list[float], list[float], list[float]]:
        """Per-block (teacher forward, student forward, student backward) ms at ``samples``
        under the calibration's cost model."""
        raw = self._raw(samples)
        t, f, b = ([c * k for c in kind] for kind, k in zip(raw, self.scales))
        return t, f, b

    @property
    def loss_ms(self) -> float:
        """What the measured sequential step spends beyond the measured networks and the EMA
        update (the loss and the optimiser), for the whole mini-batch (every view), charged to
        the loss on the last stage; 0 in the linear model or without measurements."""
        if self.model == "linear" or self.measured is None:
            return 0.0
        m = self.measured
        return self.views * max(0.0, m.seq_step_ms - m.teacher_fwd_ms - m.student_fwdbwd_ms - self.ema_ms)

    def microbatch_penalty(self, samples: float) -> float | None:
        """Work per sample at ``samples`` over work per sample at the full batch.

        Returns:
            None in the linear model (no penalty by construction).
        """
        if self.model == "linear":
            return None

        def per_sample(n: float) -> float:
            return sum(sum(x) for x in self.block_costs(n)) / n

        return per_sample(samples) / per_sample(self.batch)

    def with_model(self, model: str) -> Calibration:
        """The same pair under another cost model."""
        return replace(self, model=model)


def _elements(shape: Sequence[int]) -> int:
    return int(math.prod(shape[1:]))


def sweep_file(base: Path) -> Path:
    """The micro-batch sweep file beside a base calibration file (``x_bf16.json`` ->
    ``x_mbsweep_bf16.json``)."""
    stem, _, dtype = base.stem.rpartition("_")
    return base.with_name(f"{stem}_mbsweep_{dtype}.json")


def load_calibration(path: str | Path, model: str = "realistic") -> Calibration:
    """Read a calibration file with its micro-batch sweep (a base file finds its sweep beside it;
    a ``*_mbsweep_*`` file is read with its base file).

    Args:
        path: a base or a sweep file.
        model: ``realistic`` or ``linear`` (see :class:`Calibration`).

    Returns:
        The :class:`Calibration`.

    Raises:
        FileNotFoundError: if the file (or a sweep's base file) is missing.
        ValueError: if the file lacks the fields the calibration README describes.
    """
    path = Path(path)
    sweep = None
    if "_mbsweep_" in path.name:
        sweep_path, base_path = path, path.with_name(path.name.replace("_mbsweep", ""))
        if not base_path.exists():
            raise FileNotFoundError(f"sweep file {path} needs its base file {base_path} beside it")
    else:
        sweep_path, base_path = sweep_file(path), path
        if not base_path.exists():
            raise FileNotFoundError(f"calibration file {path} not found")
    if sweep_path.exists():
        data = json.loads(sweep_path.read_text())
        sweep = {
            int(k): (tuple(v["teacher_fwd_ms"]), tuple(v["student_fwd_ms"]), tuple(v["student_bwd_ms"]))
            for k, v in data["sweep"].items()
        }
    data = json.loads(base_path.read_text())
    try:
        tb, sb = data["teacher_blocks"], data["student_blocks"]
        pair = data["pair"]
        ssl = pair.startswith(("byol", "mocov3"))
        measured = None
        if all(k in data for k in ("teacher_fwd_ms", "student_fwd_ms", "student_fwdbwd_ms", "seq_step_ms")):
            measured = Measured(
                float(data["teacher_fwd_ms"]),
                float(data["student_fwd_ms"]),
                float(data["student_fwdbwd_ms"]),
                float(data["seq_step_ms"]),
            )
        cal = Calibration(
            pair=pair,
            batch=int(data["batch"]),
            microbatch=int(data["microbatch"]),
            amp_bf16=bool(data["amp_bf16"]),
            views=2 if ssl else 1,
            teacher="ema" if ssl else "frozen",
            teacher_fwd=tuple(tb["fwd_ms"]),
            student_fwd=tuple(sb["fwd_ms"]),
            student_bwd=tuple(sb["bwd_ms"]),
            teacher_out=tuple(_elements(s) for s in tb["out_shape"]),
            student_out=tuple(_elements(s) for s in sb["out_shape"]),
            ema_ms=float(data.get("ema_ms", 0.0)) if ssl else 0.0,
            sweep=sweep,
            source=path.name,
            student_params=int(float(data.get("student_params_M", 0.0)) * 1e6),
            teacher_params=int(float(data.get("teacher_params_M", 0.0)) * 1e6),
            measured=measured,
            model=model,
        )
    except KeyError as err:
        raise ValueError(
            f"{path}: missing calibration field {err}; see experiments/calibration/h200/README.md for the format"
        ) from None
    if sweep and any(len(v[0]) != len(cal.teacher_fwd) for v in sweep.values()):
        raise ValueError(f"{path}: sweep block counts differ from {base_path.name}")
    return cal
