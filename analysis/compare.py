"""Comparisons of schedules from rows, as pandas operations: each schedule at its best
configuration, the groups a subject is compared with, and ratios with their spread.

A ratio of two measured rows carries an interval from their rounds (the subject's slowest
round over the other's fastest, and the reverse); when the two rows' rounds overlap, the
difference is not clear and is reported as "no clear difference", never as a speed-up.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
from scipy.stats import t as student_t

from core.schedules import SCHEDULES, order_of, schedules, subject


def subject_name() -> str:
    """The schedule under study (the registry's subject)."""
    spec = subject()
    return spec.name if spec else ""


def comparison_groups() -> dict[str, list[str]]:
    """Who the subject is compared with, by kind, from the registry: inter-layer model
    parallelism (a pipeline fixed to one micro-batch), the other pipelines of micro-batches
    (best of), each schedule with split backwards on its own, the torch peer (best of), data
    parallelism."""
    groups: dict[str, list[str]] = {}
    for spec in schedules():
        if spec.subject or spec.stages == 1:
            continue
        if spec.runner == "ddp":
            key = "ddp"
        elif spec.runner == "torch":
            key = "torch"
        elif spec.microbatches:
            key = "mp"
        elif spec.split_backward:
            key = spec.name
        else:
            key = "pipelines"
        groups.setdefault(key, []).append(spec.name)
    return {"/".join(members): members for members in groups.values()}


def best_per_schedule(
    df: pd.DataFrame, value: str = "samples_per_s", by: tuple[str, ...] = ()
) -> pd.DataFrame:
    """For every schedule (within each ``by`` group), its row with the highest ``value``."""
    keys = [*by, "schedule"]
    if df.empty:
        return df
    index = df.astype({value: float}).groupby(keys, sort=False)[value].idxmax()
    out = df.loc[index.values]
    return out.sort_values(by=[*by, "schedule"], key=lambda c: c.map(order_of) if c.name == "schedule" else c)


def best_of(df: pd.DataFrame, members: list[str], value: str = "samples_per_s") -> dict | None:
    """The best row of any of ``members`` (a group), or None."""
    group = df[df["schedule"].isin(members)]
    if group.empty:
        return None
    return group.loc[group[value].astype(float).idxmax()].to_dict()


@dataclass(frozen=True)
class Ratio:
    """A speed ratio of two rows and, for measured rows, its interval over their rounds.

    Attributes:
        value: median over median.
        low, high: the ratio's range over the rounds (None for simulated rows).
    """

    value: float
    low: float | None = None
    high: float | None = None

    @property
    def clear(self) -> bool:
        """The rounds do not overlap (always true for simulated rows)."""
        return self.low is None or self.low > 1.0 or self.high < 1.0

    def text(self) -> str:
        """``1.28`` or ``1.28 (1.21-1.33)``, or ``no clear difference (0.97-1.04)``."""
        if self.low is None:
            return f"{self.value:.3g}" if self.value < 100 else f"{self.value:,.0f}"
        spread = f"({self.low:.2f}-{self.high:.2f})"
        return f"{self.value:.2f} {spread}" if self.clear else f"no clear difference {spread}"


def ratio(a: dict, b: dict) -> Ratio:
    """``a``'s samples/s over ``b``'s, with the spread of their rounds where they have one."""
    value = a["samples_per_s"] / b["samples_per_s"]
    if a.get("samples_per_s_min") is None or b.get("samples_per_s_min") is None:
        return Ratio(value)
    return Ratio(
        value,
        a["samples_per_s_min"] / b["samples_per_s_max"],
        a["samples_per_s_max"] / b["samples_per_s_min"],
    )


def registered(name: str) -> bool:
    return name in SCHEDULES


def paired_difference(runs: pd.DataFrame, base: str, other: str) -> dict | None:
    """``other - base`` paired by seed: seeds, mean, standard deviation and the 95 % Student-t
    interval of the mean (None with fewer than two common seeds)."""
    table = runs.pivot_table(index="seed", columns="label", values="metric_value", aggfunc="first")
    if base not in table or other not in table:
        return None
    diff = (table[other] - table[base]).dropna().astype(float)
    if len(diff) < 2:
        return None
    half = float(student_t.ppf(0.975, len(diff) - 1) * diff.std() / len(diff) ** 0.5)
    mean = float(diff.mean())
    return {
        "seeds": len(diff),
        "mean": mean,
        "std": float(diff.std()),
        "low": mean - half,
        "high": mean + half,
    }


# the labels of each method's synchronous and stale-teacher accuracy runs, and the ablations
# also compared with the synchronous run (the symmetric one: the student one step late too)
SYNC_LABELS = ("sync", "kd-sequential", "distil-sequential", "sequential")
STALE_LABELS = ("tspipe", "kd-tspipe", "distil-tspipe")
ABLATION_LABELS = ("symmetric",)
# the labels of the students trained without their teacher: what distillation must beat
BASELINE_LABELS = ("student-alone", "mlm-only")


# a difference smaller than this (1 point of a metric in [0, 1]) counts as no loss: "no loss"
# is said only where the whole 95 % interval of the paired difference lies above minus it
NO_LOSS_MARGIN = 0.01


def verdict(d: dict | None, margin: float = NO_LOSS_MARGIN) -> str:
    """What a paired difference ``other - base`` (of a metric in [0, 1]) supports at 95 %: a loss
    (the interval below 0), a gain (above 0), no loss (above ``-margin``), or none of these."""
    if d is None:
        return "too few seeds"
    if d["high"] < 0:
        return "loss: the interval lies below 0"
    if d["low"] > 0:
        return "gain: the interval lies above 0"
    if d["low"] >= -margin:
        return f"no loss: the interval lies above -{100 * margin:g} point"
    return f"not shown: the interval reaches {100 * d['low']:+.2f} points"


def gain_verdict(d: dict | None) -> str:
    """What a paired difference ``distilled - baseline`` supports at 95 %: a gain (the interval
    above 0), a loss (below 0), or no gain shown."""
    if d is None:
        return "too few seeds"
    if d["low"] > 0:
        return "gain: the interval lies above 0"
    if d["high"] < 0:
        return "loss: the interval lies below 0"
    return f"no gain shown: the interval reaches {100 * d['low']:+.2f} points"
