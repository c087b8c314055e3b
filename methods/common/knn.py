"""Evaluation of self-supervised features: weighted kNN and a linear probe on frozen features."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


@torch.no_grad()
def extract(
    model: nn.Module, images: torch.Tensor, batch: int = 256, device: torch.device | None = None
) -> torch.Tensor:
    """Features of ``images`` under ``model`` in eval mode, L2-normalised, on CPU."""
    device = device or torch.device("cpu")
    model.eval()
    out = []
    for start in range(0, len(images), batch):
        out.append(model(images[start : start + batch].to(device)).float().cpu())
    return F.normalize(torch.cat(out), dim=1)


@torch.no_grad()
def knn_accuracy(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    k: int = 200,
    temperature: float = 0.1,
    classes: int | None = None,
    chunk: int = 512,
) -> float:
    """Top-1 accuracy of the weighted kNN classifier (Wu et al. 2018, as in the BYOL/MoCo
    literature): the k most cosine-similar training features vote for their class with weight
    ``exp(similarity / temperature)``. Features must be L2-normalised.

    Returns:
        Accuracy in [0, 1].
    """
    classes = classes or int(train_labels.max()) + 1
    k = min(k, len(train_features))
    correct = 0
    for start in range(0, len(test_features), chunk):
        sim = test_features[start : start + chunk] @ train_features.T
        weights, index = sim.topk(k, dim=1)
        votes = torch.zeros(len(sim), classes, dtype=weights.dtype)
        votes.scatter_add_(1, train_labels[index], (weights / temperature).exp())
        correct += int((votes.argmax(1) == test_labels[start : start + chunk]).sum())
    return correct / len(test_features)


def linear_probe(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    max_iter: int = 1000,
) -> float:
    """Top-1 accuracy of a logistic-regression probe on frozen features (scikit-learn, L-BFGS)."""
    from sklearn.linear_model import LogisticRegression

    probe = LogisticRegression(max_iter=max_iter)
    probe.fit(train_features.numpy(), train_labels.numpy())
    return float(probe.score(test_features.numpy(), test_labels.numpy()))


def evaluate_features(
    encoder: Callable[[torch.Tensor], torch.Tensor] | nn.Module,
    train: tuple[torch.Tensor, torch.Tensor],
    test: tuple[torch.Tensor, torch.Tensor],
    k: int = 200,
    temperature: float = 0.1,
    probe: bool = False,
    device: torch.device | None = None,
) -> dict[str, float]:
    """kNN (and optionally linear-probe) top-1 of an encoder on prepared image tensors."""
    train_f = extract(encoder, train[0], device=device)
    test_f = extract(encoder, test[0], device=device)
    out = {"knn_top1": knn_accuracy(train_f, train[1], test_f, test[1], k, temperature)}
    if probe:
        out["linear_top1"] = linear_probe(train_f, train[1], test_f, test[1])
    return out
