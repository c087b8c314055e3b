"""Soft-target knowledge distillation (Hinton et al., 2015): teacher training, the KD task,
its trainer, the throughput workload and the tables."""
