"""Classifiers for the trainer: a registry of CIFAR-style networks and a 1-D CNN, no
distributed code.

    >>> import torch
    >>> from byzshield.compute.networks import build_network
    >>> net = build_network("resnet18", num_classes=10, in_channels=3, image_size=32)
    >>> net(torch.zeros(2, 3, 32, 32)).shape
    torch.Size([2, 10])

Every image network maps a float batch (B, in_channels, image_size, image_size) to logits
(B, num_classes) and works for image_size 8 (the embedded digits), 28 (MNIST) and 32
(CIFAR, SVHN), with 1 or 3 input channels. ``cnn1d`` maps 1-D signals
(B, in_channels, image_size), image_size being the length (40 for MNIST-1D). The registry
:data:`NETWORKS` says which input each network takes (``spatial_dims``) and whether it has
BatchNorm (``uses_batchnorm``: such a network needs >= 2 samples per file in train mode).

- ``lenet``: the LeNet of the original ByzShield/DETOX code (conv 5x5 x20, maxpool, ReLU,
  conv 5x5 x50, maxpool, ReLU, fc 500, fc classes; no ReLU between the two fully connected
  layers). Images smaller than 16 pixels get "same" padding in both convolutions so two
  5x5 convolutions and two poolings still fit (8 -> 8 -> 4 -> 4 -> 2); the first fully
  connected layer is sized from image_size.
- ``resnet18/34/50``: He et al., "Deep Residual Learning for Image Recognition" (CVPR 2016)
  with the CIFAR stem used by the original code: one 3x3 stride-1 convolution, no
  initial max-pool, stages of 64/128/256/512 planes, global average pooling.
- ``densenet``: DenseNet-121 (Huang et al., "Densely Connected Convolutional Networks",
  CVPR 2017; blocks 6/12/24/16, growth rate 32, compression 0.5) with a 3x3 stem, the
  network the original code builds for "DenseNet".
- ``cnn1d``: the convolutional network of the MNIST-1D benchmark (Greydanus & Kobak,
  "Scaling Down Deep Learning with MNIST-1D", ICML 2024): three stride-2 1-D convolutions
  of 25 channels with ReLU and one linear layer, 5,210 parameters for MNIST-1D.
- ``vgg11/vgg13``: Simonyan & Zisserman configurations A and B with BatchNorm after every
  convolution and a single linear classifier on 512 features (the original's
  vgg11_bn/vgg13_bn). A max-pool is skipped once the feature map is 1x1, so 8x8 and 28x28
  inputs work (28 -> 14 -> 7 -> 3 -> 1); inputs above 32 pixels are average-pooled to 1x1.

No network uses dropout: randomness in the forward pass would make the r replicas of a
file compute different gradients and break the bit-exact majority vote (docs/design.md
section 8). Initialisation draws from torch's global generator, so ``torch.manual_seed``
before :func:`build_network` gives identical parameters in every process.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "NETWORKS",
    "NetworkInfo",
    "use_kernels",
    "build_network",
    "CNN1d",
    "LeNet",
    "ResNet",
    "DenseNet",
    "VGG",
]


class LeNet(nn.Module):
    """LeNet-5 (LeCun et al., 1998) in the layout of the original ByzShield and DETOX code.

    conv5x5(20) -> maxpool 2 -> ReLU -> conv5x5(50) -> maxpool 2 -> ReLU -> fc 500
    -> fc num_classes, as in the original ``src/model_ops/lenet.py`` (identical in both
    repositories): pooling comes before each ReLU, and there is no nonlinearity between
    fc1 and fc2, so the classifier head is one affine map of rank <= 500 written as two.
    For 1-channel 28x28 inputs this is exactly the original (stride 1, no padding, flatten
    4*4*50, 431,080 parameters for 10 classes). Adaptations: ``in_channels`` and
    ``num_classes`` are free (the original fixed 1 and 10); fc1 is sized from
    ``image_size`` (5*5*50 for 32x32); images under 16 pixels use padding 2 in both
    convolutions so that 8x8 digits give a 2x2x50 feature map.
    """

    def __init__(self, *, num_classes: int, in_channels: int, image_size: int) -> None:
        super().__init__()
        padding = 2 if image_size < 16 else 0
        size = image_size
        for _ in range(2):
            size = (size + 2 * padding - 4) // 2
        if size < 1:
            raise ValueError(f"lenet needs image_size >= 8, got {image_size}")
        self.conv1 = nn.Conv2d(in_channels, 20, kernel_size=5, padding=padding)
        self.conv2 = nn.Conv2d(20, 50, kernel_size=5, padding=padding)
        self.fc1 = nn.Linear(50 * size * size, 500)
        self.fc2 = nn.Linear(500, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(F.max_pool2d(self.conv1(x), 2))
        x = F.relu(F.max_pool2d(self.conv2(x), 2))
        return self.fc2(self.fc1(torch.flatten(x, 1)))  # no ReLU after fc1, as the original


class CNN1d(nn.Module):
    """The 1-D convolutional network of MNIST-1D (Greydanus & Kobak, ICML 2024; the model
    their benchmark table calls "CNN", ``ConvBase`` in the authors' ``notebooks/models.py``).

    conv1d(k=5, stride 2, padding 1) -> ReLU -> conv1d(k=3, s 2, p 1) -> ReLU
    -> conv1d(k=3, s 2, p 1) -> ReLU -> flatten -> linear num_classes, every convolution
    with ``channels`` outputs. Each convolution maps a length L to floor((L + 2 - k) / 2) + 1,
    so MNIST-1D's 40 becomes 19, 10, 5 and the linear layer sees 25 * 5 = 125 features:
    150 + 1,900 + 1,900 + 1,260 = 5,210 parameters for 10 classes, the authors' model. As
    there, no BatchNorm and no dropout (so any number of samples per file works and
    replicas compute identical bytes) and PyTorch's default initialisation; the authors'
    model fixed 1 input channel and length 40, here both are free.
    """

    def __init__(
        self, *, num_classes: int, in_channels: int, length: int, channels: int = 25
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(in_channels, channels, 5, stride=2, padding=1)
        self.conv2 = nn.Conv1d(channels, channels, 3, stride=2, padding=1)
        self.conv3 = nn.Conv1d(channels, channels, 3, stride=2, padding=1)
        size = length
        for conv in (self.conv1, self.conv2, self.conv3):
            size = (size + 2 * conv.padding[0] - conv.kernel_size[0]) // conv.stride[0] + 1
        if size < 1:
            raise ValueError(f"cnn1d needs length >= 3, got {length}")
        self.linear = nn.Linear(channels * size, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        x = F.relu(self.conv3(x))
        return self.linear(torch.flatten(x, 1))


class _BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (ResNet-18/34)."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = _shortcut(in_planes, planes * self.expansion, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class _Bottleneck(nn.Module):
    """1x1 reduce, 3x3, 1x1 expand (x4) with a residual connection (ResNet-50)."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.shortcut = _shortcut(in_planes, planes * self.expansion, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x))


def _shortcut(in_planes: int, out_planes: int, stride: int) -> nn.Module:
    """Identity, or a 1x1 projection with BatchNorm when the shape changes (option B)."""
    if stride == 1 and in_planes == out_planes:
        return nn.Identity()
    return nn.Sequential(
        nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False),
        nn.BatchNorm2d(out_planes),
    )


class ResNet(nn.Module):
    """CIFAR-style ResNet: 3x3 stem (no max-pool), four stages, global average pool."""

    def __init__(
        self,
        block: type[_BasicBlock] | type[_Bottleneck],
        num_blocks: Sequence[int],
        *,
        num_classes: int,
        in_channels: int,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        stages = []
        in_planes = 64
        for i, (planes, count) in enumerate(zip((64, 128, 256, 512), num_blocks, strict=True)):
            blocks = []
            for j in range(count):
                stride = 2 if i > 0 and j == 0 else 1
                blocks.append(block(in_planes, planes, stride))
                in_planes = planes * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.linear = nn.Linear(in_planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        # Global average pooling instead of the original avg_pool2d(4): same result at
        # 32x32 (4x4 maps), and it also accepts the 1x1 and 4x4 maps of 8x8 / 28x28 inputs.
        out = F.adaptive_avg_pool2d(out, 1)
        return self.linear(torch.flatten(out, 1))


class _DenseLayer(nn.Module):
    """BN-ReLU-conv1x1(4k)-BN-ReLU-conv3x3(k), output concatenated to the input."""

    def __init__(self, in_planes: int, growth_rate: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, 4 * growth_rate, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(4 * growth_rate)
        self.conv2 = nn.Conv2d(4 * growth_rate, growth_rate, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(F.relu(self.bn1(x)))
        out = self.conv2(F.relu(self.bn2(out)))
        return torch.cat([out, x], 1)


class _Transition(nn.Module):
    """BN-ReLU-conv1x1 compression followed by 2x2 average pooling."""

    def __init__(self, in_planes: int, out_planes: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(in_planes)
        self.conv = nn.Conv2d(in_planes, out_planes, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(self.conv(F.relu(self.bn(x))), 2)


class DenseNet(nn.Module):
    """DenseNet-BC with a 3x3 CIFAR stem of 2k channels and global average pooling."""

    def __init__(
        self,
        num_blocks: Sequence[int],
        *,
        growth_rate: int,
        num_classes: int,
        in_channels: int,
        reduction: float = 0.5,
    ) -> None:
        super().__init__()
        planes = 2 * growth_rate
        self.conv1 = nn.Conv2d(in_channels, planes, 3, padding=1, bias=False)
        stages: list[nn.Module] = []
        for i, count in enumerate(num_blocks):
            layers = []
            for _ in range(count):
                layers.append(_DenseLayer(planes, growth_rate))
                planes += growth_rate
            stages.append(nn.Sequential(*layers))
            if i < len(num_blocks) - 1:
                out_planes = int(math.floor(planes * reduction))
                stages.append(_Transition(planes, out_planes))
                planes = out_planes
        self.features = nn.Sequential(*stages)
        self.bn = nn.BatchNorm2d(planes)
        self.linear = nn.Linear(planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn(self.features(self.conv1(x))))
        out = F.adaptive_avg_pool2d(out, 1)
        return self.linear(torch.flatten(out, 1))


_VGG_CONFIGS: dict[str, list[int | str]] = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
}


class VGG(nn.Module):
    """VGG with BatchNorm (3x3 convs, ReLU, 2x2 max-pools) and one linear classifier.

    Initialisation as in the original code (torchvision's VGG): convolutions
    N(0, 2 / (9 * out_channels)), BatchNorm weight 1 / bias 0, linear N(0, 0.01), biases 0.
    """

    def __init__(
        self, config: Sequence[int | str], *, num_classes: int, in_channels: int, image_size: int
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels, size = in_channels, image_size
        for item in config:
            if item == "M":
                if size >= 2:  # a 1x1 map has nothing left to pool
                    layers.append(nn.MaxPool2d(2, stride=2))
                    size //= 2
                continue
            layers += [
                nn.Conv2d(channels, int(item), 3, padding=1),
                nn.BatchNorm2d(int(item)),
                nn.ReLU(inplace=True),
            ]
            channels = int(item)
        # 1x1 for image_size <= 32 (so this is then a no-op); larger images are averaged.
        layers.append(nn.AdaptiveAvgPool2d(1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(channels, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


def _lenet(*, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    return LeNet(num_classes=num_classes, in_channels=in_channels, image_size=image_size)


def _cnn1d(*, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    return CNN1d(num_classes=num_classes, in_channels=in_channels, length=image_size)


def _resnet18(*, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    return ResNet(_BasicBlock, (2, 2, 2, 2), num_classes=num_classes, in_channels=in_channels)


def _resnet34(*, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    return ResNet(_BasicBlock, (3, 4, 6, 3), num_classes=num_classes, in_channels=in_channels)


def _resnet50(*, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    return ResNet(_Bottleneck, (3, 4, 6, 3), num_classes=num_classes, in_channels=in_channels)


def _densenet(*, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    return DenseNet(
        (6, 12, 24, 16), growth_rate=32, num_classes=num_classes, in_channels=in_channels
    )


def _vgg11(*, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    return VGG(
        _VGG_CONFIGS["vgg11"],
        num_classes=num_classes,
        in_channels=in_channels,
        image_size=image_size,
    )


def _vgg13(*, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    return VGG(
        _VGG_CONFIGS["vgg13"],
        num_classes=num_classes,
        in_channels=in_channels,
        image_size=image_size,
    )


NetworkBuilder = Callable[..., nn.Module]
"""``builder(*, num_classes, in_channels, image_size) -> nn.Module``."""


@dataclass(frozen=True)
class NetworkInfo:
    """A registered network: its builder and what it needs from the data.

    ``spatial_dims`` is 2 for (B, C, H, H) images and 1 for (B, C, L) signals (as
    ``byzshield.compute.datasets.DatasetInfo.spatial_dims``); ``uses_batchnorm`` says whether
    train-mode forward passes need >= 2 samples per file. ``onednn`` says whether its convolutions
    should use oneDNN (mkldnn): for the 1-D CNN's tiny convolutions torch's own kernels are
    1.5x faster (measured: 25 files of 12 MNIST-1D signals, 25 ms against 37 ms), for
    the large image networks oneDNN is faster. Every process of a run sets the same
    (:func:`use_kernels`), so replicas stay bit-identical. ``batched_files`` says whether a
    worker computes all its files in one batched pass (:mod:`byzshield.compute.batched`), which
    gives a file the same bits whatever files share the pass (``tests/test_batched.py``)
    and is faster: cnn1d (3.6x, 5 files of 12 samples) and LeNet (1.4x); not the
    BatchNorm networks, whose torch.func vmap is slower than per-file passes (ResNet-18:
    0.78x). Calling it calls the builder.
    """

    name: str
    build: NetworkBuilder
    spatial_dims: int
    uses_batchnorm: bool
    onednn: bool = True
    batched_files: bool = False

    def __call__(self, *, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
        return self.build(num_classes=num_classes, in_channels=in_channels, image_size=image_size)


NETWORKS: dict[str, NetworkInfo] = {
    info.name: info
    for info in (
        NetworkInfo("lenet", _lenet, spatial_dims=2, uses_batchnorm=False, batched_files=True),
        NetworkInfo("resnet18", _resnet18, spatial_dims=2, uses_batchnorm=True),
        NetworkInfo("resnet34", _resnet34, spatial_dims=2, uses_batchnorm=True),
        NetworkInfo("resnet50", _resnet50, spatial_dims=2, uses_batchnorm=True),
        NetworkInfo("densenet", _densenet, spatial_dims=2, uses_batchnorm=True),
        NetworkInfo("vgg11", _vgg11, spatial_dims=2, uses_batchnorm=True),
        NetworkInfo("vgg13", _vgg13, spatial_dims=2, uses_batchnorm=True),
        NetworkInfo(
            "cnn1d", _cnn1d, spatial_dims=1, uses_batchnorm=False, onednn=False, batched_files=True
        ),
    )
}
"""Network name -> :class:`NetworkInfo`; the names are the config's ``network`` options."""

_INPUTS = {2: "(B, C, H, H) images", 1: "(B, C, L) signals"}

_MIN_IMAGE_SIZE = 8  # the embedded digits; every network is checked down to this size


def build_network(
    name: str,
    *,
    num_classes: int,
    in_channels: int,
    image_size: int,
    spatial_dims: int | None = None,
) -> nn.Module:
    """Build network ``name`` for (B, in_channels, image_size, image_size) -> (B, num_classes),
    or (B, in_channels, image_size) -> (B, num_classes) for a 1-D network.

    Pass the dataset's ``spatial_dims`` to have a network that cannot take its samples
    refused here rather than at the first forward pass (None: not checked). Raises
    ValueError for an unknown name (listing :data:`NETWORKS`), a network that does not
    take ``spatial_dims``-dimensional samples (listing those that do) or bad sizes.
    Parameters are drawn from torch's global generator: seed it once beforehand
    (``torch.manual_seed(seed)``) for identical models in every process.
    """
    if name not in NETWORKS:
        raise ValueError(f"unknown network {name!r}; choose one of: {', '.join(NETWORKS)}")
    info = NETWORKS[name]
    if spatial_dims is not None and spatial_dims != info.spatial_dims:
        if spatial_dims not in _INPUTS:
            raise ValueError(f"spatial_dims must be 1 or 2, got {spatial_dims}")
        fitting = ", ".join(n for n, i in NETWORKS.items() if i.spatial_dims == spatial_dims)
        raise ValueError(
            f"network {name!r} takes {_INPUTS[info.spatial_dims]}, not "
            f"{_INPUTS[spatial_dims]}; choose one of: {fitting}"
        )
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    if in_channels < 1:
        raise ValueError(f"in_channels must be >= 1, got {in_channels}")
    if image_size < _MIN_IMAGE_SIZE:
        raise ValueError(f"image_size must be >= {_MIN_IMAGE_SIZE}, got {image_size}")
    return info.build(num_classes=num_classes, in_channels=in_channels, image_size=image_size)


def use_kernels(name: str) -> None:
    """Set this process's torch for training network ``name``: one intra-op thread (the
    replicas of a file are bit-identical only with equal thread counts) and the
    convolution kernels its :class:`NetworkInfo` asks for. Call it once per process,
    before any thread computes a gradient (the oneDNN switch is process-wide)."""
    torch.set_num_threads(1)
    torch.backends.mkldnn.enabled = NETWORKS[name].onednn
