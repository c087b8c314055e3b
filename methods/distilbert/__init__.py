"""DistilBERT-style masked-LM distillation (Sanh et al., 2019): a frozen BERT teacher into a
shallower student. ``make teacher-distilbert`` fine-tunes the teacher
(``methods.distilbert.teacher``); ``python -m training distilbert --schedule tspipe --stages 2``
distils it."""

from __future__ import annotations

import torch
from torch import nn

from core.config import Config
from core.overrides import ConfigError
from methods.common.data import BatchOrder
from methods.common.optim import optimizer_factory, warmup_cosine
from methods.distilbert.config import DistilConfig
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
    synthetic_tokenizer,
)
from methods.distilbert.distil import DistilTask
from methods.distilbert.model import bert_config, load_teacher, minilm, random_bert
from methods.distilbert.presets import PRESETS
from methods.spec import MethodSpec, Setup

SYNTHETIC_BLOCKS = 1024


def check(config: Config) -> None:
    """Fail before any process starts when the teacher or the text is missing; tokenise the
    corpus once here so the stages find it cached."""
    config = config.method
    if config.teacher == "finetuned" and not config.teacher_file.exists():
        raise ConfigError(
            f"fine-tuned teacher {config.teacher_file} not found; run `make teacher-distilbert` first "
            "(or use teacher=minilm for the un-tuned MiniLM)"
        )
    if config.corpus != "synthetic":
        for name in parse_corpus(config.corpus):
            source_files(name, config.text_dir)
        load_corpus(config.corpus, config.seq_len, config.cache, config.text_dir)


def teacher_factory(method: DistilConfig, seed: int):
    """A function building the run's teacher (the same weights in every process)."""
    config = method
    if config.teacher == "finetuned":
        path = config.teacher_file
        return lambda: load_teacher(path)
    if config.teacher == "minilm":
        return lambda: minilm(seed)
    shape = bert_config(
        config.teacher_layers, config.hidden, config.heads, config.intermediate, init_range=config.init_range
    )
    return lambda: random_bert(shape, seed)


def task_for(full: Config) -> DistilTask:
    """The distillation task of a config (its teacher built lazily, the same in every process)."""
    config = full.method
    return DistilTask(
        teacher_factory(config, full.run.seed),
        student_layers=config.student_depth,
        student_hidden=config.student_hidden,
        dropout=config.dropout,
        alpha_ce=config.alpha_ce,
        alpha_mlm=config.alpha_mlm,
        alpha_cos=config.alpha_cos,
        temperature=config.temperature,
        units=config.units_for(full.pipeline),
        per_sequence=masked_per_sequence(config.seq_len, config.mlm_probability),
        seed=full.run.seed,
    )


def model_name(config: DistilConfig) -> str:
    """The row's model name, e.g. ``minilm6L384-ft->3L-seq128``."""
    if config.teacher == "random":
        teacher = f"bert{config.teacher_layers}L{config.hidden}"
    else:
        teacher = "minilm6L384" + ("-ft" if config.teacher == "finetuned" else "")
    student = f"{config.student_depth}L{config.student_hidden or ''}"
    return f"{teacher}->{student}-seq{config.seq_len}"


def setup(full: Config) -> Setup:
    """The run: task, masked token blocks, optimiser, schedule, held-out MLM evaluation."""
    config, run = full.method, full.run
    offline()
    tokenizer = synthetic_tokenizer() if config.corpus == "synthetic" else load_tokenizer()
    masking = Masking.for_tokenizer(tokenizer, config.mlm_probability, run.seed)
    if config.corpus == "synthetic":
        count = max(SYNTHETIC_BLOCKS, config.batch)
        train = synthetic_blocks(
            count, config.seq_len, len(tokenizer), run.seed, tokenizer.cls_token_id, tokenizer.sep_token_id
        )
        heldout = None
    else:
        corpus = load_corpus(config.corpus, config.seq_len, config.cache, config.text_dir)
        train = corpus.train[: config.train_blocks] if config.train_blocks else corpus.train
        heldout = corpus.heldout
    order = BatchOrder(len(train), config.batch, run.seed)
    steps = run.steps or run.epochs * order.steps_per_epoch
    task = task_for(full)
    device = torch.device("cuda" if run.device == "cuda" else "cpu")

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
        synthetic_data=heldout is None,
    )


METHOD = MethodSpec(
    name="distilbert",
    title="DistilBERT",
    config_cls=DistilConfig,
    presets=PRESETS,
    default_preset="cpu",
    setup=setup,
    make_task=task_for,
    check=check,
    bench_command="make bench-distilbert",
    bench_presets={"cpu": "bench", "cuda": "bertlarge-128-4gpu"},
    accuracy_command="make accuracy-distilbert",
)
