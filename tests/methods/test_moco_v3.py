"""MoCo-v3: the InfoNCE loss, its micro-batch decomposition, every schedule against the
single-process reference, in-batch negatives under pipelines and ddp, and training runs.

The multi-process tests share one 2-process launch: this module run as
``python -m core.launch --nproc 2 tests.methods.test_moco_v3 OUT`` trains the ``tiny`` preset
(float64, 3 steps) under every 2-process schedule through the trainer of ``training.run``
(run folder, checkpoints, row), and records the logits the loss saw. With ``--nproc 4 ... OUT
dp`` it runs :data:`DP_CASES` as 2 replicas of a 2-stage pipeline instead.
"""

import dataclasses
import functools
import json
import math
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from core.overrides import ConfigError, apply_overrides
from core.schedules import get_schedule
from methods.moco_v3 import METHOD, setup, task_for
from methods.moco_v3.moco_v3 import (
    MocoV3Task,
    contrastive_loss,
    info_nce_from_logits,
    info_nce_logits,
    moco_v3_loss,
)
from tests.conftest import launch_module
from tests.core.test_runtime_dist import relative_difference
from tests.core.toy import reference
from training.cli import main
from training.run import run

STEPS = 3
# (schedule, micro-batches) of the shared 2-process launch
CASES = (
    ("tspipe", 2),
    ("gpipe", 2),
    ("1f1b", 2),
    ("mp", 1),
    ("ddp", 1),
    ("torch-gpipe", 2),
    ("torch-1f1b", 2),
)
# (schedule, micro-batches) of the 4-process launch: dp 2 x pp 2 (a whole-batch loss and a
# per-micro-batch one)
DP_CASES = (("tspipe", 2), ("1f1b", 2))
# float64 and SGD: the runs equal the reference to rounding. (AdamW turns the rounding noise of
# gradients that are zero in exact arithmetic, such as the key bias of attention or a bias
# before BatchNorm, into lr-sized steps, about 1e-10 relative after three steps.)
EXACT = ["optimizer=sgd", "lr=0.05", f"steps={STEPS}", "dtype=float64", "log_every=1"]


# ---- the loss ----------------------------------------------------------------------------------


def direct_ctr(q, k, t):
    """MoCo-v3's ctr(q, k) written out: -log softmax of the positive, mean, times 2T."""
    total = 0.0
    for i in range(len(q)):
        sims = [float(F.cosine_similarity(q[i], k[j], dim=0)) / t for j in range(len(k))]
        total += -(sims[i] - math.log(sum(math.exp(s) for s in sims)))
    return total / len(q) * 2 * t


def test_info_nce_equals_a_direct_implementation_and_is_symmetric():
    torch.manual_seed(0)
    q1, q2, k1, k2 = (torch.randn(6, 5, dtype=torch.float64) for _ in range(4))
    for t in (0.2, 1.0):
        want = direct_ctr(q1, k2, t) + direct_ctr(q2, k1, t)
        assert float(moco_v3_loss([q1, q2], [k1, k2], t)) == pytest.approx(want, rel=1e-12)
        # swapping the views swaps the two terms: same loss
        assert float(moco_v3_loss([q2, q1], [k2, k1], t)) == pytest.approx(want, rel=1e-12)
    # scale invariance (normalised features), and a perfect match of well separated keys
    assert float(contrastive_loss(3 * q1, k2, 0.2)) == pytest.approx(float(contrastive_loss(q1, k2, 0.2)))
    eye = torch.eye(4, dtype=torch.float64)
    assert float(contrastive_loss(eye, eye, 0.2)) == pytest.approx(
        0.4 * math.log(1 + 3 * math.exp(-5)), rel=1e-12
    )


def test_temperature_is_handled_as_in_the_paper():
    # ctr = CrossEntropy(q.k / T, positives) * 2T; the 2T factor keeps the loss of chance-level
    # (all-equal) logits at 2T log N, and the gradient scale independent of T
    q = torch.ones(8, 3, dtype=torch.float64)
    for t in (0.1, 0.2, 0.5):
        assert float(contrastive_loss(q, q, t)) == pytest.approx(2 * t * math.log(8), rel=1e-12)
    torch.manual_seed(1)
    q, k = torch.randn(5, 4, dtype=torch.float64), torch.randn(5, 4, dtype=torch.float64)
    logits = F.normalize(q, dim=1) @ F.normalize(k, dim=1).T / 0.2
    torch.testing.assert_close(info_nce_logits(q, k, 0.2), logits)
    assert float(contrastive_loss(q, k, 0.2)) == pytest.approx(
        float(F.cross_entropy(logits, torch.arange(5)) * 0.4), rel=1e-12
    )


def test_microbatch_terms_sum_to_the_loss_values_and_gradients():
    task = MocoV3Task()
    torch.manual_seed(2)
    n = 11
    s = [torch.randn(n, 6, dtype=torch.float64, requires_grad=True) for _ in range(2)]
    t = [torch.randn(n, 6, dtype=torch.float64) for _ in range(2)]
    whole = task.loss(s, t, n)["loss"]
    grads = torch.autograd.grad(whole, s)
    slices = [slice(0, 4), slice(4, 8), slice(8, 11)]  # core.task.unit_slices(11, 3)
    parts = [task.microbatch_loss(v, m, 3, s[v][sl], t, n) for v in range(2) for m, sl in enumerate(slices)]
    assert float(sum(parts).detach()) == pytest.approx(float(whole.detach()), rel=1e-12)
    part_grads = torch.autograd.grad(sum(parts), s)
    for a, b in zip(part_grads, grads):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-15)
    # the keys are the whole mini-batch: a unit's loss changes when a key outside it changes
    t2 = [t[0].clone(), t[1].clone()]
    t2[1][10] += 1.0
    with torch.no_grad():
        assert float(task.microbatch_loss(0, 0, 3, s[0][:4], t2, n)) != float(
            task.microbatch_loss(0, 0, 3, s[0][:4], t, n)
        )


# ---- the task and its config -------------------------------------------------------------------


def tiny(*overrides):
    return apply_overrides(METHOD.preset("tiny"), list(overrides))


def test_units_projector_predictor_and_momentum_encoder():
    task = setup(tiny()).task
    student = task.build_student()
    teacher = task.build_teacher(student)
    assert len(student) == 1 + 2 + 2 and len(teacher) == len(student) - 1  # embed, blocks, head, predictor
    head, predictor = student[-2], student[-1]
    linears = [m for m in head.modules() if isinstance(m, torch.nn.Linear)]
    norms = [m for m in head.modules() if isinstance(m, torch.nn.BatchNorm1d)]
    assert len(linears) == 3 and len(norms) == 3 and not norms[-1].affine  # MoCo-v3's projector
    assert len([m for m in predictor.modules() if isinstance(m, torch.nn.Linear)]) == 2
    assert not any(p.requires_grad for p in student[0].vit.patch_embed.parameters())  # frozen, random
    assert any(p.requires_grad for p in student[0].parameters())  # class token, position embedding
    for s, t in zip(student, teacher):
        assert s is not t and all(
            torch.equal(a, b) for a, b in zip(s.state_dict().values(), t.state_dict().values())
        )
    halves = setup(tiny("half_blocks=true", "frozen_patch_projection=false")).task.build_student()
    assert len(halves) == 1 + 4 + 2
    assert all(p.requires_grad for p in halves[0].parameters())
    assert task.teacher_rule.kind == "ema" and task.teacher_rule.momentum(0) == pytest.approx(0.99)
    assert task.teacher_rule.momentum(STEPS) == pytest.approx(1.0)
    x = torch.randn(4, 3, 16, 16)
    encoder = MocoV3Task.encoder(student)
    encoder.eval()
    assert encoder(x).shape == (4, 32)


def test_paper_presets_are_valid():
    for name in ("vit_small-224-16gpu", "vit_base-224-8gpu", "vit_large-224-16gpu"):
        config = METHOD.preset(name)
        assert config.method.half_blocks and config.method.image == 224 and config.pipeline.amp_bf16
    # ViT-S/16 at half-block grain: embedding, 24 halves, head (+ predictor) -> 16 stages fit
    config = METHOD.preset("vit_small-224-16gpu")
    task = task_for(config, 10)
    assert len(task.build_teacher(task.build_student())) == 26


def test_bench_models_give_valid_configs():
    # the benchmark runs a preset: the CPU one (the small ViT on Fashion-MNIST) and the paper's
    # timm sizes (synthetic 224x224 images, half-block units); every one is a valid config
    names = {*METHOD.bench_presets.values(), *(n for n in METHOD.presets if n.startswith("vit_"))}
    assert {"bench", "vit_small-224-4gpu", "vit_base-224-4gpu", "vit_large-224-4gpu"} <= names
    for name in names:
        config = METHOD.preset(name).method
        gpu = name != "bench"
        model = name.split("-")[0]
        assert (config.image, config.batch) == ((224, 256) if gpu else (32, 64))
        assert config.half_blocks == gpu and (config.dataset == "synthetic") == gpu
        assert config.vit == (model if gpu else "vit_tiny_patch16_224")


@pytest.mark.parametrize(
    "args, message",
    [
        (["patch=5"], "not a multiple of patch"),
        (["heads=3"], "must divide embed_dim"),
        (["temperature=0"], "temperature must be > 0"),
        (["vit=resnet_nonsense"], "not a timm model"),
        (["batch=6", "--microbatches", "4"], "fewer than 2 images per micro-batch piece"),
        (["optimizer=adam"], "optimizer must be one of"),
    ],
)
def test_bad_config_exits_2_with_one_line(args, message, capsys):
    assert main(["moco_v3", "--preset", "tiny", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and message in err and "\n" not in err


def test_config_errors_are_config_errors():
    with pytest.raises(ConfigError, match="not a multiple of patch"):
        tiny("image=18")


# ---- every schedule on 2 processes --------------------------------------------------------------

_RECORD: list = []


class RecordingTask(MocoV3Task):
    """Records the logits each loss call saw: (view, micro-batch, queries x keys)."""

    def loss(self, student, teacher, context):
        out = super().loss(student, teacher, context)
        for v in range(2):
            _RECORD.append((v, 0, self.logits(student[v], teacher[1 - v]).detach().clone()))
        return out

    def microbatch_loss(self, view, microbatch, microbatches, student, teacher, context):
        _RECORD.append((view, microbatch, self.logits(student, teacher[1 - view]).detach().clone()))
        return super().microbatch_loss(view, microbatch, microbatches, student, teacher, context)


def recording_setup(config):
    out = setup(config)
    out.task.__class__ = RecordingTask
    return out


RECORDING = dataclasses.replace(METHOD, default_preset="tiny", setup=recording_setup)


def logits_by_step(records, microbatches):
    """Per step, per view: the full logits matrix assembled from the recorded calls."""
    per_step = 2 * microbatches
    if len(records) == 2 * STEPS:  # whole-batch loss: one call per view and step
        per_step = 2
    # torch.distributed.pipelining infers shapes on its first step with one extra loss call
    extra = len(records) - per_step * STEPS
    assert extra in (0, 1)
    records = records[extra:]
    out = []
    for s in range(STEPS):
        chunk = records[s * per_step : (s + 1) * per_step]
        out.append(
            [
                torch.cat([x for _, _, x in sorted((r for r in chunk if r[0] == v), key=lambda r: r[1])])
                for v in range(2)
            ]
        )
    return out


def worker(out: Path, dp: bool = False) -> None:
    """One rank of the shared launch: every case through the trainer, logits recorded."""
    import torch.distributed as dist

    destroy = dist.destroy_process_group
    dist.destroy_process_group = lambda *a, **k: None  # keep the group for the next case
    try:
        for schedule, micro in DP_CASES if dp else CASES:
            _RECORD.clear()
            folder = out / schedule
            config = tiny(
                *EXACT,
                f"schedule={schedule}",
                "stages=2",
                f"dp={2 if dp else 1}",
                f"microbatches={micro}",
                f"run_dir={folder}",
            )
            started = time.perf_counter()
            run(RECORDING, config)
            print(f"[worker] {schedule}: {time.perf_counter() - started:.1f} s", file=sys.stderr)
            if _RECORD:
                torch.save(list(_RECORD), folder / f"logits_rank{dist.get_rank()}.pt")
            dist.barrier()
    finally:
        dist.destroy_process_group = destroy
    destroy()


@pytest.fixture(scope="module")
def world2(tmp_path_factory):
    out = tmp_path_factory.mktemp("moco2")
    proc = launch_module("tests.methods.test_moco_v3", 2, str(out), timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out


def merged(run_dir: Path) -> dict:
    state = {"student": {}, "teacher": {}}
    for path in sorted((run_dir / "checkpoints" / f"step{STEPS:07d}").glob("rank*.pt")):
        stage = torch.load(path, weights_only=True)["stage"]
        for kind in state:
            state[kind].update(stage[kind])
    return state


def expected(schedule: str, micro: int, staleness: int | None = None):
    """The reference run (float64) with the case's BatchNorm batches: ``micro`` micro-batches
    (ddp: one per replica) and the schedule's backward pieces; logits recorded."""
    pipeline = tiny(*EXACT, f"schedule={schedule}", "stages=2", f"microbatches={micro}").pipeline
    units = micro * pipeline.replicas
    stale = get_schedule(schedule).staleness("ema") if staleness is None else staleness
    return _reference(units, pipeline.pieces, stale)


@functools.cache
def _reference(units: int, pieces: int, staleness: int):
    previous, threads = torch.get_default_dtype(), torch.get_num_threads()
    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(1)  # tiny tensors: more threads only contend
    try:
        run_ = recording_setup(tiny(*EXACT))
        _RECORD.clear()
        state = reference(
            run_.task,
            list(run_.batches(0, STEPS)),
            units,
            pieces,
            staleness,
            None,
            run_.optimizer,
            run_.scheduler,
        )
        records = list(_RECORD)
    finally:
        torch.set_default_dtype(previous)
        torch.set_num_threads(threads)
    return state, logits_by_step(records, 1)


@pytest.mark.dist
@pytest.mark.parametrize("schedule, micro", CASES, ids=[c[0] for c in CASES])
def test_two_process_run_equals_the_reference_and_sees_every_key(world2, schedule, micro):
    got = merged(world2 / schedule)
    want, want_logits = expected(schedule, micro)
    # tspipe: the one-step-stale reference; every other schedule and runner: the exact one
    assert relative_difference(got["student"], want["student"]) <= 1e-12
    assert relative_difference(got["teacher"], want["teacher"]) <= 1e-12
    # the negatives: the loss saw the logits of every query against every key of the mini-batch,
    # identical to the single-process run with the same micro-batches, at every step
    loss_rank = 0 if get_schedule(schedule).runner == "ddp" else 1
    records = torch.load(world2 / schedule / f"logits_rank{loss_rank}.pt", weights_only=True)
    got_logits = logits_by_step(records, micro)
    batch = tiny().method.batch
    for step in range(STEPS):
        for v in range(2):
            assert got_logits[step][v].shape == (batch, batch)
            torch.testing.assert_close(got_logits[step][v], want_logits[step][v], rtol=1e-10, atol=1e-10)


@pytest.mark.dist
def test_tspipe_teacher_is_really_stale(world2):
    got = merged(world2 / "tspipe")
    sync, _ = expected("tspipe", 2, staleness=0)
    assert relative_difference(got["student"], sync["student"]) > 1e-6


@pytest.mark.dist
def test_ddp_gathers_keys_so_its_loss_is_the_full_batch_loss(world2):
    # replica r runs images [16r, 16r + 16) (its BatchNorm batch); the loss on every rank
    # runs over the gathered 32 keys: the single-process loss of the whole mini-batch
    _, want_logits = expected("ddp", 1)
    logged = [json.loads(line)["loss"] for line in (world2 / "ddp" / "log.jsonl").read_text().splitlines()]
    t = tiny().method.temperature
    full = [sum(float(info_nce_from_logits(want_logits[s][v], t)) for v in range(2)) for s in range(STEPS)]
    assert logged == pytest.approx(full, rel=1e-10)
    # keys of the rank's own half only (no gathering) would give another loss
    half = tiny().method.batch // 2
    local = sum(float(info_nce_from_logits(want_logits[0][v][:half, :half], t)) for v in range(2))
    assert abs(local - full[0]) > 1e-3


@pytest.mark.dist
@pytest.mark.parametrize("schedule, micro", CASES, ids=[c[0] for c in CASES])
def test_each_schedule_writes_a_valid_row(world2, schedule, micro):
    folder = world2 / schedule
    row = json.loads((folder / "row.json").read_text())
    assert row["method"] == "moco_v3" and row["schedule"] == schedule and row["simulated"] is False
    assert row["metric"] == "knn_top1" and 0.0 < row["metric_value"] <= 1.0
    assert row["samples_per_s"] > 0 and row["stages"] == 2 and row["microbatches"] == micro
    assert row["model"] == "vit-d32x2h2-p4-16px" and row["steps"] == STEPS
    assert (folder / "config.json").exists() and (folder / "tb").is_dir()
    assert (folder / "log.jsonl").read_text().strip()


@pytest.mark.slow
def test_train_cli_sequential_smoke(tmp_path):
    proc = launch_module(
        "training",
        1,
        "moco_v3",
        "--preset",
        "tiny",
        "--microbatches",
        "2",
        "steps=2",
        f"run_dir={tmp_path}",
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    row = json.loads((tmp_path / "row.json").read_text())
    assert row["method"] == "moco_v3" and row["schedule"] == "sequential" and row["stages"] == 1
    assert 0.0 < row["metric_value"] <= 1.0 and row["samples_per_s"] > 0
    assert len((tmp_path / "log.jsonl").read_text().splitlines()) == 1  # log_every=10: step 0


# ---- data-parallel replicas of the pipeline (dp 2 x pp 2) ----------------------------------------


@pytest.fixture(scope="module")
def world4_dp(tmp_path_factory):
    out = tmp_path_factory.mktemp("moco4dp")
    proc = launch_module("tests.methods.test_moco_v3", 4, str(out), "dp", timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out


@pytest.mark.dist
@pytest.mark.parametrize("schedule, micro", DP_CASES, ids=[c[0] for c in DP_CASES])
def test_dp_replicas_equal_the_reference_with_every_key_as_negative(world4_dp, schedule, micro):
    folder = world4_dp / schedule
    got = merged(folder)  # ranks 0-1: replica 0, ranks 2-3: replica 1
    want, want_logits = _reference(
        2 * micro, get_schedule(schedule).pieces(None), get_schedule(schedule).staleness("ema")
    )
    assert relative_difference(got["student"], want["student"]) <= 1e-12
    assert relative_difference(got["teacher"], want["teacher"]) <= 1e-12
    for replica in (2, 3):  # the second replica's stages hold the first one's weights exactly
        stage = torch.load(
            folder / "checkpoints" / f"step{STEPS:07d}" / f"rank{replica}.pt", weights_only=True
        )["stage"]
        first = torch.load(
            folder / "checkpoints" / f"step{STEPS:07d}" / f"rank{replica - 2}.pt", weights_only=True
        )["stage"]
        for kind in ("student", "teacher"):
            assert all(torch.equal(t, first[kind][k]) for k, t in stage[kind].items())
    # the negatives: every query against every key of the whole mini-batch (both replicas'),
    # from the last stage of each replica (rank 1: replica 0, rank 3: replica 1)
    by_rank = [torch.load(folder / f"logits_rank{rank}.pt", weights_only=True) for rank in (1, 3)]
    if get_schedule(schedule).per_unit_loss:  # each replica saw its own queries: interleave the steps
        n = 2 * micro
        records = [r for s in range(STEPS) for mine in by_rank for r in mine[s * n : (s + 1) * n]]
    else:  # each replica computed the loss of the whole mini-batch
        records = by_rank[0]
        assert all(torch.equal(a[2], b[2]) for a, b in zip(by_rank[0], by_rank[1]))
    got_logits = logits_by_step(records, 2 * micro)
    batch = tiny().method.batch
    for step in range(STEPS):
        for v in range(2):
            assert got_logits[step][v].shape == (batch, batch)
            torch.testing.assert_close(got_logits[step][v], want_logits[step][v], rtol=1e-10, atol=1e-10)
    # the logged loss is the loss of the whole mini-batch
    logged = [json.loads(line)["loss"] for line in (folder / "log.jsonl").read_text().splitlines()]
    t = tiny().method.temperature
    full = [sum(float(info_nce_from_logits(want_logits[s][v], t)) for v in range(2)) for s in range(STEPS)]
    assert logged == pytest.approx(full, rel=1e-10)
    row = json.loads((folder / "row.json").read_text())
    assert row["dp"] == 2 and row["stages"] == 2


@pytest.mark.dist
def test_a_resume_with_another_dp_is_refused_with_one_line(world4_dp, capsys):
    folder = world4_dp / "tspipe"
    status = main(
        [
            "moco_v3",
            "--preset",
            "tiny",
            *EXACT,
            "schedule=tspipe",
            "stages=2",
            "microbatches=2",
            f"run_dir={folder}",
            "resume=auto",
            f"steps={STEPS + 1}",
        ]
    )
    err = capsys.readouterr().err.strip()
    assert status == 2 and len(err.splitlines()) == 1
    assert "dp: checkpoint 2, now 1" in err and "cannot resume" in err


if __name__ == "__main__":  # a rank of the shared launch (see the module docstring)
    worker(Path(sys.argv[1]), dp=len(sys.argv) > 2 and sys.argv[2] == "dp")
