# DistilBERT-style masked-LM distillation (issue 7). Included by the main Makefile.
.PHONY: teacher-distilbert bench-distilbert accuracy-distilbert

# MiniLM fine-tuned for masked-LM: the teacher every distillation run loads, saved once with its
# held-out masked-token accuracy and perplexity (artifacts/distilbert/teacher/teacher.json).
# CPU preset: 500 steps, about 20 min on 2 idle cores; DB_TEACHER_PRESET=gpu on a GPU. Delete the
# file to fine-tune again.
DISTILBERT_TEACHER := artifacts/distilbert/teacher/teacher.pt
DB_TEACHER_PRESET ?= cpu
teacher-distilbert: $(DISTILBERT_TEACHER)
$(DISTILBERT_TEACHER): | $(STAMP)
	$(PY) -m methods.distilbert.teacher --preset $(DB_TEACHER_PRESET)

# Every schedule, ddp and the torch pipelining peer side by side (CPU default, about 7 min; needs
# no fine-tuned teacher). On GPUs: make bench-distilbert DEVICE=cuda NPROC=4 DB_MODEL=bertlarge DB_BATCH=64
# (DB_SEQ=512 DB_BATCH=16 for the long sequences).
DB_MODEL ?= minilm
DB_SEQ ?= 128
DB_BATCH ?= 8
DB_OUT = results/distilbert$(if $(filter cpu,$(DEVICE)),,-$(DEVICE)-$(DB_MODEL)-$(DB_SEQ))
bench-distilbert: $(STAMP)
	$(PY) -m experiments.bench_distilbert --device $(DEVICE) --nproc $(NPROC) --model $(DB_MODEL) \
		--seq $(DB_SEQ) --batch $(DB_BATCH) --out $(DB_OUT)
	$(PY) -m analysis.bench $(DB_OUT) --command "make bench-distilbert" \
		--title "DistilBERT throughput, $(DB_MODEL) teacher, seq $(DB_SEQ), $(NPROC) stages, $(DEVICE)"

# Distillation under sequential and tspipe (they must match) and MLM alone: held-out masked-token
# accuracy and perplexity (CPU, about 35 min; makes the teacher first when it is missing).
accuracy-distilbert: $(STAMP) $(DISTILBERT_TEACHER)
	$(PY) -m experiments.accuracy_distilbert --out results/distilbert/accuracy
