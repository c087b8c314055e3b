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

# Every schedule, ddp and the torch pipelining peer side by side (CPU default, about 38 min; needs
# no fine-tuned teacher). On GPUs: make bench-distilbert DEVICE=cuda NPROC=4 (BERT-large, seq 128;
# PRESET=bertlarge-512-4gpu for the long sequences).
bench-distilbert: $(STAMP)
	$(call bench,distilbert,)

# Distillation under sequential and tspipe (they must match) and MLM alone: held-out masked-token
# accuracy and perplexity (CPU, about 35 min; makes the teacher first when it is missing).
accuracy-distilbert: $(STAMP) $(DISTILBERT_TEACHER)
	$(PY) -m experiments.accuracy_distilbert --out results/distilbert/accuracy
