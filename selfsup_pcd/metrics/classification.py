"""Overall and mean-class accuracy from a confusion matrix.

Mean-class accuracy (mAcc) averages the recall of the classes that occur in the targets, like
scikit-learn's ``balanced_accuracy_score``; a class that never occurs (e.g. the 37 ModelNet40 classes
absent from a 3-class subset) neither counts as 0 nor as 1.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def accuracy_from_confusion(confusion: Tensor | np.ndarray) -> tuple[float, float]:
    """(overall accuracy, mean-class accuracy) of a (C, C) matrix with rows = targets, cols = predictions."""
    cm = torch.as_tensor(confusion, dtype=torch.float64)
    total = cm.sum()
    if total == 0:
        raise ValueError("empty confusion matrix")
    support = cm.sum(dim=1)
    present = support > 0
    recall = torch.diagonal(cm)[present] / support[present]
    return float(torch.diagonal(cm).sum() / total), float(recall.mean())
