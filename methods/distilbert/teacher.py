"""Fine-tune MiniLM for masked-LM, the teacher of the distillation runs (``make teacher-distilbert``).

all-MiniLM-L6-v2 ships without an MLM head: ``BertForMaskedLM`` gets a newly initialised head
transform and bias, the decoder tied to the real word embeddings. This fine-tunes the whole
model on the training split (dynamic 80/10/10 masking, logits only at masked positions, AdamW,
warm-up and cosine decay, gradient clipping), evaluates the held-out masked-token accuracy and
perplexity before, during and after, and saves the teacher where the trainer looks for it
(``artifacts/distilbert/teacher/teacher.pt``, loadable with ``weights_only=True``) with its
metrics in ``teacher.json`` and the loss curve in ``log.jsonl``.

Usage: ``python -m methods.distilbert.teacher [--preset cpu|gpu|tiny] [key=value ...]``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from experiments.distilbert import TEACHER_PRESETS
from methods.common.config import ConfigError, build_config
from methods.common.data import BatchOrder, DataNotFound
from methods.common.optim import optimizer_factory, warmup_cosine
from methods.distilbert.data import (
    Masking,
    heldout_batches,
    load_corpus,
    load_tokenizer,
    offline,
    parse_corpus,
)
from methods.distilbert.distil import mlm_metrics
from methods.distilbert.model import minilm, save_teacher
from methods.distilbert.train import ARTIFACTS, TEACHER_PATH

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TeacherConfig:
    """The MLM fine-tune of the MiniLM teacher.

    Attributes:
        corpus: comma-separated text sources (as the distillation runs').
        text_dir: folder of the Python documentation sources (for ``pythondocs``).
        cache_dir: tokenised corpus cache; empty: ``artifacts/distilbert``.
        seq_len: tokens per block.
        mlm_probability: share of tokens predicted per sequence.
        batch: sequences per step.
        steps: optimizer steps.
        lr: peak AdamW learning rate.
        weight_decay: on weights (not biases and LayerNorms).
        warmup_steps: linear warm-up before the cosine decay.
        max_grad_norm: gradient clipping; None: off.
        eval_blocks: held-out blocks evaluated (0: all of them).
        eval_batch: sequences per evaluation batch.
        eval_every: evaluate every this many steps besides before and after (0: never).
        seed: data order, masks and the new head's initialisation.
        threads: torch threads (0: torch's default).
        device: ``cpu`` or ``cuda``.
        amp_bf16: bf16 autocast.
        out: where the teacher is saved; empty: ``artifacts/distilbert/teacher/teacher.pt``.
    """

    corpus: str = "shakespeare,kjv"
    text_dir: str = ""
    cache_dir: str = ""
    seq_len: int = 128
    mlm_probability: float = 0.15
    batch: int = 16
    steps: int = 500
    lr: float = 3e-4
    weight_decay: float = 0.01
    warmup_steps: int = 30
    max_grad_norm: float | None = 1.0
    eval_blocks: int = 512
    eval_batch: int = 32
    eval_every: int = 0
    seed: int = 0
    threads: int = 0
    device: str = "cpu"
    amp_bf16: bool = False
    out: str = ""

    def __post_init__(self) -> None:
        parse_corpus(self.corpus)
        if self.steps < 1 or self.batch < 1:
            raise ValueError(f"steps and batch must be >= 1, got {self.steps} and {self.batch}")
        if self.lr < 0 or self.weight_decay < 0:
            raise ValueError(f"lr and weight_decay must be >= 0, got {self.lr} and {self.weight_decay}")
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"device must be cpu or cuda, got {self.device!r}")
        if not 8 <= self.seq_len <= 512:
            raise ValueError(f"seq_len must lie in [8, 512], got {self.seq_len}")
        if min(self.eval_blocks, self.eval_every, self.threads) < 0:
            raise ValueError("eval_blocks, eval_every and threads must be >= 0")

    @property
    def path(self) -> Path:
        return Path(self.out) if self.out else TEACHER_PATH


def masked_logits(model, batch: dict[str, torch.Tensor], device: torch.device) -> torch.Tensor:
    """MLM logits of a ``BertForMaskedLM`` at the masked positions only (row-major)."""
    hidden = model.bert(
        batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)
    ).last_hidden_state
    return model.cls(hidden[(batch["labels"] != -100).to(device)])


def finetune(config: TeacherConfig) -> dict:
    """Fine-tune, evaluate and save the teacher.

    Returns:
        The metrics written to ``teacher.json``.
    """
    offline()
    if config.threads:
        torch.set_num_threads(config.threads)
    device = torch.device(config.device)
    cache = Path(config.cache_dir) if config.cache_dir else ARTIFACTS
    tokenizer = load_tokenizer()
    corpus = load_corpus(config.corpus, config.seq_len, cache, config.text_dir)
    masking = Masking.for_tokenizer(tokenizer, config.mlm_probability, config.seed)
    model = minilm(config.seed).to(device)
    optimizer = optimizer_factory("adamw", config.lr, config.weight_decay)(list(model.named_parameters()))
    scheduler = warmup_cosine(config.warmup_steps, config.steps)(optimizer)
    order = BatchOrder(len(corpus.train), config.batch, config.seed)
    autocast = lambda: torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.amp_bf16)  # noqa: E731
    config.path.parent.mkdir(parents=True, exist_ok=True)
    log_file = (config.path.parent / "log.jsonl").open("w")

    def evaluate(step: int) -> dict:
        model.eval()
        started = time.perf_counter()
        with autocast():
            metrics = mlm_metrics(
                lambda b: masked_logits(model, b, device),
                heldout_batches(corpus.heldout, masking, config.eval_batch, config.eval_blocks),
            )
        model.train()
        metrics = {"step": step, "eval_s": time.perf_counter() - started, **metrics}
        log.info(
            "step %d: held-out masked-token accuracy %.4f, perplexity %.1f",
            step,
            metrics["mlm_acc"],
            metrics["mlm_ppl"],
        )
        log_file.write(json.dumps({"eval": metrics}) + "\n")
        log_file.flush()
        return metrics

    evals = [evaluate(0)]
    model.train()
    started = time.perf_counter()
    for step, idx in enumerate(order.iterate(0, config.steps)):
        batch = masking.batch(corpus.train[idx], step)
        with autocast():
            logits = masked_logits(model, batch, device)
        labels = batch["labels"][batch["labels"] != -100].to(device)
        loss = F.cross_entropy(logits.float(), labels)
        loss.backward()
        if config.max_grad_norm is not None:
            nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        line = {
            "step": step,
            "loss": float(loss.detach()),
            "lr": scheduler.get_last_lr()[0],
            "time_s": time.perf_counter() - started,
        }
        log_file.write(json.dumps(line) + "\n")
        if step % 10 == 0:
            log.info("step %d/%d: loss %.3f (%.1f s)", step, config.steps, line["loss"], line["time_s"])
        done = step + 1
        if config.eval_every and done % config.eval_every == 0 and done < config.steps:
            evals.append(evaluate(done))
    train_s = time.perf_counter() - started
    final = evaluate(config.steps)
    log_file.close()
    metrics = {
        **{k: final[k] for k in ("mlm_acc", "mlm_ppl", "mlm_loss", "masked_tokens")},
        "before": {k: evals[0][k] for k in ("mlm_acc", "mlm_ppl", "mlm_loss")},
        "evals": evals + [final],
        "steps": config.steps,
        "train_s": train_s,
        "heldout_blocks": min(config.eval_blocks or len(corpus.heldout), len(corpus.heldout)),
        "train_blocks": len(corpus.train),
        "config": asdict(config),
        "torch": str(torch.__version__),
    }
    save_teacher(model, config.path, metrics)
    log.info(
        "saved %s: held-out masked-token accuracy %.4f, perplexity %.1f",
        config.path,
        final["mlm_acc"],
        final["mlm_ppl"],
    )
    return metrics


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry.

    Returns:
        0 on success; 2 for a bad config or missing data (one line on stderr).
    """
    parser = argparse.ArgumentParser(prog="python -m methods.distilbert.teacher", description=__doc__)
    parser.add_argument("--preset", default="cpu", help=f"one of: {', '.join(TEACHER_PRESETS)}")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        if args.preset not in TEACHER_PRESETS:
            raise ConfigError(f"unknown preset {args.preset!r}; choose one of: {', '.join(TEACHER_PRESETS)}")
        config = build_config(TeacherConfig, TEACHER_PRESETS[args.preset], args.overrides)
        if config.device == "cuda" and not torch.cuda.is_available():
            raise ConfigError("device=cuda but CUDA is not available; use --preset cpu")
    except (ConfigError, DataNotFound, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    try:
        finetune(config)
    except DataNotFound as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
