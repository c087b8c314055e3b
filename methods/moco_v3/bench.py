"""MoCo-v3 workload for the throughput benchmark (``experiments.benchmark``)."""

from __future__ import annotations

from experiments.benchmark import Workload, method_workload
from methods.moco_v3.train import METHOD


def build(options: dict) -> Workload:
    """Options: ``preset`` and config ``overrides`` (``key=value`` strings)."""
    return method_workload(METHOD, options)
