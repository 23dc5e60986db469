"""Accuracy of a vision model on a labelled image set.

  classifier (a model that returns logits): top-1 and top-5 accuracy of its logits against the labels
  backbone (Dinov2Model, ViTModel: no classifier): weighted k-NN on the class-token features, leave-one-out over the
  evaluation images, DINO's protocol: cosine similarity, the k nearest other images vote for their class with
  weight exp(similarity / T), k = 20, T = 0.07

The protocol string says which, on what and how many images, so that two numbers are only compared when they mean
the same thing.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

KNN_NEIGHBOURS = 20
KNN_TEMPERATURE = 0.07


class AccuracyResult(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    top1: float
    top5: float | None  # classifiers with at least 5 classes
    images: int
    protocol: str


def model_outputs(model: nn.Module, pixels: torch.Tensor, batch_size: int,
                  device: torch.device | str = "cpu") -> tuple[torch.Tensor, bool]:
    """Per image: the logits of a classifier, or a backbone's class-token features (its last hidden state at
    position 0, after the final norm); and whether they are logits."""
    outputs, are_logits = [], False
    with torch.no_grad():
        for batch in pixels.split(batch_size):
            result: Any = model(pixel_values=batch.to(device))
            logits: torch.Tensor | None = getattr(result, "logits", None)
            are_logits = logits is not None
            chosen = logits if logits is not None else result.last_hidden_state[:, 0]
            outputs.append(chosen.float().cpu())
    return torch.cat(outputs), are_logits


def classification_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, float | None]:
    """(top-1, top-5) of `logits` (N, classes) against `labels` (N,); top-5 is None with fewer than 5 classes."""
    top1 = float((logits.argmax(dim=1) == labels).float().mean())
    if logits.shape[1] < 5:
        return top1, None
    top5 = float((logits.topk(5, dim=1).indices == labels.unsqueeze(1)).any(dim=1).float().mean())
    return top1, top5


def knn_accuracy(features: torch.Tensor, labels: torch.Tensor, neighbours: int = KNN_NEIGHBOURS,
                 temperature: float = KNN_TEMPERATURE, chunk: int = 1024) -> float:
    """Leave-one-out weighted k-NN top-1 over `features` (N, d):
      score_c(i) = Σ_{j ∈ kNN(i), j ≠ i, y_j = c} exp(cos(f_i, f_j) / T),   prediction argmax_c score_c(i)."""
    normalized = nn.functional.normalize(features.float(), dim=1)
    classes = int(labels.max()) + 1
    neighbours = min(neighbours, len(labels) - 1)
    correct = 0
    for start in range(0, len(labels), chunk):
        similarity = normalized[start:start + chunk] @ normalized.T
        rows = torch.arange(similarity.shape[0])
        similarity[rows, rows + start] = -float("inf")  # an image is not its own neighbour
        nearest, indices = similarity.topk(neighbours, dim=1)
        weights = (nearest / temperature).exp()
        votes = torch.zeros(similarity.shape[0], classes).scatter_add_(1, labels[indices], weights)
        correct += int((votes.argmax(dim=1) == labels[start:start + chunk]).sum())
    return correct / len(labels)


def image_accuracy(model: nn.Module, pixels: torch.Tensor, labels: torch.Tensor, dataset: str,
                   batch_size: int = 64, device: torch.device | str = "cpu") -> AccuracyResult:
    """Top-1 (and top-5) of a classifier, or the k-NN top-1 of a backbone, on `pixels` with their `labels`."""
    outputs, are_logits = model_outputs(model, pixels, batch_size, device)
    if are_logits:
        top1, top5 = classification_accuracy(outputs, labels)
        return AccuracyResult(top1=top1, top5=top5, images=len(labels),
                              protocol=f"top1[{dataset}|images={len(labels)}]")
    top1 = knn_accuracy(outputs, labels)
    return AccuracyResult(top1=top1, top5=None, images=len(labels),
                          protocol=f"knn{KNN_NEIGHBOURS}-loo[{dataset}|images={len(labels)}|class-token|"
                                   f"cosine|T={KNN_TEMPERATURE}]")
