"""MLP classification head on a global feature (the DGCNN / PointNet recipes of the spec)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn


class ClassifierHead(nn.Module):
    """Linear → BN → activation → dropout blocks, then a linear layer to the class logits.

    ``hidden_bias=False`` reproduces the DGCNN head (its first linear has no bias; the BN after it
    makes a bias redundant). Returns logits; the loss applies (log-)softmax.
    """

    def __init__(
        self,
        in_dim: int,
        num_classes: int,
        hidden: Sequence[int] = (512, 256),
        dropout: float = 0.5,
        activation: str = "leaky_relu",
        hidden_bias: bool = False,
    ) -> None:
        super().__init__()
        acts = {"leaky_relu": lambda: nn.LeakyReLU(0.2), "relu": nn.ReLU}
        if activation not in acts:
            raise ValueError(f"activation must be one of {sorted(acts)}, got {activation!r}")
        layers: list[nn.Module] = []
        width = in_dim
        for i, out in enumerate(hidden):
            layers += [
                nn.Linear(width, out, bias=hidden_bias or i > 0),
                nn.BatchNorm1d(out),
                acts[activation](),
                nn.Dropout(dropout),
            ]
            width = out
        layers.append(nn.Linear(width, num_classes))
        self.mlp = nn.Sequential(*layers)

    def forward(self, feature: Tensor) -> Tensor:
        return self.mlp(feature)
