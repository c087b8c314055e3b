"""Orchestration of a training run, outside the methods: the command line, the launch of one
process per stage, the run folder, resume, logging, evaluation and the result row.

``python -m training METHOD [--preset NAME] [--schedule S --stages N --microbatches M]
[key=value ...]`` (``key`` may be dotted: ``pipeline.max_grad_norm=1``, ``run.seed=2``,
``method.lr=0.1``; a bare key names the one field of that name). With more than one stage the
command relaunches itself with one process per stage (``core.launch``); under ``torchrun`` it
joins the job instead.
"""
