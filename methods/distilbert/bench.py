"""DistilBERT workload for the throughput benchmark (``experiments.benchmark``)."""

from __future__ import annotations

from experiments.benchmark import Workload
from methods.common.config import build_config
from methods.distilbert.train import METHOD, setup


def build(options: dict) -> Workload:
    """Options: ``preset`` and config ``overrides`` (``key=value`` strings)."""
    config = build_config(
        METHOD.config_cls, METHOD.presets[options["preset"]], list(options.get("overrides", []))
    )
    run = setup(config)
    return Workload(run.task, lambda steps: run.batches(0, steps), run.optimizer, run.scheduler)
