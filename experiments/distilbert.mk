# DistilBERT-style masked-LM distillation (issue 7). Included by the main Makefile.
.PHONY: teacher-distilbert bench-distilbert accuracy-distilbert

# MiniLM fine-tuned for masked-LM: the teacher every distillation run loads, saved once with its
# held-out masked-token accuracy and perplexity (artifacts/distilbert/teacher/teacher.json).
# On CPU, the cpu preset's 2000 steps (about 2 epochs of the corpus, 35 min on 2 idle cores).
# DB_TEACHER_PRESET=gpu on a GPU; DB_TEACHER_ARGS adds key=value overrides. Delete the file to
# fine-tune again.
DISTILBERT_TEACHER := artifacts/distilbert/teacher/teacher.pt
DB_TEACHER_PRESET ?= cpu
DB_TEACHER_ARGS ?=
teacher-distilbert: $(DISTILBERT_TEACHER)
$(DISTILBERT_TEACHER): | $(STAMP)
	$(PY) -m methods.distilbert.teacher --preset $(DB_TEACHER_PRESET) $(DB_TEACHER_ARGS)

# Every schedule, ddp and the torch pipelining peer side by side (CPU default, about 38 min; needs
# no fine-tuned teacher). On GPUs: make bench-distilbert DEVICE=cuda NPROC=4 (BERT-large, seq 128;
# PRESET=bertlarge-512-4gpu for the long sequences).
bench-distilbert: $(STAMP)
	$(call bench,distilbert,)

# Distillation and MLM alone, 3 paired seeds, and distillation under tspipe at the first seed (it
# must be bitwise equal): held-out masked-token accuracy and perplexity (CPU, about 60 min, plus
# the teacher's 33 when it is missing).
accuracy-distilbert: $(STAMP) $(DISTILBERT_TEACHER)
	$(PY) -m experiments.accuracy_distilbert --seeds 0 1 2 --out results/distilbert/accuracy
