"""DistilBERT-style masked-LM distillation (Sanh et al., 2019) as an engine task.

A frozen BERT teacher and a shallower student (every other teacher layer, same embeddings and
head) read the same masked blocks. The loss is DistilBERT's sum of three terms:

* ``alpha_ce``: soft-target KL divergence at temperature ``T`` between teacher and student MLM
  distributions at the masked positions, times ``T^2``, averaged over masked tokens
  (``nn.KLDivLoss(reduction="batchmean")`` of the original);
* ``alpha_mlm``: masked-LM cross-entropy with the true tokens, averaged over masked tokens;
* ``alpha_cos``: cosine embedding loss ``1 - cos(student, teacher)`` between the last hidden
  states, averaged over real (non-padding) tokens.

The student output carries the last hidden states as a real output of the last block, so the
cosine term's gradient flows back through every stage (in the original TSPipe release it had
none). The loss terms are sums divided by the whole mini-batch's token counts, so the
per-micro-batch terms (``1f1b``, the torch pipelining peer) add up to exactly the same loss.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from core.momentum import TeacherRule
from core.task import Task, unit_slices
from methods.distilbert.model import UNITS, TeacherFactory, blocks_of, every_other, random_bert, set_dropout

# ---- the three losses, as sums (divide by the whole batch's counts) ------------------------------


def soft_target_sum(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T^2 x sum KL(softmax(teacher / T) || softmax(student / T))`` over rows ``[n, vocab]``."""
    s = F.log_softmax(student / temperature, dim=-1)
    t = F.log_softmax(teacher / temperature, dim=-1)
    return F.kl_div(s, t, log_target=True, reduction="sum") * temperature**2


def mlm_sum(student: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed cross-entropy of logits ``[n, vocab]`` with the true tokens ``[n]``."""
    return F.cross_entropy(student, labels, reduction="sum")


def cosine_sum(student: torch.Tensor, teacher: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
    """Summed ``1 - cos`` of hidden states ``[b, T, H]`` at the tokens where ``attention`` is set."""
    keep = attention.bool()
    return (1.0 - F.cosine_similarity(student[keep], teacher[keep], dim=-1)).sum()


class DistilTask(Task):
    """Masked-LM distillation on the engine: blocks = embeddings, each layer, the MLM head.

    Args:
        teacher: builds the teacher ``BertForMaskedLM`` (the same weights in every process).
        student_layers: student depth; it starts from teacher layers :func:`every_other`.
        student_hidden: student width; 0 (or the teacher's width) copies the teacher's
            embeddings, layers and head; another width is a randomly initialised BERT of that
            width (heads of 64 dimensions, feed-forward 4x), for shape studies only.
        dropout: student dropout (hidden and attention); the teacher runs in eval mode.
        alpha_ce, alpha_mlm, alpha_cos: weights of the three losses (DistilBERT: 5, 2, 1).
        temperature: of the soft targets (DistilBERT: 2).
        units: ``dict`` or ``tensor`` (see ``methods.distilbert.model``).
        per_sequence: masked tokens in every sequence (``tensor`` units only; see
            ``methods.distilbert.data.masked_per_sequence``).
        vocab_size: the teacher's vocabulary (to unpack ``tensor`` units).
        seed: initialisation of anything random (a random student).
    """

    views = 1
    predictor_blocks = 0
    teacher_rule = TeacherRule.frozen()

    def __init__(
        self,
        teacher: TeacherFactory,
        student_layers: int,
        student_hidden: int = 0,
        dropout: float = 0.0,
        alpha_ce: float = 5.0,
        alpha_mlm: float = 2.0,
        alpha_cos: float = 1.0,
        temperature: float = 2.0,
        units: str = "dict",
        per_sequence: int = 0,
        vocab_size: int = 30522,
        seed: int = 0,
    ) -> None:
        if units not in UNITS:
            raise ValueError(f"units must be one of {UNITS}, got {units!r}")
        if min(alpha_ce, alpha_mlm, alpha_cos) < 0 or alpha_ce + alpha_mlm + alpha_cos <= 0:
            raise ValueError("alpha_ce, alpha_mlm and alpha_cos must be >= 0 and not all 0")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if units == "tensor" and per_sequence < 1:
            raise ValueError("units=tensor needs per_sequence >= 1 (masked tokens in every sequence)")
        self._teacher_factory = teacher
        self._teacher_model = None
        self.student_layers = student_layers
        self.student_hidden = student_hidden
        self.dropout = dropout
        self.alpha_ce, self.alpha_mlm, self.alpha_cos = alpha_ce, alpha_mlm, alpha_cos
        self.temperature = temperature
        self.packed = units == "tensor"
        self.per_sequence = per_sequence
        self.vocab_size = vocab_size
        self.seed = seed

    # ---- models ----------------------------------------------------------------------------

    def _teacher(self):
        if self._teacher_model is None:
            self._teacher_model = self._teacher_factory()
        return self._teacher_model

    def release(self) -> None:
        """Drop the teacher kept between :meth:`build_student` and :meth:`build_teacher`."""
        self._teacher_model = None

    def build_student(self) -> list[nn.Module]:
        teacher = self._teacher()
        width = teacher.config.hidden_size
        if self.student_hidden in (0, width):
            layers = every_other(teacher.config.num_hidden_layers, self.student_layers)
            blocks = blocks_of(teacher, self.packed, layers, self.per_sequence)
        else:
            config = copy.deepcopy(teacher.config)
            config.hidden_size = self.student_hidden
            config.num_attention_heads = max(1, self.student_hidden // 64)
            config.intermediate_size = 4 * self.student_hidden
            config.num_hidden_layers = self.student_layers
            blocks = blocks_of(random_bert(config, self.seed + 1), self.packed, None, self.per_sequence)
        set_dropout(blocks, self.dropout)
        return blocks

    def build_teacher(self, student):
        teacher = self._teacher()
        self.release()  # the blocks are copies
        return blocks_of(teacher, self.packed, None, self.per_sequence)

    # ---- inputs ----------------------------------------------------------------------------

    def units_of(self, batch: dict[str, torch.Tensor]):
        """The model input of a batch: a dict, or the packed ``[b, T, 2]`` tensor.

        Raises:
            ValueError: for padded blocks with ``units=tensor``.
        """
        masked = batch["labels"] != -100
        if self.packed:
            if not bool(batch["attention_mask"].all()):
                raise ValueError(
                    "units=tensor cannot carry an attention mask; use units=dict for padded blocks"
                )
            return torch.stack([batch["input_ids"], masked.long()], dim=-1)
        return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "masked": masked}

    def split_inputs(self, batch, step):
        x = self.units_of(batch)
        return [x], [x]

    def loss_context(self, batch, step):
        labels = batch["labels"]
        masked = labels != -100
        counts = masked.sum(dim=1)
        attention = batch["attention_mask"].bool()
        return {
            "labels": labels[masked],
            "offsets": torch.cat([counts.new_zeros(1), counts.cumsum(0)]),
            "attention": attention,
            "n_masked": max(int(counts.sum()), 1),
            "n_tokens": max(int(attention.sum()), 1),
        }

    def unpack(self, out, seq_len: int) -> dict[str, torch.Tensor]:
        """``{"logits", "hidden"}`` of a block-stack output of sequences of ``seq_len`` tokens
        (a no-op for dict units)."""
        if not self.packed:
            return out
        b = out.shape[0]
        split = self.per_sequence * self.vocab_size
        return {
            "logits": out[:, :split].reshape(b * self.per_sequence, self.vocab_size),
            "hidden": out[:, split:].reshape(b, seq_len, -1),
        }

    # ---- loss ------------------------------------------------------------------------------

    def _sums(
        self, s: dict, t: dict, labels: torch.Tensor, attention: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        device = s["logits"].device
        out = {}
        if self.alpha_ce:
            out["ce"] = soft_target_sum(s["logits"], t["logits"], self.temperature)
        if self.alpha_mlm:
            out["mlm"] = mlm_sum(s["logits"], labels.to(device))
        if self.alpha_cos:
            out["cos"] = cosine_sum(s["hidden"], t["hidden"], attention.to(device))
        return out

    def _combine(self, sums: dict[str, torch.Tensor], n_masked: int, n_tokens: int) -> torch.Tensor:
        total = 0.0
        if "ce" in sums:
            total = total + self.alpha_ce * sums["ce"] / n_masked
        if "mlm" in sums:
            total = total + self.alpha_mlm * sums["mlm"] / n_masked
        if "cos" in sums:
            total = total + self.alpha_cos * sums["cos"] / n_tokens
        return total

    def _keep_head(self, s: dict) -> torch.Tensor | float:
        """With the cosine loss alone the head gets no gradient; a zero-weighted term keeps it in
        the graph (DistributedDataParallel insists every parameter takes part), with zero gradients."""
        return 0.0 * s["logits"].sum() if not (self.alpha_ce or self.alpha_mlm) else 0.0

    def loss(self, student, teacher, context):
        attention = context["attention"]
        s = self.unpack(student[0], attention.shape[1])
        t = self.unpack(teacher[0], attention.shape[1])
        sums = self._sums(s, t, context["labels"], attention)
        n_masked, n_tokens = context["n_masked"], context["n_tokens"]
        out = {"loss": self._combine(sums, n_masked, n_tokens) + self._keep_head(s)}
        for name, value in sums.items():
            out[f"loss_{name}"] = value.detach() / (n_tokens if name == "cos" else n_masked)
        return out

    def microbatch_loss(self, view, microbatch, microbatches, student, teacher, context):
        attention = context["attention"]
        rows = unit_slices(attention.shape[0], microbatches)[microbatch]
        start, stop = int(context["offsets"][rows.start]), int(context["offsets"][rows.stop])
        s = self.unpack(student, attention.shape[1])
        t = self.unpack(teacher[0], attention.shape[1])
        mine = {"logits": t["logits"][start:stop], "hidden": t["hidden"][rows]}
        sums = self._sums(s, mine, context["labels"][start:stop], attention[rows])
        return self._combine(sums, context["n_masked"], context["n_tokens"]) + self._keep_head(s)

    # ---- evaluation --------------------------------------------------------------------------

    def evaluate(
        self, blocks: list[nn.Module], batches: Iterable[dict], device: torch.device
    ) -> dict[str, float]:
        """Held-out :func:`mlm_metrics` of a block stack (student or teacher), in eval mode."""
        model = nn.Sequential(*blocks).to(device).eval()

        def predict(batch: dict) -> torch.Tensor:
            x = self.units_of(batch)
            x = {k: v.to(device) for k, v in x.items()} if isinstance(x, dict) else x.to(device)
            return self.unpack(model(x), batch["input_ids"].shape[1])["logits"]

        return mlm_metrics(predict, batches)


@torch.no_grad()
def mlm_metrics(predict: Callable[[dict], torch.Tensor], batches: Iterable[dict]) -> dict[str, float]:
    """Masked-token accuracy and perplexity.

    Args:
        predict: a batch -> logits at its masked positions (``[masked tokens, vocab]``, row-major).
        batches: masked batches (``input_ids``, ``attention_mask``, ``labels``).

    Returns:
        ``mlm_acc`` (share of masked tokens predicted exactly), ``mlm_loss`` (mean
        cross-entropy), ``mlm_ppl`` (its exponential) and ``masked_tokens``.
    """
    correct, nll, count = 0, 0.0, 0
    for batch in batches:
        logits = predict(batch).float()
        labels = batch["labels"][batch["labels"] != -100].to(logits.device)
        correct += int((logits.argmax(dim=-1) == labels).sum())
        nll += float(F.cross_entropy(logits, labels, reduction="sum"))
        count += labels.numel()
    loss = nll / max(count, 1)
    return {
        "mlm_acc": correct / max(count, 1),
        "mlm_loss": loss,
        "mlm_ppl": math.exp(min(loss, 50.0)),
        "masked_tokens": float(count),
    }
