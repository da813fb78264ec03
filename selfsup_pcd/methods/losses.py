"""Contrastive losses shared by the pretraining methods (pure torch)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def nt_xent(p: Tensor, q: Tensor, temperature: float = 0.5) -> Tensor:
    """SimCLR's NT-Xent between paired rows of ``p`` and ``q`` (each (..., M, D)), mean over the 2M anchors.

    Z = [p; q] L2-normalised; the positive of row i is its partner in the other half and the negatives are
    the other 2M - 2 rows of the same group. Leading dimensions are independent groups (MVR: one group per
    object, so there are no cross-object negatives, as in the original); the result is the mean over groups.
    """
    if p.shape != q.shape:
        raise ValueError(f"nt_xent needs paired rows of equal shape, got {tuple(p.shape)} and {tuple(q.shape)}")
    m = p.shape[-2]
    z = F.normalize(torch.cat([p, q], dim=-2), dim=-1)
    logits = z @ z.transpose(-1, -2) / temperature
    eye = torch.eye(2 * m, dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(eye, float("-inf"))
    partner = torch.cat([torch.arange(m, 2 * m), torch.arange(0, m)]).to(z.device)
    log_prob = logits.log_softmax(dim=-1)
    positive = log_prob.gather(-1, partner.expand(*log_prob.shape[:-1]).unsqueeze(-1)).squeeze(-1)
    return -positive.mean()
