"""SR-UNet: the Res16UNet family of sparse residual U-Nets (PointContrast, used by both papers' scene results).

Encoder: a stem convolution (``conv1_kernel_size``, stride 1) then four stages, each a stride-2 kernel-2
convolution + BN + ReLU followed by ``layers[i]`` residual blocks with ``planes[i]`` channels. Decoder: four
stages, each a stride-2 transposed convolution to ``planes[4 + i]`` channels + BN + ReLU, concatenated with the
encoder output of the same resolution, then ``layers[4 + i]`` residual blocks. A 1×1×1 convolution gives
``out_channels`` per voxel. ``Res16UNet34C`` is layers (2, 3, 4, 6, 2, 2, 2, 2) with planes
(32, 64, 128, 256, 256, 128, 96, 96); ``Res16UNet14`` has one block per stage.

Module names follow PointContrast's (``conv0p1s1``, ``bn0``, ``block1.0.conv1.kernel``, ``convtr4p16s2``,
``bntr4``, ``final`` ...), so its released checkpoints load by name.

MinkowskiEngine is imported here only: the rest of the package (data loading, point networks) runs without
it. ``make install`` builds it (``selfsup_pcd/install/minkowski.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

try:
    import MinkowskiEngine as ME  # noqa: N817 (the engine's own convention)
except ImportError as err:  # pragma: no cover - exercised only without the engine
    raise ImportError("SR-UNet needs MinkowskiEngine, which `make install` builds (selfsup_pcd/install/"
                      "minkowski.py; see README 'MinkowskiEngine')") from err


@dataclass(frozen=True)
class UNetSpec:
    """Blocks per stage (4 encoder, 4 decoder) and channels per stage."""

    layers: tuple[int, ...]
    planes: tuple[int, ...]


ARCHITECTURES: dict[str, UNetSpec] = {
    "Res16UNet14": UNetSpec((1, 1, 1, 1, 1, 1, 1, 1), (32, 64, 128, 256, 256, 256, 256, 256)),
    "Res16UNet14A": UNetSpec((1, 1, 1, 1, 1, 1, 1, 1), (32, 64, 128, 256, 128, 128, 96, 96)),
    "Res16UNet18A": UNetSpec((2, 2, 2, 2, 2, 2, 2, 2), (32, 64, 128, 256, 128, 128, 96, 96)),
    "Res16UNet34": UNetSpec((2, 3, 4, 6, 2, 2, 2, 2), (32, 64, 128, 256, 256, 256, 256, 256)),
    "Res16UNet34A": UNetSpec((2, 3, 4, 6, 2, 2, 2, 2), (32, 64, 128, 256, 256, 128, 64, 64)),
    "Res16UNet34B": UNetSpec((2, 3, 4, 6, 2, 2, 2, 2), (32, 64, 128, 256, 256, 128, 64, 32)),
    "Res16UNet34C": UNetSpec((2, 3, 4, 6, 2, 2, 2, 2), (32, 64, 128, 256, 256, 128, 96, 96)),
}
INIT_DIM = 32


def _bn(channels: int, momentum: float) -> ME.MinkowskiBatchNorm:
    return ME.MinkowskiBatchNorm(channels, momentum=momentum)


class BasicBlock(nn.Module):
    """Two 3×3×3 convolutions with BN, a residual connection (1×1×1 projection when channels change)."""

    def __init__(self, inplanes: int, planes: int, bn_momentum: float, dimension: int = 3) -> None:
        super().__init__()
        self.conv1 = ME.MinkowskiConvolution(inplanes, planes, kernel_size=3, stride=1, dimension=dimension)
        self.norm1 = _bn(planes, bn_momentum)
        self.conv2 = ME.MinkowskiConvolution(planes, planes, kernel_size=3, stride=1, dimension=dimension)
        self.norm2 = _bn(planes, bn_momentum)
        self.relu = ME.MinkowskiReLU(inplace=True)
        self.downsample = None
        if inplanes != planes:
            self.downsample = nn.Sequential(
                ME.MinkowskiConvolution(inplanes, planes, kernel_size=1, stride=1, dimension=dimension),
                _bn(planes, bn_momentum))

    def forward(self, x: ME.SparseTensor) -> ME.SparseTensor:
        residual = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return self.relu(out + residual)


class Res16UNet(nn.Module):
    """Sparse U-Net on ``ME.SparseTensor`` input; see the module docstring for the layout."""

    def __init__(self, in_channels: int, out_channels: int | None, arch: str = "Res16UNet34C",
                 conv1_kernel_size: int = 3, bn_momentum: float = 0.02, dimension: int = 3) -> None:
        super().__init__()
        if arch not in ARCHITECTURES:
            raise ValueError(f"unknown SR-UNet architecture {arch!r}; choose one of {sorted(ARCHITECTURES)}")
        spec = ARCHITECTURES[arch]
        self.arch, self.out_channels = arch, out_channels
        self.feature_dim = spec.planes[7]
        conv = ME.MinkowskiConvolution
        tconv = ME.MinkowskiConvolutionTranspose
        D, m = dimension, bn_momentum

        self.conv0p1s1 = conv(in_channels, INIT_DIM, kernel_size=conv1_kernel_size, dimension=D)
        self.bn0 = _bn(INIT_DIM, m)
        inplanes = INIT_DIM
        skips = [INIT_DIM]
        for i, (strided, norm) in enumerate(zip(("conv1p1s2", "conv2p2s2", "conv3p4s2", "conv4p8s2"),
                                                ("bn1", "bn2", "bn3", "bn4"))):
            setattr(self, strided, conv(inplanes, inplanes, kernel_size=2, stride=2, dimension=D))
            setattr(self, norm, _bn(inplanes, m))
            setattr(self, f"block{i + 1}", self._stage(inplanes, spec.planes[i], spec.layers[i], m, D))
            inplanes = spec.planes[i]
            skips.append(inplanes)
        for i, (up, norm) in enumerate(zip(("convtr4p16s2", "convtr5p8s2", "convtr6p4s2", "convtr7p2s2"),
                                           ("bntr4", "bntr5", "bntr6", "bntr7"))):
            planes = spec.planes[4 + i]
            setattr(self, up, tconv(inplanes, planes, kernel_size=2, stride=2, dimension=D))
            setattr(self, norm, _bn(planes, m))
            skip = skips[3 - i]
            setattr(self, f"block{5 + i}", self._stage(planes + skip, planes, spec.layers[4 + i], m, D))
            inplanes = planes
        # no ``final`` when pretraining: a head on ``features`` replaces it, and an unused layer would get no gradient
        self.final = None if out_channels is None else conv(inplanes, out_channels, kernel_size=1, bias=True,
                                                            dimension=D)
        self.relu = ME.MinkowskiReLU(inplace=True)

    @staticmethod
    def _stage(inplanes: int, planes: int, blocks: int, momentum: float, dimension: int) -> nn.Sequential:
        return nn.Sequential(*[BasicBlock(inplanes if b == 0 else planes, planes, momentum, dimension)
                               for b in range(blocks)])

    def features(self, x: ME.SparseTensor) -> ME.SparseTensor:
        """Per-voxel features before ``final`` (``feature_dim`` channels): what a pretraining head reads."""
        out_p1 = self.relu(self.bn0(self.conv0p1s1(x)))
        encoded = [out_p1]
        out = out_p1
        for i in range(1, 5):
            out = self.relu(getattr(self, f"bn{i}")(getattr(self, f"conv{i}p{2 ** (i - 1)}s2")(out)))
            out = getattr(self, f"block{i}")(out)
            encoded.append(out)
        for i, up in enumerate(("convtr4p16s2", "convtr5p8s2", "convtr6p4s2", "convtr7p2s2")):
            out = self.relu(getattr(self, f"bntr{4 + i}")(getattr(self, up)(out)))
            out = ME.cat(out, encoded[3 - i])
            out = getattr(self, f"block{5 + i}")(out)
        return out

    def forward(self, x: ME.SparseTensor) -> ME.SparseTensor:
        out = self.features(x)
        return out if self.final is None else self.final(out)


class SRUNet(nn.Module):
    """A :class:`Res16UNet` on plain tensors: ``coords`` (M, 4) int32 ``[batch, x, y, z]`` voxel indices (as
    ``selfsup_pcd.data.voxelize.collate_voxels`` makes them) and ``feats`` (M, C) -> (M, out_channels), rows in
    the input order. Keeps Lightning modules and data free of MinkowskiEngine types.

    ``out_channels=None`` (pretraining) leaves out the final 1×1×1 layer: the output is the decoder features,
    and ``point_dim``/``out_dim`` (what pretraining heads read, as on the point backbones) are their width."""

    def __init__(self, in_channels: int = 3, out_channels: int | None = 20, arch: str = "Res16UNet34C",
                 conv1_kernel_size: int = 3, bn_momentum: float = 0.02) -> None:
        super().__init__()
        self.net = Res16UNet(in_channels, out_channels, arch, conv1_kernel_size, bn_momentum)

    @property
    def feature_dim(self) -> int:
        return self.net.feature_dim

    point_dim = out_dim = feature_dim

    @staticmethod
    def _sparse(coords: Tensor, feats: Tensor) -> ME.SparseTensor:
        if coords.ndim != 2 or coords.shape[1] != 4:
            raise ValueError(f"coords must be (M, 4) [batch, x, y, z], got {tuple(coords.shape)}")
        if len(coords) != len(feats):
            raise ValueError(f"coords and feats differ in length: {len(coords)} vs {len(feats)}")
        return ME.SparseTensor(feats, coordinates=coords.int(), device=feats.device)

    def forward(self, coords: Tensor, feats: Tensor) -> Tensor:
        x = self._sparse(coords, feats)
        # the engine may store rows in its own order: inverse_mapping gives each input row back
        return self.net(x).F[x.inverse_mapping]

    def features(self, coords: Tensor, feats: Tensor) -> Tensor:
        """(M, feature_dim) decoder features, before the final 1×1×1 convolution."""
        x = self._sparse(coords, feats)
        return self.net.features(x).F[x.inverse_mapping]


def add_classifier(backbone: SRUNet, num_classes: int) -> SRUNet:
    """``backbone`` (built with ``out_channels=None``) given its final 1×1×1 convolution to ``num_classes``, in
    place; returns it. The segmentation task calls ``network(backbone=, num_classes=)`` with the datamodule's
    class count, so ``conf/model/srunet.yaml`` gets its classes as the point networks do. The result is the
    same module as ``SRUNet(..., out_channels=num_classes)`` (same parameter names)."""
    if not isinstance(backbone, SRUNet):
        raise TypeError(f"add_classifier needs an SRUNet, got {type(backbone).__name__}")
    if backbone.net.final is not None:
        raise ValueError(f"this SR-UNet already has a final layer ({backbone.net.out_channels} classes); build it "
                         "with out_channels=None")
    backbone.net.final = ME.MinkowskiConvolution(backbone.feature_dim, num_classes, kernel_size=1, bias=True,
                                                 dimension=3)
    backbone.net.out_channels = num_classes
    return backbone


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


