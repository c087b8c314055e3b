"""Data-parallel replicas of a pipeline measured (``make bench-hybrid``): dp x pp beside ddp and
one pipeline on the same number of processes, on the same task, data and threads.

``python -m experiments.bench_hybrid METHOD [--dp 2] [--stages 2] [--schedules tspipe gpipe]
[--microbatches 1 2] [--warmup W] [--steps S] [--rounds R] [--out DIR] [key=value ...]``

With ``dp`` D and ``stages`` N the group has D x N processes and runs, interleaved round by
round: every schedule of ``--schedules`` as D replicas of an N-stage pipeline and as one
pipeline of D x N stages, at each micro-batch count, and ddp with D x N replicas. Each pipeline
gets the partition planned from the blocks' profiled costs (``core.partition``), as in
``experiments.bench``, whose timed worker runs every rank; a run's speed is the median of its
rounds' steady-state medians, and its rows keep every round.

The rows state the machine's core count: on a CPU with fewer cores than processes (4 processes
on 2 cores in CI) they show that the hybrid runs end to end under the same harness, not what
it is worth; its worth comes from the simulator (``make simulate``, 8 and 16 GPUs) until a
multi-GPU machine measures it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from tqdm import tqdm

from core.bench import partial_steps
from core.config import Config
from core.metrics import make_row, write_rows
from core.overrides import ConfigError, to_dict
from core.partition import plan_partition
from core.profile import profile_blocks
from core.schedules import get_schedule
from experiments.bench import BenchSettings, combine_rounds, launch_group, progress, timing_fields
from methods.registry import get_method
from methods.spec import Setup


@dataclass(frozen=True)
class HybridRun:
    """One timed run: ``dp`` replicas of a ``stages``-stage pipeline (ddp: ``stages`` replicas
    of the whole pair, ``dp`` 1) at ``microbatches`` micro-batches per replica."""

    schedule: str
    dp: int
    stages: int
    microbatches: int

    @property
    def procs(self) -> int:
        return self.dp * self.stages

    @property
    def name(self) -> str:
        return f"{self.schedule}_D{self.dp}_N{self.stages}_M{self.microbatches}"


def hybrid_runs(
    dp: int, stages: int, schedules: Sequence[str], microbatches: Sequence[int], batch: int, views: int
) -> list[HybridRun]:
    """The group's runs: each schedule as dp x pp and as one pipeline of dp x pp stages at every
    micro-batch count (shapes a schedule refuses, or whose mini-batch does not split into the
    replicas' micro-batches, are skipped with a message), then ddp over every process.

    Raises:
        ValueError: for dp or stages below 2, or a schedule that is not a pipeline schedule of
            any stage count.
    """
    if dp < 2 or stages < 2:
        raise ValueError(f"a hybrid needs dp >= 2 and stages >= 2, got dp={dp}, stages={stages}")
    out = []
    for name in schedules:
        spec = get_schedule(name)
        if spec.runner != "pipeline" or spec.stages is not None:
            raise ValueError(
                f"{name} is not a pipeline schedule of any stage count; dp x pp replicates those"
            )
        for shape in ((dp, stages), (1, dp * stages)):
            for m in microbatches:
                try:
                    spec.check(shape[1], m, None, views)
                    if batch % (shape[0] * m):
                        raise ValueError(f"batch {batch} does not split into {shape[0]} x {m} micro-batches")
                except ValueError as err:
                    progress(f"skipping {name} at dp={shape[0]}, N={shape[1]}, M={m}: {err}")
                    continue
                out.append(HybridRun(name, shape[0], shape[1], m))
    out.append(HybridRun("ddp", 1, dp * stages, 1))
    return out


def run_hybrid(
    settings: BenchSettings, dp: int, schedules: Sequence[str], work: Setup | None = None
) -> list[dict]:
    """Profile, plan a partition per stage count, run the group, write rows under ``settings.out``
    (``work``: the method's setup of the settings' config, when the caller already built it).

    Raises:
        RuntimeError: if the group fails (its output is shown).
    """
    spec = get_method(settings.method)
    config = settings.config()
    out = Path(settings.out)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    threads = max(config.run.threads, 1)
    torch.set_num_threads(threads)
    work = work or spec.setup(config)
    batch, views = work.samples_per_step, work.task.views
    runs = hybrid_runs(dp, settings.stages, schedules, settings.microbatches, batch, views)
    first = next(iter(work.batches(0, 1)))
    progress(f"profiling blocks at {batch} samples per unit")
    costs = profile_blocks(
        work.task,
        first,
        1,
        work.optimizer,
        torch.device(config.run.device),
        amp_bf16=config.pipeline.amp_bf16,
    )
    balances = {}
    for n in sorted({r.stages for r in runs if r.schedule != "ddp"}):
        part = plan_partition(
            n,
            [f + b for f, b in zip(costs.student_fwd, costs.student_bwd)],
            costs.teacher_fwd,
            work.task.teacher_rule.kind,
            student_extra=work.task.predictor_blocks,
        )
        balances[n] = (tuple(part.student), tuple(part.teacher))

    def pipeline(run: HybridRun):
        pipelined = run.schedule != "ddp"
        return replace(
            config.pipeline,
            schedule=run.schedule,
            stages=run.stages,
            dp=run.dp,
            microbatches=run.microbatches,
            backward_pieces=config.pipeline.backward_pieces
            if get_schedule(run.schedule).splits_backward
            else None,
            balance=balances[run.stages][0] if pipelined else None,
            teacher_balance=balances[run.stages][1] if pipelined else None,
            record_timeline=True,
        )

    procs = dp * settings.stages
    spec_file = out / "runs" / f"D{dp}xN{settings.stages}.spec.json"
    spec_file.write_text(
        json.dumps(
            {
                "settings": asdict(settings),
                "config": to_dict(config),
                "runs": [{"name": r.name, "busy": False, "pipeline": to_dict(pipeline(r))} for r in runs],
                "folder": str(out / "runs"),
            }
        )
    )
    progress(
        f"{len(runs)} runs on {procs} processes ({os.cpu_count()} cores) x {settings.rounds} rounds of "
        f"{settings.warmup} warm-up + {settings.steps} timed steps"
    )
    with tqdm(
        total=len(runs) * settings.rounds, desc=f"bench-hybrid {spec.name}", unit="run", file=sys.stderr
    ) as bar:
        launch_group(spec_file, procs, threads, bar)
    rows = []
    for run in runs:
        result = combine_rounds(
            [
                json.loads((out / "runs" / f"{run.name}.r{r}.json").read_text())
                for r in range(settings.rounds)
            ],
            settings.warmup,
            partial_steps(run.schedule, run.stages, work.task.teacher_rule.kind),
        )
        rows.append(_row(settings, spec, config, work, run, result))
        progress(f"{run.name}: {rows[-1]['samples_per_s']:.1f} samples/s")
    write_rows(out / "rows.jsonl", rows)
    return rows


def _row(settings: BenchSettings, spec, config: Config, work, run: HybridRun, result: dict) -> dict:
    batch = work.samples_per_step
    cores = os.cpu_count()
    return make_row(
        method=spec.name,
        method_title=spec.title,
        command=settings.command or f"python -m experiments.bench_hybrid {spec.name}",
        schedule=run.schedule,
        model=work.model,
        dp=run.dp,
        stages=run.stages,
        processes=run.procs,
        cores=cores,
        oversubscribed=run.procs > (cores or 0),
        microbatches=run.microbatches,
        global_batch=batch,
        **timing_fields(result, batch, settings),
        device=f"{config.run.device} ({max(config.run.threads, 1)} thread/process, {cores} cores)",
        balance=result["extra"].get("balance"),
        teacher_balance=result["extra"].get("teacher_balance"),
        peak_mem_gib=result["peak_gib"],
        seed=config.run.seed,
        simulated=False,
        synthetic_inputs=work.synthetic_data,
        preset=settings.preset,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.bench_hybrid",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("method")
    parser.add_argument("--preset", default=None, help="default: the method's CPU benchmark preset")
    parser.add_argument("--dp", type=int, default=2, help="replicas of the pipeline")
    parser.add_argument("--stages", type=int, default=2, help="stages of each replica")
    parser.add_argument("--schedules", nargs="+", default=["tspipe", "gpipe"])
    parser.add_argument("--microbatches", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None, help="default: results/METHOD/hybrid")
    parser.add_argument("--command", default="", help="the make target to name in rows")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of the preset")
    args = parser.parse_args(argv)
    try:
        spec = get_method(args.method)
        settings = BenchSettings(
            method=spec.name,
            preset=args.preset or spec.bench_presets.get("cpu") or spec.default_preset,
            overrides=tuple(args.overrides),
            stages=args.stages,
            microbatches=tuple(args.microbatches),
            schedules=tuple(args.schedules),
            warmup=args.warmup,
            steps=args.steps,
            rounds=args.rounds,
            out=str(args.out or Path("results") / spec.name / "hybrid"),
            command=args.command,
        )
        config = settings.config()
        if config.run.device != "cpu":
            raise ValueError("bench_hybrid runs on CPU (gloo); on GPUs use training --dp under torchrun")
        spec.check(config)  # data and teacher present
        work = spec.setup(config)
        hybrid_runs(
            args.dp, args.stages, args.schedules, args.microbatches, work.samples_per_step, work.task.views
        )
    except (ConfigError, ValueError, FileNotFoundError, KeyError) as err:
        print(f"error: {str(err).splitlines()[0]}", file=sys.stderr)
        return 2
    rows = run_hybrid(settings, args.dp, args.schedules, work)
    progress(f"{len(rows)} rows in {Path(settings.out) / 'rows.jsonl'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
