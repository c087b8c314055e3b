"""Soft-target KD: the loss against a reference, teacher checkpoints, clear errors, and pipelined
students (tspipe, gpipe, 1f1b, the torch peer and ddp on 2 and 4 processes, and the trainer) equal
to the single-process KD reference with a real, briefly trained teacher.

Run as a module (``python -m core.launch --nproc N tests.methods.test_soft_target SPEC OUT``) it
is the worker of the multi-process cases: one launch per process count runs every case.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from core.overrides import ConfigError, apply_overrides
from core.partition import stage_costs, uniform_balance
from core.runtime import resolve_balances
from core.schedules import get_schedule
from methods.soft_target import METHOD, check, models, setup
from methods.soft_target.kd import SoftTargetTask, soft_target_loss
from methods.soft_target.models import Arch, block_macs, classifier_blocks, load_teacher, save_teacher, top1
from methods.soft_target.presets import TEACHER_PRESETS, teacher_command
from methods.soft_target.teacher import train_teacher
from tests.conftest import launch_module
from tests.core.test_runtime_dist import relative_difference
from tests.core.toy import reference
from training.cli import main

STEPS = 3
# (schedule, backward pieces) of the multi-process cases; micro-batches = processes (ddp: one
# share of the batch per replica, the same units)
CASES = [("tspipe", 2), ("gpipe", 1), ("1f1b", 1), ("torch-1f1b", 1), ("ddp", 1)]


def tiny(**overrides) -> object:
    return apply_overrides(METHOD.preset("tiny"), [f"{k}={v}" for k, v in overrides.items()])


def balances(config) -> tuple[list[int], list[int]]:
    """The (student, teacher) balances the runtime plans for a config."""
    task = METHOD.make_task(config)
    student = task.build_student()
    return resolve_balances(config.pipeline, task, len(student), len(task.build_teacher(student)))


@pytest.fixture(scope="module")
def teacher_path(tmp_path_factory) -> Path:
    """A real teacher: the ``tiny`` preset (ResNet-18 w8 on digits, 40 steps, a few seconds)."""
    path = tmp_path_factory.mktemp("teacher") / "teacher.pt"
    config = apply_overrides(TEACHER_PRESETS["tiny"], [f"out={path}"])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the command does (threads=1); fast on a busy machine too
    try:
        summary = train_teacher(config, progress=False)
    finally:
        torch.set_num_threads(threads)
    assert summary["test_top1"] > 0.5  # it learned something: its soft targets carry information
    return path


# ---- the loss ----------------------------------------------------------------------------------


def reference_loss(s, t, y, alpha, temperature):
    soft = F.kl_div(
        F.log_softmax(s / temperature, dim=1), F.softmax(t / temperature, dim=1), reduction="batchmean"
    )
    return alpha * temperature**2 * soft + (1 - alpha) * F.cross_entropy(s, y)


@pytest.mark.parametrize("alpha, temperature", [(0.0, 4.0), (0.5, 1.0), (0.9, 4.0), (1.0, 2.5)])
def test_loss_equals_the_reference_implementation(alpha, temperature):
    g = torch.Generator().manual_seed(0)
    s, t = (
        torch.randn(7, 5, generator=g, dtype=torch.float64),
        torch.randn(7, 5, generator=g, dtype=torch.float64),
    )
    y = torch.randint(0, 5, (7,), generator=g)
    got = soft_target_loss(s, t, y, alpha, temperature)
    assert float(got["loss"]) == pytest.approx(float(reference_loss(s, t, y, alpha, temperature)), rel=1e-12)
    assert float(got["ce"]) == pytest.approx(float(F.cross_entropy(s, y)), rel=1e-12)


def test_the_soft_term_carries_the_t_squared_factor():
    g = torch.Generator().manual_seed(1)
    s, t, y = (
        torch.randn(6, 4, generator=g),
        torch.randn(6, 4, generator=g),
        torch.randint(0, 4, (6,), generator=g),
    )
    kl = F.kl_div(F.log_softmax(s / 3, dim=1), F.softmax(t / 3, dim=1), reduction="batchmean")
    assert float(soft_target_loss(s, t, y, 1.0, 3.0)["loss"]) == pytest.approx(9 * float(kl), rel=1e-5)
    assert float(soft_target_loss(s, t, y, 1.0, 3.0)["kd"]) == pytest.approx(float(kl), rel=1e-5)


@pytest.mark.parametrize("temperature", [1.0, 4.0, 20.0])
def test_loss_is_zero_when_student_matches_teacher_at_alpha_one(temperature):
    logits = torch.randn(9, 10, requires_grad=True)
    out = soft_target_loss(
        logits, logits.detach().clone(), torch.zeros(9, dtype=torch.long), 1.0, temperature
    )
    assert float(out["loss"].detach()) == 0.0
    out["loss"].backward()
    assert float(logits.grad.abs().max()) < 1e-7


def test_microbatch_terms_sum_to_the_loss():
    arch = Arch("resnet18w4", 8)
    task = SoftTargetTask(arch, Arch("resnet18w8", 8), None, alpha=0.7, temperature=3.0)
    g = torch.Generator().manual_seed(2)
    s, t, y = (
        torch.randn(10, 10, generator=g),
        torch.randn(10, 10, generator=g),
        torch.randint(0, 10, (10,), generator=g),
    )
    whole = task.loss([s], [t], y)["loss"]
    parts = sum(
        task.microbatch_loss(0, m, 3, s[sl], [t], y)
        for m, sl in enumerate([slice(0, 4), slice(4, 7), slice(7, 10)])
    )
    assert float(parts) == pytest.approx(float(whole), rel=1e-6)


# ---- models and teacher checkpoints ------------------------------------------------------------


def test_classifiers_end_with_their_head_and_models_are_checked():
    blocks = classifier_blocks(Arch("resnet18w4", 8))
    assert len(blocks) == 10 and isinstance(blocks[-1], models.Head)
    x = torch.randn(2, 1, 8, 8)
    for b in blocks:
        x = b(x)
    assert x.shape == (2, 10)
    macs = block_macs(Arch("resnet18w8", 16))
    assert len(macs) == 10 and all(m > 0 for m in macs)
    assert sum(block_macs(Arch("resnet18w16", 16))) == pytest.approx(4 * sum(macs), rel=0.02)  # 2x width
    with pytest.raises(ValueError, match="unknown model 'alexnet'"):
        Arch("alexnet", 16)


def test_teacher_checkpoint_round_trip(teacher_path, tmp_path):
    arch = Arch("resnet18w8", 8)
    checkpoint = load_teacher(teacher_path, arch, "make it")
    assert checkpoint["arch"] == arch.to_dict() and checkpoint["dataset"] == "digits"
    assert json.loads(teacher_path.with_suffix(".json").read_text())["test_top1"] == checkpoint["test_top1"]
    # the reloaded teacher reproduces the test accuracy it was saved with
    task = SoftTargetTask(Arch("resnet18w4", 8), arch, checkpoint["state_dict"])
    teacher = nn.Sequential(*task.build_teacher(task.build_student()))
    run = setup(tiny(teacher_checkpoint=teacher_path))
    from methods.common.data import load_images

    data = load_images("digits", size=8)
    assert (
        top1(teacher, task.channels(data.prepare(data.test_images, 8)), data.test_labels)
        == checkpoint["test_top1"]
    )
    # and saving it again gives the same weights
    again = save_teacher(tmp_path / "again.pt", arch, list(teacher), test_top1=checkpoint["test_top1"])
    state = load_teacher(again, arch, "make it")["state_dict"]
    assert all(torch.equal(state[k], checkpoint["state_dict"][k]) for k in state)
    assert run.metric == "top1" and run.model == "resnet18w8-to-resnet18w4-8px"


def test_a_teacher_of_another_architecture_is_refused(teacher_path, tmp_path):
    with pytest.raises(
        ConfigError, match=r"holds resnet18w8 at 8px.*this run's teacher is resnet18w16 at 8px"
    ):
        load_teacher(teacher_path, Arch("resnet18w16", 8), "make it")
    with pytest.raises(ConfigError, match="holds resnet18w8 at 8px.*resnet18w8 at 16px"):
        load_teacher(teacher_path, Arch("resnet18w8", 16), "make it")
    # right label, wrong weights (a file edited by hand)
    checkpoint = torch.load(teacher_path, weights_only=True)
    checkpoint["arch"]["model"] = "resnet34w8"
    torch.save(checkpoint, tmp_path / "edited.pt")
    with pytest.raises(ConfigError, match="does not fit resnet34w8: missing"):
        load_teacher(tmp_path / "edited.pt", Arch("resnet34w8", 8), "make it")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="cannot read teacher checkpoint .* remake it with `make it`"):
        load_teacher(tmp_path / "junk.pt", Arch("resnet18w8", 8), "make it")
    # through the trainer: exit 2, one line
    assert (
        main(["soft_target", "--preset", "tiny", "teacher=resnet18w16", f"teacher_checkpoint={teacher_path}"])
        == 2
    )


@pytest.mark.parametrize("kind", ["torchvision-resnet18", "timm-vit", "timm-vit-halves"])
def test_real_weights_load_from_torchvision_and_timm_layouts(kind, tmp_path):
    # teacher_checkpoint=PATH also takes a plain state dict of torchvision's ResNet or timm's ViT
    import timm
    import torchvision

    torch.manual_seed(0)
    if kind.startswith("torchvision"):
        reference_model, arch = (
            torchvision.models.resnet18(num_classes=10),
            Arch("resnet18", 32, 3, 10, False),
        )
    else:
        reference_model = timm.create_model(
            "vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=4, num_classes=10
        )
        arch = Arch("vit_tiny", 32, 3, 10, half_blocks=kind.endswith("halves"))
    torch.save(reference_model.state_dict(), tmp_path / "real.pt")
    blocks = nn.Sequential(*classifier_blocks(arch))
    blocks.load_state_dict(load_teacher(tmp_path / "real.pt", arch, "make it")["state_dict"])
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(blocks.eval()(x), reference_model.eval()(x), rtol=0, atol=0)
    other = (
        Arch("resnet50", 32, 3, 10, False) if kind.startswith("torchvision") else Arch("vit_small", 32, 3, 10)
    )
    with pytest.raises(ConfigError, match=f"do not fit {other.model}"):
        load_teacher(tmp_path / "real.pt", other, "make it")


def test_missing_teacher_exits_2_with_the_command_that_makes_it(tmp_path, capsys):
    missing = tmp_path / "none.pt"
    assert main(["soft_target", "--preset", "tiny", f"teacher_checkpoint={missing}"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith(f"error: no teacher checkpoint at {missing}")
    assert f"`python -m methods.soft_target.teacher --preset tiny out={missing}`" in err
    # the default CPU teacher is made by `make teacher-kd`
    cpu = METHOD.preset("cpu").method
    assert teacher_command(cpu.teacher_arch(), "fashion_mnist", cpu.teacher_path()) == "make teacher-kd"
    bigger = Arch("resnet34w32", 16)
    assert teacher_command(bigger, "fashion_mnist", models.default_teacher_path(bigger, "fashion_mnist")) == (
        "python -m methods.soft_target.teacher --preset cpu teacher=resnet34w32"
    )


def test_missing_data_and_bad_teacher_configs_exit_2(monkeypatch, tmp_path, capsys):
    from methods.common import data as data_module
    from methods.soft_target import teacher as teacher_module

    monkeypatch.setattr(data_module, "DEBIAN_DIR", tmp_path / "nowhere")
    monkeypatch.delenv("DATA_DIR", raising=False)
    assert main(["soft_target", "--preset", "tiny", "dataset=fashion_mnist"]) == 2
    assert capsys.readouterr().err.strip().startswith("error: Fashion-MNIST not found")
    assert teacher_module.main(["--preset", "cpu"]) == 2
    assert capsys.readouterr().err.strip().startswith("error: Fashion-MNIST not found")
    assert teacher_module.main(["--preset", "tiny", "teacher=alexnet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: unknown model 'alexnet'") and "\n" not in err
    assert teacher_module.main(["--preset", "tiny", "dataset=synthetic"]) == 2
    assert "a teacher trains on real data" in capsys.readouterr().err


def test_the_student_alone_needs_no_teacher(tmp_path):
    config = tiny(alpha=0, teacher_checkpoint=tmp_path / "none.pt", schedule="tspipe", stages=2)
    check(config)  # no error: alpha = 0 never reads the teacher
    task = setup(config).task
    teacher = task.build_teacher(task.build_student())
    assert all(isinstance(b, nn.Identity) for b in teacher)
    # nothing to balance: no cost estimates, the identity stand-in split by block count
    assert task.block_costs() is None and config.pipeline.teacher_balance is None
    assert balances(config)[1] == uniform_balance(len(teacher), 2)


def test_the_teacher_is_balanced_on_its_own(teacher_path):
    # a frozen teacher gets its own stage boundaries, from estimated compute: a ViT teacher against
    # a ResNet-152 student split uniformly over 4 stages
    paper = apply_overrides(METHOD.preset("vitl16-to-resnet152-224-4gpu"), ["teacher=vit_small"])
    student, teacher = block_macs(paper.method.student_arch()), block_macs(paper.method.teacher_arch())
    student_balance, auto = balances(paper)
    assert paper.pipeline.balance is None and paper.pipeline.teacher_balance is None
    assert student_balance == uniform_balance(len(student), 4)
    assert len(auto) == 4 and sum(auto) == len(teacher)
    per_stage = stage_costs([3 * c for c in student], uniform_balance(len(student), 4))

    def busiest(balance):
        return max(s + t for s, t in zip(per_stage, stage_costs(teacher, balance)))

    assert busiest(auto) < busiest(uniform_balance(len(teacher), 4))
    # an explicit balance is taken as given; balance_by=uniform splits the teacher by block count
    explicit = tiny(schedule="gpipe", stages=2, teacher_balance="3,7", teacher_checkpoint=teacher_path)
    assert explicit.pipeline.teacher_balance == (3, 7) and balances(explicit)[1] == [3, 7]
    uniform = tiny(schedule="gpipe", stages=2, balance_by="uniform", teacher_checkpoint=teacher_path)
    blocks = len(block_macs(uniform.method.teacher_arch()))
    assert uniform.pipeline.teacher_balance is None and balances(uniform)[1] == uniform_balance(blocks, 2)


@pytest.mark.parametrize(
    "args, message",
    [
        (["alpha=1.5"], r"alpha must lie in \[0, 1\]"),
        (["temperature=0"], "temperature must be > 0"),
        (["student=resnet19"], "ResNet depth must be one of"),
        (["teacher_balance=abc"], "teacher_balance=abc: expected int"),
        (["teacher_checkpoint=random"], "only for throughput runs"),
        (
            ["--schedule", "gpipe", "--stages", "2", "teacher_balance=5,4", "teacher_checkpoint={teacher}"],
            "teacher balance .* sums to 9",
        ),
        (["--preset", "huge"], "unknown preset 'huge'"),
    ],
)
def test_bad_config_exits_2_with_one_line(args, message, capsys, teacher_path):
    # {teacher}: the real teacher, so that the run gets as far as splitting it over the stages
    args = [a.format(teacher=teacher_path) for a in args]
    assert main(["soft_target", "--preset", "tiny", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err
    assert re.search(message, err), err


# ---- pipelined students equal the single-process reference ----------------------------------


def expected(teacher: Path, schedule: str, micro: int, pieces: int) -> dict:
    """The single-process reference, on one thread as the workers run. At 4 processes with 2
    backward pieces the last blocks' BatchNorm sees 4 samples of a 1x1 map, which magnifies
    last-bit differences: tspipe's student is 4e-13 from the reference on one thread and 4e-11
    from one made on two (summed in another order); the other cases 1e-15 either way."""
    previous, threads = torch.get_default_dtype(), torch.get_num_threads()
    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(1)
    try:
        run = setup(tiny(teacher_checkpoint=teacher, dtype="float64"))
        return reference(
            run.task, list(run.batches(0, STEPS)), micro, pieces, 0, None, run.optimizer, run.scheduler
        )
    finally:
        torch.set_default_dtype(previous)
        torch.set_num_threads(threads)


def launch_cases(world: int, teacher: Path, folder: Path) -> dict[str, dict]:
    spec = folder / "spec.json"
    cases = [dict(schedule=s, pieces=p, micro=world, teacher=str(teacher)) for s, p in CASES]
    spec.write_text(json.dumps(cases))
    proc = launch_module("tests.methods.test_soft_target", world, str(spec), str(folder), timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return {s: torch.load(folder / f"{s}.pt", weights_only=True) for s, _ in CASES}


@pytest.mark.dist
@pytest.mark.parametrize("world", [2, pytest.param(4, marks=pytest.mark.slow)])
def test_pipelined_students_equal_the_reference(world, teacher_path, tmp_path):
    got = launch_cases(world, teacher_path, tmp_path)
    for schedule, pieces in CASES:
        want = expected(teacher_path, schedule, world, pieces)
        assert relative_difference(got[schedule]["student"], want["student"]) <= 1e-12, schedule
        # the frozen teacher is untouched, and it is the checkpoint's
        saved = torch.load(teacher_path, weights_only=True)["state_dict"]
        assert (
            relative_difference(
                got[schedule]["teacher"],
                {k: v.double() if v.is_floating_point() else v for k, v in saved.items()},
            )
            <= 1e-12
        )


@pytest.mark.dist
def test_the_trainer_under_tspipe_equals_the_reference(teacher_path, tmp_path):
    proc = launch_module(
        "training",
        1,
        "soft_target",
        "--preset",
        "tiny",
        "--schedule",
        "tspipe",
        "--stages",
        "2",
        "--microbatches",
        "2",
        "dtype=float64",
        f"teacher_checkpoint={teacher_path}",
        f"run_dir={tmp_path}",
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    row = json.loads((tmp_path / "row.json").read_text())
    assert row["method"] == "soft_target" and row["schedule"] == "tspipe" and row["metric"] == "top1"
    assert 0.0 <= row["metric_value"] <= 1.0 and row["samples_per_s"] > 0
    saved = torch.load(teacher_path, weights_only=True)
    assert row["evals"][-1]["teacher_top1"] == saved["test_top1"]
    assert (tmp_path / "log.jsonl").read_text().strip() and (tmp_path / "tb").is_dir()
    student: dict[str, torch.Tensor] = {}
    for rank in range(2):
        state = torch.load(
            tmp_path / "checkpoints" / f"step{STEPS:07d}" / f"rank{rank}.pt", weights_only=True
        )
        student.update(state["stage"]["student"])
    assert relative_difference(student, expected(teacher_path, "tspipe", 2, 2)["student"]) <= 1e-12


# ---- worker of the multi-process cases -------------------------------------------------------


def _worker(spec: Path, out: Path) -> None:
    from core.launch import init_distributed
    from core.runtime import gather_state, make_runner

    rank = init_distributed("cpu")
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float64)
    for case in json.loads(spec.read_text()):
        schedule = get_schedule(case["schedule"])
        config = tiny(
            schedule=case["schedule"],
            stages=rank.world,
            microbatches=schedule.microbatches or case["micro"],  # ddp: one per replica
            backward_pieces=case["pieces"] if schedule.is_pipeline else None,
            teacher_checkpoint=case["teacher"],
            dtype="float64",
        )
        run = setup(config)
        runner = make_runner(run.task, config.pipeline, rank.device, run.optimizer, run.scheduler)
        runner.run(run.batches(0, STEPS), STEPS)
        state = gather_state(runner.stage_state())
        runner.close()
        if rank.rank == 0:
            torch.save(state, out / f"{case['schedule']}.pt")


if __name__ == "__main__":
    _worker(Path(sys.argv[1]), Path(sys.argv[2]))
