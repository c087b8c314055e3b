"""BYOL: loss, augmentation, the trainer under every schedule, equality with the reference."""

import json
import re

import pytest
import torch
import torch.nn.functional as F

from core.overrides import ConfigError, apply_overrides
from methods.byol import METHOD, setup
from methods.byol.byol import ByolTask, byol_loss, regression_loss
from methods.common import data as data_module
from methods.common.augment import TwoViews, ViewConfig
from methods.common.data import DataNotFound
from tests.conftest import launch_module
from tests.core.test_runtime_dist import relative_difference
from tests.core.toy import reference
from training.cli import main


def test_loss_equals_a_direct_implementation_and_is_symmetric():
    torch.manual_seed(0)
    p1, p2, z1, z2 = (torch.randn(5, 7) for _ in range(4))
    direct = 0.0
    for p, z in ((p1, z2), (p2, z1)):
        pn, zn = p / p.norm(dim=1, keepdim=True), z / z.norm(dim=1, keepdim=True)
        direct = direct + ((pn - zn) ** 2).sum(dim=1).mean()
    assert byol_loss([p1, p2], [z1, z2]) == pytest.approx(float(direct), rel=1e-6)
    assert byol_loss([p2, p1], [z2, z1]) == pytest.approx(float(byol_loss([p1, p2], [z1, z2])), rel=1e-6)
    assert regression_loss(z1, z1).abs().max() < 1e-6
    assert regression_loss(z1, -z1) == pytest.approx(torch.full((5,), 4.0))


def test_microbatch_terms_sum_to_the_loss():
    task = ByolTask(depth=18, width=4, proj_hidden=8, proj_dim=4, pred_hidden=8)
    torch.manual_seed(1)
    s, t = [torch.randn(10, 4) for _ in range(2)], [torch.randn(10, 4) for _ in range(2)]
    whole = task.loss(s, t, 10)["loss"]
    parts = sum(
        task.microbatch_loss(v, m, 3, s[v][sl], t, 10)
        for v in range(2)
        for m, sl in enumerate([slice(0, 4), slice(4, 7), slice(7, 10)])
    )
    assert float(parts) == pytest.approx(float(whole), rel=1e-6)


def test_two_views_are_different_valid_and_reproducible():
    images = torch.rand(6, 1, 28, 28)
    views = TwoViews(ViewConfig(size=32))
    a1, a2 = views(images, seed=0, step=3)
    b1, b2 = views(images, seed=0, step=3)
    assert a1.shape == (6, 1, 32, 32) and torch.equal(a1, b1) and torch.equal(a2, b2)
    assert not torch.equal(a1, a2)
    assert not torch.equal(a1, views(images, seed=0, step=4)[0])
    assert a1.min() >= -1.0 - 1e-6 and a1.max() <= 1.0 + 1e-6
    # the views of one image differ from image to image (per-image random crops)
    assert not torch.allclose(a1[0] - a1[1], F.pad(images[0] - images[1], (2, 2, 2, 2)) / 0.5, atol=1e-3)


def tiny(**overrides):
    return apply_overrides(METHOD.preset("tiny"), [f"{k}={v}" for k, v in overrides.items()])


def merged(run_dir, steps, stages):
    out = {"student": {}, "teacher": {}}
    for r in range(stages):
        state = torch.load(run_dir / "checkpoints" / f"step{steps:07d}" / f"rank{r}.pt", weights_only=True)[
            "stage"
        ]
        for kind in out:
            out[kind].update(state[kind])
    return out


def flat_stage(run_dir, rank, steps=3):
    state = torch.load(run_dir / "checkpoints" / f"step{steps:07d}" / f"rank{rank}.pt", weights_only=True)[
        "stage"
    ]
    return torch.cat(
        [state[kind][k].double().flatten() for kind in ("student", "teacher") for k in sorted(state[kind])]
    )


@pytest.mark.dist
@pytest.mark.parametrize(
    "schedule, staleness, dp, backbone",
    [
        ("tspipe", 1, 1, "resnet"),
        ("gpipe", 0, 1, "resnet"),
        ("tspipe", 1, 2, "resnet"),
        ("tspipe", 1, 1, "vit"),
    ],
)
def test_two_process_run_equals_the_reference(tmp_path, schedule, staleness, dp, backbone):
    # float64: the engine equals the reference to rounding (in float32 BYOL's tiny network
    # amplifies rounding to about 1e-4 in three steps). dp 2: two replicas of the 2-stage
    # pipeline on 4 processes, equal to one pipeline with 2 x 2 micro-batches. vit: the
    # staleness preset's backbone, at tiny width.
    args = ["optimizer=sgd", "lr=0.05", "warmup_steps=1", "steps=3", "backward_pieces=1", "dtype=float64"]
    if backbone == "vit":
        args += ["backbone=vit", "width=16", "depth=2", "heads=2", "patch=4"]
    proc = launch_module(
        "training",
        1,
        "byol",
        "--preset",
        "tiny",
        "--schedule",
        schedule,
        "--stages",
        "2",
        "--microbatches",
        "2",
        "--dp",
        str(dp),
        *args,
        f"run_dir={tmp_path}",
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = merged(tmp_path, 3, 2)
    for r in range(2, 2 * dp):  # the second replica ends equal to the first
        assert torch.equal(flat_stage(tmp_path, r), flat_stage(tmp_path, r - 2))
    config = apply_overrides(METHOD.preset("tiny"), args)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        run = setup(config)
        want = reference(
            run.task, list(run.batches(0, 3)), 2 * dp, 1, staleness, None, run.optimizer, run.scheduler
        )
    finally:
        torch.set_default_dtype(previous)
    assert relative_difference(got["student"], want["student"]) <= 1e-12
    assert relative_difference(got["teacher"], want["teacher"]) <= 1e-12
    if staleness:  # and the stale teacher really differs from the synchronous one
        torch.set_default_dtype(torch.float64)
        try:
            sync = reference(run.task, list(run.batches(0, 3)), 2, 1, 0, None, run.optimizer, run.scheduler)
        finally:
            torch.set_default_dtype(previous)
        assert relative_difference(got["student"], sync["student"]) > 1e-6


@pytest.mark.dist
@pytest.mark.slow
@pytest.mark.parametrize(
    "schedule, stages, micro",
    [
        ("sequential", 1, 2),
        ("mp", 2, 1),
        ("gpipe", 2, 2),
        ("1f1b", 2, 2),
        ("tspipe", 2, 2),
        ("ddp", 2, 1),
        ("torch-gpipe", 2, 2),
        ("torch-1f1b", 2, 2),
    ],
)
def test_train_smoke_writes_a_valid_row(tmp_path, schedule, stages, micro):
    proc = launch_module(
        "training",
        1,
        "byol",
        "--preset",
        "tiny",
        "--schedule",
        schedule,
        "--stages",
        str(stages),
        "--microbatches",
        str(micro),
        "steps=2",
        f"run_dir={tmp_path}",
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    row = json.loads((tmp_path / "row.json").read_text())
    assert row["method"] == "byol" and row["schedule"] == schedule and row["simulated"] is False
    assert 0.0 < row["metric_value"] <= 1.0 and row["metric"] == "knn_top1"
    assert row["samples_per_s"] > 0 and row["stages"] == stages
    assert (tmp_path / "config.json").exists() and (tmp_path / "tb").is_dir()
    assert (tmp_path / "log.jsonl").read_text().strip()


def test_missing_data_gives_the_clear_error(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(data_module, "DEBIAN_DIR", tmp_path / "nowhere")
    monkeypatch.setenv("TSPIPE_DOWNLOAD", "0")
    monkeypatch.delenv("DATA_DIR", raising=False)
    with pytest.raises(DataNotFound, match="make data"):
        METHOD.check(tiny(dataset="fashion_mnist"))
    assert main(["byol", "--preset", "tiny", "dataset=fashion_mnist"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: Fashion-MNIST not found") and "\n" not in err


@pytest.mark.parametrize(
    "args, message",
    [
        (["lr=-1"], "lr must be >= 0"),
        (["nonsense=3"], "unknown config key 'nonsense'"),
        (["batch=abc"], "batch=abc: expected int"),
        (["base_momentum=1.5"], r"base_momentum must lie in \[0, 1\]"),
        (["backbone=cnn"], "backbone must be one of"),
        (["backbone=vit", "patch=5"], "image 32 is not a multiple of patch 5"),
        (["backbone=vit", "heads=3"], "heads 3 must divide the ViT's width 16"),
        (["--schedule", "pipedream"], "unknown schedule 'pipedream'"),
        (["--preset", "huge"], "unknown preset 'huge'"),
    ],
)
def test_bad_config_exits_2_with_one_line(args, message, capsys):
    assert main(["byol", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err
    assert re.search(message, err)


def test_config_errors_are_config_errors():
    with pytest.raises(ConfigError):
        tiny(optimizer="adam")


@pytest.mark.parametrize("backbone, name", [("resnet", "resnet18w4-16px"), ("vit", "vit-d16x2h2-p4-16px")])
def test_encoder_is_the_backbone_and_its_pooling(backbone, name):
    config = tiny(
        backbone=backbone, width=16 if backbone == "vit" else 4, depth=2 if backbone == "vit" else 18, heads=2
    )
    run = setup(config)
    assert run.model == name
    student = run.task.build_student()
    encoder = run.task.encoder(student)
    x = torch.randn(4, 3, 16, 16)
    features = encoder(x)
    # the projector's input: the encoder is everything up to the projector's first module
    projector = student[-2]
    assert torch.equal(projector[1](features), projector(student_input_to_projector(student, x)))
    assert features.shape == (4, 16 if backbone == "vit" else 4 * 8)


def student_input_to_projector(student, x):
    for block in student[:-2]:
        x = block(x)
    return x
