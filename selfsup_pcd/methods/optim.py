"""Optimiser pieces of the pretraining recipes that torch does not provide: the LARS wrapper and a
cosine schedule with linear warm-up built from torch's own schedulers."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.optim import Optimizer
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, LRScheduler, SequentialLR


class LARS(Optimizer):
    """Layer-wise adaptive rate scaling around any optimiser (STRL's ``LARSWrapper``, ``strl_byol.md`` §6).

    Before the inner optimiser's step, every gradient g of a tensor p with ‖p‖ ≠ 0 and ‖g‖ ≠ 0 becomes
    ``(g + wd·p) · s`` with ``s = η‖p‖ / (‖g‖ + wd‖p‖ + eps)``, and with ``clip`` ``s = min(s / lr, 1)``;
    the inner optimiser then runs with weight decay 0 (the decay is already in the gradient). With STRL's
    Adam at lr 1e-3 and η = 0.02 the clip only bites when ‖g‖ > 20‖p‖.

    ``LARS(params, optimizer=partial(torch.optim.Adam, lr=...))``: the inner optimiser owns the parameter
    groups and state (shared, not copied), so LR schedulers and checkpoints see the inner optimiser's.
    """

    def __init__(
        self,
        params: Iterable[torch.nn.Parameter] | Iterable[dict[str, Any]],
        optimizer: Callable[..., Optimizer],
        eta: float = 0.02,
        clip: bool = True,
        eps: float = 1e-8,
    ) -> None:
        inner = optimizer(params)
        super().__init__(inner.param_groups, inner.defaults)
        self.inner, self.eta, self.clip, self.eps = inner, eta, clip, eps
        self.param_groups = inner.param_groups  # share, so schedulers change the inner optimiser's lr
        self.state = inner.state

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        decays = []
        for group in self.param_groups:
            wd = group.get("weight_decay", 0.0)
            decays.append(wd)
            for p in group["params"]:
                if p.grad is not None:
                    self._scale_gradient(p, group["lr"], wd)
            group["weight_decay"] = 0.0
        try:
            self.inner.step()
        finally:
            for group, wd in zip(self.param_groups, decays):
                group["weight_decay"] = wd
        return loss

    def _scale_gradient(self, p: torch.Tensor, lr: float, wd: float) -> None:
        p_norm, g_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(p.grad)
        if p_norm == 0 or g_norm == 0:
            return
        scale = self.eta * p_norm / (g_norm + p_norm * wd + self.eps)
        if self.clip:
            scale = torch.clamp(scale / lr, max=1.0)
        p.grad.add_(p, alpha=wd).mul_(scale)

    def state_dict(self) -> dict[str, Any]:
        return self.inner.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.inner.load_state_dict(state_dict)
        self.param_groups, self.state = self.inner.param_groups, self.inner.state

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.inner.zero_grad(set_to_none=set_to_none)


def warmup_cosine(
    optimizer: Optimizer, max_epochs: int, warmup_epochs: int = 0, eta_min: float = 0.0,
    warmup_start_factor: float = 0.01,
) -> LRScheduler:
    """Linear warm-up from ``warmup_start_factor``·lr over ``warmup_epochs``, then cosine to ``eta_min``.

    Stepped once per epoch (STRL: cosine over the epochs, eta_min 0, no warm-up). Built from torch's
    LinearLR, CosineAnnealingLR and SequentialLR; without warm-up it is the plain CosineAnnealingLR.
    """
    if warmup_epochs <= 0:
        return CosineAnnealingLR(optimizer, T_max=max_epochs, eta_min=eta_min)
    if warmup_epochs >= max_epochs:
        raise ValueError(f"warmup_epochs ({warmup_epochs}) must be below max_epochs ({max_epochs})")
    warmup = LinearLR(optimizer, start_factor=warmup_start_factor, total_iters=warmup_epochs)
    cosine = CosineAnnealingLR(optimizer, T_max=max_epochs - warmup_epochs, eta_min=eta_min)
    return SequentialLR(optimizer, [warmup, cosine], milestones=[warmup_epochs])
