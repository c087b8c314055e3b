"""Distil a BERT teacher into a shallower student with any schedule:
``python -m methods.distilbert.train --schedule tspipe --stages 2``.

Presets live in ``experiments/distilbert.py`` (``--preset cpu`` by default); any config field can
be overridden as ``key=value``. The default teacher is MiniLM fine-tuned for masked-LM by
``make teacher-distilbert``; runs refuse to start without it. With more than one stage the
command relaunches itself with one process per stage (``core.launch``); under ``torchrun`` it
joins the job instead. Evaluation: the student's masked-token accuracy and perplexity on the
held-out 10 % of the corpus, with the same masks for every run.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from experiments.distilbert import PRESETS
from methods.common.config import ConfigError
from methods.common.data import BatchOrder
from methods.common.optim import OPTIMIZERS, optimizer_factory, warmup_cosine
from methods.common.trainer import ROOT, Method, Setup, TrainConfig, main
from methods.distilbert.data import (
    Masking,
    heldout_batches,
    load_corpus,
    load_tokenizer,
    masked_per_sequence,
    offline,
    parse_corpus,
    source_files,
    synthetic_blocks,
)
from methods.distilbert.distil import DistilTask
from methods.distilbert.model import UNITS, bert_config, load_teacher, minilm, random_bert

ARTIFACTS = ROOT / "artifacts" / "distilbert"
TEACHER_PATH = ARTIFACTS / "teacher" / "teacher.pt"
TEACHERS = ("finetuned", "minilm", "random")
MINILM_SHAPE = dict(teacher_layers=6, hidden=384, heads=12, intermediate=1536)
SYNTHETIC_BLOCKS = 1024


@dataclass(frozen=True)
class DistilConfig(TrainConfig):
    """A masked-LM distillation run (pipeline fields in :class:`TrainConfig`).

    Attributes:
        teacher: ``finetuned`` (MiniLM after ``make teacher-distilbert``), ``minilm`` (MiniLM
            as installed, MLM head untrained: throughput runs) or ``random`` (a randomly
            initialised BERT of the shape below: tests and paper-scale throughput).
        teacher_path: the fine-tuned teacher; empty: ``artifacts/distilbert/teacher/teacher.pt``.
        teacher_layers, hidden, heads, intermediate: the random teacher's shape (BERT-large:
            24, 1024, 16, 4096); ignored by the MiniLM teachers (6, 384, 12, 1536).
        init_range: standard deviation of the random teacher's weights (BERT: 0.02; tests take
            more, so that a tiny teacher's predictions are far from uniform).
        student_layers: student depth; 0: half the teacher's (DistilBERT).
        student_hidden: student width; 0: the teacher's (initialised from the teacher); another
            width gives a random student and needs ``alpha_cos=0``.
        dropout: student dropout. 0 by default: dropout draws differ between processes, and
            every schedule is meant to train exactly the same student.
        corpus: comma-separated sources (``shakespeare``, ``kjv``, ``pythondocs``, ``pydoc``) or
            ``synthetic`` (random tokens, throughput only).
        text_dir: folder of the Python documentation sources (for ``pythondocs``).
        cache_dir: tokenised corpus cache; empty: ``artifacts/distilbert``.
        seq_len: tokens per block (``[CLS]`` and ``[SEP]`` included).
        mlm_probability: share of tokens predicted per sequence (80/10/10 masking).
        train_blocks: train on the first this many blocks (0: all).
        batch: sequences per mini-batch.
        optimizer: ``adamw`` (DistilBERT's), ``sgd`` or ``lars``.
        lr: peak learning rate; warm-up then cosine decay.
        weight_decay: on weights (not biases and LayerNorms).
        warmup_steps: linear warm-up.
        alpha_ce, alpha_mlm, alpha_cos: loss weights (DistilBERT: 5, 2, 1).
        temperature: soft-target temperature (DistilBERT: 2).
        max_grad_norm: global gradient-norm clipping across stages (DistilBERT: 5).
        units: ``dict`` or ``tensor`` (one tensor per unit; needed by the torch pipelining peer).
        eval_blocks: held-out blocks evaluated (0: all).
        eval_batch: sequences per evaluation batch.
    """

    teacher: str = "finetuned"
    teacher_path: str = ""
    teacher_layers: int = 6
    hidden: int = 384
    heads: int = 12
    intermediate: int = 1536
    init_range: float = 0.02
    student_layers: int = 0
    student_hidden: int = 0
    dropout: float = 0.0
    corpus: str = "shakespeare,kjv"
    text_dir: str = ""
    cache_dir: str = ""
    seq_len: int = 128
    mlm_probability: float = 0.15
    train_blocks: int = 0
    batch: int = 16
    optimizer: str = "adamw"
    lr: float = 5e-4
    weight_decay: float = 0.01
    warmup_steps: int = 20
    alpha_ce: float = 5.0
    alpha_mlm: float = 2.0
    alpha_cos: float = 1.0
    temperature: float = 2.0
    max_grad_norm: float | None = 5.0
    units: str = "dict"
    eval_blocks: int = 512
    eval_batch: int = 32

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.teacher not in TEACHERS:
            raise ValueError(f"teacher must be one of {TEACHERS}, got {self.teacher!r}")
        if self.units not in UNITS:
            raise ValueError(f"units must be one of {UNITS}, got {self.units!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.corpus != "synthetic":
            parse_corpus(self.corpus)
        if self.lr < 0:
            raise ValueError(f"lr must be >= 0, got {self.lr}")
        if min(self.alpha_ce, self.alpha_mlm, self.alpha_cos) < 0:
            raise ValueError("alpha_ce, alpha_mlm and alpha_cos must be >= 0")
        if self.alpha_ce + self.alpha_mlm + self.alpha_cos <= 0:
            raise ValueError("alpha_ce, alpha_mlm and alpha_cos are all 0; give at least one a weight")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {self.dropout}")
        if not 8 <= self.seq_len <= 512:
            raise ValueError(f"seq_len must lie in [8, 512] (BERT's positions), got {self.seq_len}")
        if self.hidden % self.heads:
            raise ValueError(f"hidden {self.hidden} is not a multiple of heads {self.heads}")
        layers = self.teacher_layers if self.teacher == "random" else MINILM_SHAPE["teacher_layers"]
        if not 0 <= self.student_layers <= layers:
            raise ValueError(
                f"student_layers must lie in [0, {layers}] (0: half the teacher), got {self.student_layers}"
            )
        width = self.hidden if self.teacher == "random" else MINILM_SHAPE["hidden"]
        if self.student_hidden not in (0, width) and self.alpha_cos > 0:
            raise ValueError(
                f"the cosine loss needs equal widths: student_hidden={self.student_hidden} but the teacher has "
                f"{width}; set alpha_cos=0 or student_hidden=0"
            )
        if self.schedule.startswith("torch-") and self.units != "tensor":
            raise ValueError(
                f"{self.schedule} (PyTorch's pipelining) passes one tensor between stages: add units=tensor"
            )
        if self.init_range <= 0:
            raise ValueError(f"init_range must be > 0, got {self.init_range}")
        if self.units == "tensor" and self.student_hidden not in (0, width):
            raise ValueError("units=tensor needs student_hidden=0")
        replicas = self.stages if self.schedule == "ddp" else 1
        if self.batch < self.microbatches * replicas:
            raise ValueError(f"batch {self.batch} is smaller than the micro-batches it is split into")

    @property
    def student_depth(self) -> int:
        layers = self.teacher_layers if self.teacher == "random" else MINILM_SHAPE["teacher_layers"]
        return self.student_layers or max(1, layers // 2)

    @property
    def teacher_file(self) -> Path:
        return Path(self.teacher_path) if self.teacher_path else TEACHER_PATH

    @property
    def cache(self) -> Path:
        return Path(self.cache_dir) if self.cache_dir else ARTIFACTS


def check(config: DistilConfig) -> None:
    """Fail before any process starts when the teacher or the text is missing; tokenise the
    corpus once here so the stages find it cached."""
    if config.teacher == "finetuned" and not config.teacher_file.exists():
        raise ConfigError(
            f"fine-tuned teacher {config.teacher_file} not found; run `make teacher-distilbert` first "
            "(or use teacher=minilm for the un-tuned MiniLM)"
        )
    if config.corpus != "synthetic":
        for name in parse_corpus(config.corpus):
            source_files(name, config.text_dir)
        load_corpus(config.corpus, config.seq_len, config.cache, config.text_dir)


def teacher_factory(config: DistilConfig):
    """A function building the run's teacher (the same weights in every process)."""
    if config.teacher == "finetuned":
        path = config.teacher_file
        return lambda: load_teacher(path)
    if config.teacher == "minilm":
        return lambda: minilm(config.seed)
    shape = bert_config(
        config.teacher_layers, config.hidden, config.heads, config.intermediate, init_range=config.init_range
    )
    return lambda: random_bert(shape, config.seed)


def task_for(config: DistilConfig) -> DistilTask:
    return DistilTask(
        teacher_factory(config),
        student_layers=config.student_depth,
        student_hidden=config.student_hidden,
        dropout=config.dropout,
        alpha_ce=config.alpha_ce,
        alpha_mlm=config.alpha_mlm,
        alpha_cos=config.alpha_cos,
        temperature=config.temperature,
        units=config.units,
        per_sequence=masked_per_sequence(config.seq_len, config.mlm_probability),
        seed=config.seed,
    )


def model_name(config: DistilConfig) -> str:
    if config.teacher == "random":
        teacher = f"bert{config.teacher_layers}L{config.hidden}"
    else:
        teacher = "minilm6L384" + ("-ft" if config.teacher == "finetuned" else "")
    student = f"{config.student_depth}L{config.student_hidden or ''}"
    return f"{teacher}->{student}-seq{config.seq_len}"


def setup(config: DistilConfig) -> Setup:
    offline()
    tokenizer = load_tokenizer()
    masking = Masking.for_tokenizer(tokenizer, config.mlm_probability, config.seed)
    if config.corpus == "synthetic":
        count = max(SYNTHETIC_BLOCKS, config.batch)
        train = synthetic_blocks(
            count, config.seq_len, len(tokenizer), config.seed, tokenizer.cls_token_id, tokenizer.sep_token_id
        )
        heldout = None
    else:
        corpus = load_corpus(config.corpus, config.seq_len, config.cache, config.text_dir)
        train = corpus.train[: config.train_blocks] if config.train_blocks else corpus.train
        heldout = corpus.heldout
    order = BatchOrder(len(train), config.batch, config.seed)
    steps = config.steps or config.epochs * order.steps_per_epoch
    task = task_for(config)
    device = torch.device("cuda" if config.device == "cuda" else "cpu")

    def batches(start: int, count: int):
        for step, idx in enumerate(order.iterate(start, count), start):
            yield masking.batch(train[idx], step)

    def evaluate(state: dict[str, dict[str, torch.Tensor]]) -> dict[str, float]:
        model = nn.Sequential(*task.build_student())
        task.release()
        model.load_state_dict(state["student"])
        held = heldout_batches(heldout, masking, config.eval_batch, config.eval_blocks)
        return task.evaluate(list(model), held, device)

    return Setup(
        task=task,
        batches=batches,
        optimizer=optimizer_factory(config.optimizer, config.lr, config.weight_decay),
        scheduler=warmup_cosine(config.warmup_steps, steps),
        steps=steps,
        steps_per_epoch=order.steps_per_epoch,
        samples_per_step=config.batch,
        model=model_name(config),
        evaluate=None if heldout is None else evaluate,
        metric=None if heldout is None else "mlm_acc",
    )


METHOD = Method(
    name="distilbert",
    config_cls=DistilConfig,
    presets=PRESETS,
    default_preset="cpu",
    check=check,
    setup=setup,
    make_task=task_for,
)

if __name__ == "__main__":
    sys.exit(main(METHOD))
