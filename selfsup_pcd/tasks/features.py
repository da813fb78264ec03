"""Frozen-backbone feature extraction for the evaluations that fit a classifier on features."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm


def pick_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@torch.no_grad()
def extract_features(
    backbone: nn.Module, loader: DataLoader, device: torch.device, desc: str = "features"
) -> tuple[np.ndarray, np.ndarray]:
    """Global features (S, D) and labels (S,) of every shape in ``loader``, backbone in eval mode."""
    was_training = backbone.training
    backbone.eval().to(device)
    features, labels = [], []
    try:
        for batch in tqdm(loader, desc=desc, leave=False):
            out = backbone(batch["points"].to(device, non_blocking=True))
            features.append(out.global_feat.float().cpu())
            labels.append(batch["label"])
    finally:
        backbone.train(was_training)
    return torch.cat(features).numpy(), torch.cat(labels).numpy()
