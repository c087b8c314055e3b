# Soft-target knowledge distillation (methods/soft_target): teacher, throughput, accuracy.
# Included by the main Makefile (PY, STAMP, data, DEVICE, NPROC come from there).

.PHONY: teacher-kd bench-kd accuracy-kd

# The teacher every CPU KD run distils from: ResNet-18 of width 32 on all of Fashion-MNIST at
# 16x16, one epoch on both cores (about 5 min on 2 idle cores). Saved once, with its test top-1,
# under the ignored artifacts/ folder; delete the file to train it again.
KD_TEACHER := artifacts/soft_target/fashion_mnist-resnet18w32-16px.pt
teacher-kd: $(KD_TEACHER)
$(KD_TEACHER): | $(STAMP) data
	$(PY) -m methods.soft_target.teacher --preset cpu

# Every schedule at 2 stages, sequential, ddp and the torch pipelining peer (CPU default: about
# 6 min on 2 idle cores, plus the teacher if it is missing). On a GPU node:
#   make bench-kd DEVICE=cuda NPROC=4   (ResNet-152 -> ResNet-50; PRESET=vitl16-to-resnet152-224-4gpu)
# synthetic 224x224, bf16, random teacher unless OVERRIDES=teacher_checkpoint=PATH.
bench-kd: $(STAMP) $(if $(filter cpu,$(DEVICE)),data $(KD_TEACHER))
	$(call bench,soft_target,)
	$(PY) -m analysis.soft_target bench $(call BENCH_OUT,soft_target)

# Teacher top-1, student alone, KD under sequential and under tspipe (2 processes), 8 seeds (5
# left KD's gain over the student alone inside its 95 % interval), each with its own data order
# and initial weights shared by its runs; the student trains on 1,000 images; the largest
# parameter difference between the two KD students (CPU, about 6 min on 2 idle cores).
accuracy-kd: $(STAMP) data $(KD_TEACHER)
	$(PY) -m experiments.accuracy_kd --seeds 0 1 2 3 4 5 6 7 --out results/soft_target/accuracy
	$(PY) -m analysis.soft_target accuracy results/soft_target/accuracy --command "make accuracy-kd"
