# MoCo-v3 with a ViT (methods/moco_v3): throughput of every schedule, accuracy parity of tspipe.
# Included by the main Makefile (PY, STAMP, data, DEVICE, NPROC come from there).

.PHONY: bench-mocov3 accuracy-mocov3

# Every schedule at 2 stages, sequential, ddp and the torch pipelining peer on the small CPU ViT
# (Fashion-MNIST 32x32, batch 64; about 5 min on 2 idle cores). On a GPU node:
# make bench-mocov3 DEVICE=cuda NPROC=4 (ViT-B/16 at 224x224, batch 256, synthetic, bf16,
# half-block units); MODEL=vit_small|vit_base|vit_large, IMAGE and BATCH are passed on only
# when given (the bench-byol defaults MODEL=resnet18, IMAGE=32, BATCH=64 do not apply here).
moco_given = $(filter command line environment override,$(origin $(1)))
MOCO_MODEL := $(if $(call moco_given,MODEL),$(MODEL),$(if $(filter cpu,$(DEVICE)),vit_cpu,vit_base))
MOCO_BENCH_OUT := results/moco_v3$(if $(filter cpu,$(DEVICE)),,-$(DEVICE)-$(MOCO_MODEL))
MOCO_BENCH_ARGS := --device $(DEVICE) --nproc $(NPROC) --model $(MOCO_MODEL) \
	$(if $(call moco_given,IMAGE),--image $(IMAGE)) $(if $(call moco_given,BATCH),--batch $(BATCH))
bench-mocov3: $(STAMP) $(if $(filter cpu,$(DEVICE)),data)
	$(PY) -m experiments.bench_mocov3 $(MOCO_BENCH_ARGS) --out $(MOCO_BENCH_OUT)
	$(PY) -m analysis.bench $(MOCO_BENCH_OUT) --command "make bench-mocov3" \
		--title "MoCo-v3 throughput, $(MOCO_MODEL), $(NPROC) stages, $(DEVICE)"

# Accuracy parity: synchronous vs tspipe (one-step-stale momentum encoder), 3 seeds, kNN top-1
# per epoch (CPU, two single-thread runs at a time, about 45 min on 2 idle cores).
accuracy-mocov3: $(STAMP) data
	$(PY) -m experiments.accuracy_mocov3 --out results/moco_v3/accuracy
	$(PY) -m analysis.accuracy results/moco_v3/accuracy --command "make accuracy-mocov3" \
		--title "MoCo-v3 accuracy parity (ViT, Fashion-MNIST 16x16)"
