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
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from core.overrides import ConfigError, apply_overrides
from methods.common.data import BatchOrder, DataNotFound
from methods.common.optim import optimizer_factory, warmup_cosine
from methods.distilbert.config import ARTIFACTS, TeacherConfig
from methods.distilbert.data import (
    Masking,
    heldout_batches,
    load_corpus,
    load_tokenizer,
    offline,
)
from methods.distilbert.distil import mlm_metrics
from methods.distilbert.model import minilm, save_teacher
from methods.distilbert.presets import TEACHER_PRESETS

log = logging.getLogger(__name__)


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
        config = apply_overrides(TEACHER_PRESETS[args.preset], args.overrides)
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
