"""Compiled stages: each stage's student and teacher partitions run through ``torch.compile``.

Small micro-batches cost a pipeline the fixed overhead of every kernel launch; compiling a
stage (on CUDA ``mode="reduce-overhead"``, which captures CUDA graphs) is meant to shrink it.
The modules themselves stay as they are (parameters, names, state dicts, the optimiser and the
EMA update all see the eager modules); only the forwards the stage runs go through the
compiled wrappers, which share those parameters. ``PipelineConfig`` refuses compiling with a
split backward (its input half needs the graph of the stage's intermediates) and with the
runners that are not the pipeline interpreter.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from core.config import PipelineConfig
from core.task import map_structure


def compile_module(module: nn.Module, mode: str, backend: str = "inductor") -> Callable[..., Any]:
    """``module`` compiled with ``torch.compile`` (``mode`` ``none``: the module itself).

    ``default`` passes no mode; so does every backend but inductor (the others take none).
    """
    if mode == "none":
        return module
    options: dict[str, Any] = {"backend": backend}
    if mode != "default" and backend == "inductor":
        options["mode"] = mode
    compiled = torch.compile(module, **options)
    if options.get("mode") != "reduce-overhead":
        return compiled

    def outliving_replays(*args: Any, **kwargs: Any) -> Any:
        # a CUDA graph writes its outputs into the same memory at every replay, but a pipeline
        # keeps a micro-batch's outputs (and passes them to the next block) while the graph
        # runs again for the next one: copy them out (the H200 run failed without this)
        return map_structure(lambda t: t.clone(), compiled(*args, **kwargs))

    return outliving_replays


def compile_stage(
    student: nn.Module, teacher: nn.Module, config: PipelineConfig
) -> tuple[Callable[..., Any], Callable[..., Any]]:
    """What runs a stage's student and teacher forwards under ``config.compile``."""
    return (
        compile_module(student, config.compile, config.compile_backend),
        compile_module(teacher, config.compile, config.compile_backend),
    )


def recompile_room(limit: int = 256) -> contextlib.AbstractContextManager:
    """Room for many compiled graphs of one code object (every block of a class at every
    micro-batch size of a sweep), so none falls back to eager at torch's default limit of 8."""
    if not hasattr(torch, "_dynamo"):
        return contextlib.nullcontext()
    config = torch._dynamo.config
    names = [n for n in ("recompile_limit", "accumulated_recompile_limit") if hasattr(config, n)]
    if not names:
        names = [n for n in ("cache_size_limit", "accumulated_cache_size_limit") if hasattr(config, n)]
    return config.patch(**{n: max(limit, getattr(config, n)) for n in names})
