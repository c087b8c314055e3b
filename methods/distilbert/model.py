"""BERT as pipeline blocks (embeddings, each layer, the MLM head), the teachers, and the
DistilBERT student.

Blocks pass what the next one needs. With ``units="dict"`` (the default) a block takes and
returns a dict of tensors sharing dimension 0: ``input_ids``/``attention_mask``/``masked`` into
the embeddings, ``hidden``/``attention_mask``/``masked`` between layers, and from the head
``logits`` (only at masked positions, in row-major order: ``[masked tokens, vocab]``) and
``hidden`` (the last hidden states, for the cosine loss). With ``units="tensor"`` every unit is a
single tensor, for runners that pass tensors only (PyTorch's pipelining): the input is
``[b, T, 2]`` int64 (ids, masked flag), activations are ``[b, T, H + 1]`` (hidden states and the
flag), and the head returns ``[b, k x vocab + T x H]`` (the logits of the ``k`` masked tokens of
each sequence, then its hidden states); this needs the same ``k`` in every sequence and no
padding, which full blocks guarantee (``methods.distilbert.data.masked_per_sequence``).

The MLM decoder is a copy of the word embeddings, not tied to them: embeddings and head live on
different stages, and a parameter cannot be shared across processes.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import nn

from methods.distilbert.data import minilm_path, offline

log = logging.getLogger(__name__)

UNITS = ("dict", "tensor")
TEACHER_FORMAT = 1


def attention_bias(attention_mask: torch.Tensor, layer: nn.Module, dtype: torch.dtype) -> torch.Tensor:
    """The ``[b, 1, 1, T]`` attention mask a ``BertLayer`` takes: boolean (True attends) for the
    SDPA kernels, additive (0 or the dtype's minimum) for eager attention. Built without reading
    the mask's values, so it costs no device synchronisation."""
    keep = attention_mask[:, None, None, :].bool()
    if getattr(layer.attention.self.config, "_attn_implementation", None) == "sdpa":
        return keep
    return (~keep).to(dtype) * torch.finfo(dtype).min


class Embeddings(nn.Module):
    """Word, position and token-type embeddings with their LayerNorm (BERT's ``BertEmbeddings``)."""

    def __init__(self, embeddings: nn.Module, packed: bool = False) -> None:
        super().__init__()
        self.embeddings = embeddings
        self.packed = packed

    def forward(self, x):
        if self.packed:
            hidden = self.embeddings(input_ids=x[..., 0])
            return torch.cat([hidden, x[..., 1:].to(hidden.dtype)], dim=-1)
        hidden = self.embeddings(input_ids=x["input_ids"])
        return {"hidden": hidden, "attention_mask": x["attention_mask"], "masked": x["masked"]}


class Layer(nn.Module):
    """One transformer layer (``BertLayer``); the masks pass through unchanged."""

    def __init__(self, layer: nn.Module, packed: bool = False) -> None:
        super().__init__()
        self.layer = layer
        self.packed = packed

    def forward(self, x):
        if self.packed:
            hidden = self.layer(x[..., :-1])
            return torch.cat([hidden, x[..., -1:].detach().to(hidden.dtype)], dim=-1)
        hidden = self.layer(x["hidden"], attention_bias(x["attention_mask"], self.layer, x["hidden"].dtype))
        return {"hidden": hidden, "attention_mask": x["attention_mask"], "masked": x["masked"]}


class Head(nn.Module):
    """The MLM head (transform + decoder), applied to the masked positions only; the last hidden
    states pass through for the cosine loss.

    Args:
        head: ``BertOnlyMLMHead``.
        packed: ``tensor`` units.
        per_sequence: masked tokens in every sequence (``tensor`` units: the output shape must
            not depend on the data, PyTorch's pipelining infers it from placeholder inputs).
    """

    def __init__(self, head: nn.Module, packed: bool = False, per_sequence: int = 0) -> None:
        super().__init__()
        if packed and per_sequence < 1:
            raise ValueError("tensor units need per_sequence >= 1 (masked tokens in every sequence)")
        self.head = head
        self.packed = packed
        self.per_sequence = per_sequence

    def forward(self, x):
        if self.packed:
            hidden = x[..., :-1]
            b, _, width = hidden.shape
            # the flagged positions in order (topk, then sorted: the same rows as hidden[masked])
            index = x[..., -1].detach().topk(self.per_sequence, dim=1).indices.sort(dim=1).values
            picked = hidden.gather(1, index[..., None].expand(-1, -1, width))
            logits = self.head(picked).reshape(b, -1)
            return torch.cat([logits.to(hidden.dtype), hidden.reshape(b, -1)], dim=1)
        hidden = x["hidden"]
        return {"logits": self.head(hidden[x["masked"]]), "hidden": hidden}


def blocks_of(
    model, packed: bool = False, layers: list[int] | None = None, per_sequence: int = 0
) -> list[nn.Module]:
    """Copies of a ``BertForMaskedLM``'s parts as blocks: embeddings, the chosen layers (all by
    default), the MLM head (its decoder untied from the embeddings). ``per_sequence``: masked
    tokens per sequence, for ``tensor`` units."""
    chosen = range(len(model.bert.encoder.layer)) if layers is None else layers
    return [
        Embeddings(copy.deepcopy(model.bert.embeddings), packed),
        *[Layer(copy.deepcopy(model.bert.encoder.layer[i]), packed) for i in chosen],
        Head(copy.deepcopy(model.cls), packed, per_sequence),
    ]


def every_other(teacher_layers: int, student_layers: int) -> list[int]:
    """Teacher layers a student of ``student_layers`` starts from: evenly spaced from the first
    (6 -> 3: 0, 2, 4; 24 -> 12: 0, 2, ..., 22), DistilBERT's every-other-layer initialisation.

    Raises:
        ValueError: if the student is not shallower than the teacher.
    """
    if not 1 <= student_layers <= teacher_layers:
        raise ValueError(f"student_layers must lie in [1, {teacher_layers}], got {student_layers}")
    return [i * teacher_layers // student_layers for i in range(student_layers)]


def set_dropout(blocks: list[nn.Module], p: float) -> None:
    """Set every dropout probability (hidden and attention) of the blocks to ``p``."""
    for block in blocks:
        for module in block.modules():
            if isinstance(module, nn.Dropout):
                module.p = p


# ---- teachers ----------------------------------------------------------------------------------


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Hide transformers' load report (the MLM head of MiniLM is missing by design)."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def bert_config(
    layers: int, hidden: int, heads: int, intermediate: int, vocab_size: int = 30522, init_range: float = 0.02
):
    """A ``transformers.BertConfig`` (absolute positions up to 512, the uncased vocabulary,
    weights drawn with standard deviation ``init_range``)."""
    from transformers import BertConfig

    return BertConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=intermediate,
        max_position_embeddings=512,
        initializer_range=init_range,
    )


def random_bert(config, seed: int):
    """A randomly initialised ``BertForMaskedLM`` (the same weights in every process for a seed)."""
    from transformers import BertForMaskedLM

    torch.manual_seed(seed)
    with _quiet_transformers():
        model = BertForMaskedLM(config)
    return model.to(torch.get_default_dtype()).eval()


def minilm(seed: int):
    """all-MiniLM-L6-v2 as ``BertForMaskedLM`` from the installed package; its MLM transform is
    newly initialised from ``seed`` (the decoder is tied to the real word embeddings)."""
    offline()
    from transformers import BertForMaskedLM

    torch.manual_seed(seed)
    with _quiet_transformers():
        model = BertForMaskedLM.from_pretrained(
            str(minilm_path()), local_files_only=True, attn_implementation="sdpa"
        )
    return model.to(torch.get_default_dtype()).eval()


def save_teacher(model, path: Path, metrics: dict) -> Path:
    """Save a fine-tuned teacher: its config (JSON text), weights and metrics, loadable with
    ``torch.load(..., weights_only=True)``; the metrics also go to ``teacher.json`` beside it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().float().clone() for k, v in model.state_dict().items()}
    blob = {
        "format": TEACHER_FORMAT,
        "config": model.config.to_json_string(),
        "state": state,
        "metrics": metrics,
    }
    tmp = path.with_suffix(".tmp")
    torch.save(blob, tmp)
    tmp.replace(path)
    path.with_suffix(".json").write_text(json.dumps(metrics, indent=1))
    return path


def load_teacher(path: Path):
    """The fine-tuned teacher saved by :func:`save_teacher` (``weights_only=True``).

    Raises:
        FileNotFoundError: if it is not there.
        ValueError: if the file is not a teacher of this format.
    """
    from transformers import BertConfig, BertForMaskedLM

    blob = torch.load(path, weights_only=True, map_location="cpu")
    if not isinstance(blob, dict) or blob.get("format") != TEACHER_FORMAT:
        raise ValueError(
            f"{path} is not a teacher saved by methods.distilbert.teacher; re-run make teacher-distilbert"
        )
    config = BertConfig(**json.loads(blob["config"]))
    config._attn_implementation = "sdpa"
    with _quiet_transformers():
        model = BertForMaskedLM(config)
    model.load_state_dict(blob["state"])
    return model.to(torch.get_default_dtype()).eval()


def teacher_metrics(path: Path) -> dict:
    """The held-out metrics saved with a fine-tuned teacher (``teacher.json``), or {}."""
    meta = Path(path).with_suffix(".json")
    return json.loads(meta.read_text()) if meta.exists() else {}


TeacherFactory = Callable[[], object]
