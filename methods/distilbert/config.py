"""The configs of a masked-LM distillation run (the ``method`` section) and of its teacher's
fine-tune."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from core.config import PipelineConfig, RunConfig
from core.schedules import get_schedule
from methods.common.optim import OPTIMIZERS
from methods.distilbert.data import parse_corpus
from methods.distilbert.model import UNITS

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "artifacts" / "distilbert"
TEACHER_PATH = ARTIFACTS / "teacher" / "teacher.pt"
TEACHERS = ("finetuned", "minilm", "random")
MINILM_SHAPE = dict(teacher_layers=6, hidden=384, heads=12, intermediate=1536)


@dataclass(frozen=True)
class DistilConfig:
    """A masked-LM distillation run's models, data, losses and optimiser (the ``method`` section).

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
        units: ``dict``, ``tensor`` (one tensor per unit, as the torch pipelining peer needs) or
            ``auto`` (tensor under the torch peer, dict otherwise).
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
    units: str = "auto"
    eval_blocks: int = 512
    eval_batch: int = 32

    def __post_init__(self) -> None:
        if self.teacher not in TEACHERS:
            raise ValueError(f"teacher must be one of {TEACHERS}, got {self.teacher!r}")
        if self.units not in (*UNITS, "auto"):
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
        if self.init_range <= 0:
            raise ValueError(f"init_range must be > 0, got {self.init_range}")
        if self.units == "tensor" and self.student_hidden not in (0, width):
            raise ValueError("units=tensor needs student_hidden=0")

    def check_with(self, pipeline: PipelineConfig, run: RunConfig) -> None:
        """The torch peer passes one tensor between stages; the batch fills every micro-batch."""
        if self.units_for(pipeline) != "tensor" and get_schedule(pipeline.schedule).runner == "torch":
            raise ValueError(
                f"{pipeline.schedule} (PyTorch's pipelining) passes one tensor between stages: use units=tensor or auto"
            )
        if self.batch < pipeline.microbatches * pipeline.replicas:
            raise ValueError(f"batch {self.batch} is smaller than the micro-batches it is split into")

    def units_for(self, pipeline: PipelineConfig) -> str:
        """The unit form a run uses (``auto`` resolved for its runner)."""
        if self.units != "auto":
            return self.units
        return "tensor" if get_schedule(pipeline.schedule).runner == "torch" else "dict"

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
