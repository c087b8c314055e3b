"""One rank of a training run: join the job, build the method's run, resume, train with
evaluations and checkpoints, and (rank 0) write the result row."""

from __future__ import annotations

import json
import logging
import statistics
import time

import torch
import torch.distributed as dist

from core import checkpoint
from core.config import Config
from core.launch import init_distributed
from core.metrics import make_row
from core.overrides import to_json
from core.runtime import gather_state, make_runner
from methods.spec import MethodSpec
from training import folder
from training.delay import delayed
from training.faults import Faults
from training.logger import RunLogger

log = logging.getLogger(__name__)


def run(spec: MethodSpec, config: Config, student_delay: int = 0) -> dict | None:
    """One rank of a training run (``student_delay``: apply the student's gradients that many
    steps late, an accuracy ablation: ``training.delay``).

    Returns:
        On rank 0 the result row (also written to ``row.json``); None elsewhere.
    """
    pipeline, settings = config.pipeline, config.run
    rank = init_distributed(settings.device, pipeline.timeout_s, pipeline.transport)
    if settings.threads:
        torch.set_num_threads(settings.threads)
    torch.set_default_dtype(getattr(torch, settings.dtype))
    run_dir = folder.agree_run_dir(spec.name, config)
    run_dir.mkdir(parents=True, exist_ok=True)
    if rank.rank == 0:
        (run_dir / "config.json").write_text(to_json(config))
    setup = spec.setup(config)
    faults = Faults()
    optimizer = delayed(setup.optimizer, student_delay)
    runner = make_runner(faults.wrap(setup.task), pipeline, rank.device, optimizer, setup.scheduler)
    manifest = folder.manifest(spec.name, config, runner, rank.world, student_delay)
    steps, epoch_steps = setup.steps, setup.steps_per_epoch
    start = 0
    resume = folder.resume_folder(run_dir, settings.resume)
    if resume is not None:
        found = checkpoint.read_manifest(resume)
        checkpoint.check_manifest(found, manifest)
        folder.check_student_delay(found, manifest)
        saved = checkpoint.load(resume, rank.rank)
        runner.load_checkpoint_state(saved["state"])
        start = saved["step"]
        log.info("resuming from %s at step %d", resume, start)
    every = settings.checkpoint_every
    runner.keep_teacher_at(lambda b: b + 1 == steps or bool(every and (b + 1) % every == 0))
    logger = RunLogger(run_dir, steps, rank.rank == runner.loss_rank, settings.log_every, start)
    evals: list[dict] = []

    def evaluate(step: int) -> None:
        state = gather_state(runner.stage_state())
        if rank.rank == 0 and setup.evaluate is not None:
            started = time.perf_counter()
            metrics = setup.evaluate(state)
            line = {
                "step": step,
                "epoch": step / epoch_steps,
                "eval_s": time.perf_counter() - started,
                **metrics,
            }
            evals.append(line)
            with (run_dir / "eval.jsonl").open("a") as fh:
                fh.write(json.dumps(line) + "\n")
            logger.scalars("eval", metrics, step)
        folder.barrier()

    def on_step(b: int, losses: dict[str, float] | None) -> None:
        done = b + 1
        logger.step(b, losses, runner.optimizer.param_groups[0]["lr"], runner.skipped_steps)
        if settings.eval_every and done % (settings.eval_every * epoch_steps) == 0 and done < steps:
            evaluate(done)
        if every and done % every == 0 and done < steps:
            folder.save_checkpoint(run_dir, runner, done, config, manifest)
        faults.before_step(done, rank.rank, run_dir)

    faults.before_step(start, rank.rank, run_dir)
    history = (
        runner.run(setup.batches(start, steps - start), steps - start, on_step, start=start)
        if start < steps
        else None
    )
    logger.close()
    evaluate(steps)
    if start < steps:
        folder.save_checkpoint(run_dir, runner, steps, config, manifest)
    runner.close()
    final_loss = [history.losses[-1]["loss"] if history and history.losses else None]
    if dist.is_initialized() and rank.world > 1:  # rows come from rank 0
        dist.broadcast_object_list(final_loss, src=runner.loss_rank)
    if rank.rank != 0:
        if dist.is_initialized():
            dist.destroy_process_group()
        return None
    ends = history.step_end_s if history else []
    durations = [b - a for a, b in zip(ends, ends[1:])]
    step_s = statistics.median(durations[min(2, len(durations) - 1) :]) if durations else float("nan")
    final = evals[-1] if evals else {}
    row = make_row(
        method=spec.name,
        schedule=pipeline.schedule,
        model=setup.model,
        stages=pipeline.stages,
        dp=pipeline.dp,
        microbatches=pipeline.microbatches,
        global_batch=setup.samples_per_step,
        device=torch.cuda.get_device_name(rank.device) if rank.device.type == "cuda" else "cpu",
        samples_per_s=setup.samples_per_step / step_s if durations else None,
        step_ms=step_s * 1e3 if durations else None,
        metric=setup.metric,
        metric_value=final.get(setup.metric) if setup.metric else None,
        seed=settings.seed,
        simulated=False,
        steps=steps,
        epochs=steps / epoch_steps,
        run_dir=str(run_dir),
        evals=evals,
        final_loss=final_loss[0],
        backward_pieces=pipeline.pieces,
        resumed_from=start or None,
        skipped_steps=runner.skipped_steps,
        **({"student_delay": student_delay} if student_delay else {}),
        config_digest=folder.config_digest(config, student_delay),
    )
    (run_dir / "row.json").write_text(json.dumps(row, indent=1))
    if dist.is_initialized():
        dist.destroy_process_group()
    return row
