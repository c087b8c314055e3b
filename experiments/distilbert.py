"""DistilBERT presets: the teacher fine-tune, the CPU defaults, tests, accuracy and paper scale."""

# BERT-large (Devlin et al. 2019): 24 layers, hidden 1024, 16 heads, feed-forward 4096.
_BERT_LARGE = dict(teacher="random", teacher_layers=24, hidden=1024, heads=16, intermediate=4096)

PRESETS: dict[str, dict] = {
    # CPU default: the fine-tuned MiniLM (6 x 384) into a 3-layer student on Shakespeare + KJV,
    # 128-token blocks.
    "cpu": dict(
        teacher="finetuned",
        student_layers=3,
        corpus="shakespeare,kjv",
        seq_len=128,
        batch=16,
        steps=200,
        optimizer="adamw",
        lr=5e-4,
        weight_decay=0.01,
        warmup_steps=20,
        max_grad_norm=5.0,
        eval_blocks=512,
        threads=2,
    ),
    # make accuracy-distilbert: distillation vs MLM alone, held-out masked-token accuracy and
    # perplexity on 512 fixed held-out blocks. Two micro-batches and one backward piece on every
    # schedule, so sequential and tspipe run the same forwards and differ only in where they run.
    # About 3.5 s a step on one core: 300 steps take about 18 minutes.
    "accuracy": dict(
        teacher="finetuned",
        student_layers=3,
        corpus="shakespeare,kjv",
        seq_len=128,
        batch=16,
        microbatches=2,
        backward_pieces=1,
        steps=300,
        optimizer="adamw",
        lr=5e-4,
        weight_decay=0.01,
        warmup_steps=30,
        max_grad_norm=5.0,
        eval_blocks=512,
        log_every=5,
        threads=1,
    ),
    # make bench-distilbert: MiniLM as installed (no fine-tune needed: throughput does not depend
    # on the weights) into 3 layers, real 128-token blocks.
    "bench": dict(
        teacher="minilm",
        student_layers=3,
        corpus="shakespeare,kjv",
        seq_len=128,
        batch=8,
        steps=20,
        optimizer="adamw",
        lr=5e-4,
        warmup_steps=2,
        max_grad_norm=5.0,
        threads=1,
    ),
    # tests: a tiny random BERT (4 x 32) into 2 layers, the stdlib pydoc text, 32-token blocks.
    "tiny": dict(
        teacher="random",
        teacher_layers=4,
        hidden=32,
        heads=2,
        intermediate=64,
        init_range=0.2,
        student_layers=2,
        corpus="pydoc",
        seq_len=32,
        batch=8,
        steps=3,
        optimizer="adamw",
        lr=1e-3,
        weight_decay=0.01,
        warmup_steps=1,
        max_grad_norm=5.0,
        eval_blocks=32,
        eval_batch=16,
        threads=1,
    ),
    # GPU check (issue 7): BERT-large teacher into the calibrated 6-layer, BERT-base-width student
    # (random, so no cosine loss), 64 x 128 tokens, bf16, one GPU.
    "gpucheck": dict(
        **_BERT_LARGE,
        student_layers=6,
        student_hidden=768,
        alpha_cos=0.0,
        corpus="synthetic",
        seq_len=128,
        batch=64,
        steps=30,
        warmup_steps=5,
        device="cuda",
        amp_bf16=True,
        schedule="sequential",
    ),
    # paper throughput: BERT-large-shaped teacher (random init) into a half-depth student
    # (12 x 1024, every other teacher layer), sequence 128 or 512, 4 or 8 GPUs.
    **{
        f"bertlarge-{seq}-{gpus}gpu": dict(
            **_BERT_LARGE,
            student_layers=12,
            corpus="synthetic",
            seq_len=seq,
            batch=64 if seq == 128 else 16,
            steps=50,
            warmup_steps=10,
            device="cuda",
            amp_bf16=True,
            schedule="tspipe",
            stages=gpus,
            microbatches=gpus,
        )
        for seq in (128, 512)
        for gpus in (4, 8)
    },
}

# `make teacher-distilbert` (methods.distilbert.teacher): MiniLM's new MLM head and its encoder
# fine-tuned for masked-LM on the training split.
TEACHER_PRESETS: dict[str, dict] = {
    # CPU: 2 threads, about 2 s a step on 2 cores: 500 steps and three evaluations of 512 held-out
    # blocks in about 20 minutes (30 at most).
    "cpu": dict(
        corpus="shakespeare,kjv",
        seq_len=128,
        batch=16,
        steps=500,
        lr=3e-4,
        weight_decay=0.01,
        warmup_steps=30,
        max_grad_norm=1.0,
        eval_blocks=512,
        eval_every=250,
        threads=2,
    ),
    # one GPU: longer and wider batches.
    "gpu": dict(
        corpus="shakespeare,kjv",
        seq_len=128,
        batch=64,
        steps=4000,
        lr=3e-4,
        weight_decay=0.01,
        warmup_steps=200,
        max_grad_norm=1.0,
        eval_blocks=0,
        eval_every=1000,
        device="cuda",
        amp_bf16=True,
    ),
    # tests: a few steps on the pydoc text.
    "tiny": dict(
        corpus="pydoc",
        seq_len=32,
        batch=4,
        steps=2,
        lr=3e-4,
        warmup_steps=1,
        eval_blocks=8,
        eval_every=0,
        threads=1,
    ),
}
