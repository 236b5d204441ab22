"""Backbones that ship with clfw, with timm's feature interface.

Each maps inputs to a feature vector: ``forward_features`` gives the unpooled features, ``forward_head(x,
pre_logits=True)`` pools them, ``forward`` does both, and ``num_features`` is the feature size, as for a timm model
created with ``num_classes=0``. ``forward_intermediates(x)`` returns, as timm's does, the unpooled features and the
list of each stage's output (feature maps ``[B, C, H, W]`` of the convolutional stages, ``[B, width]`` of an MLP's
hidden layers); :func:`intermediates` reads them from any backbone that has the method (clfw's and timm's). Any such
timm model can be passed as a backbone instead; the classifier head belongs to :class:`~clfw.ContinualModule`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

from torch import Tensor, nn
from torch.nn import functional as F  # noqa: N812


class _Backbone(nn.Module):
    num_features: int

    def forward_features(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def forward_head(self, x: Tensor, pre_logits: bool = True) -> Tensor:
        """Pools the unpooled features to ``[B, num_features]`` (there is no classifier here to skip)."""
        return x.flatten(1) if x.dim() == 2 else F.adaptive_avg_pool2d(x, 1).flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x), pre_logits=True)

    def stages(self) -> list[Callable[[Tensor], Tensor]]:
        """The functions whose outputs are the intermediates, applied in order, ending with the unpooled features."""
        raise NotImplementedError

    def forward_intermediates(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """``(unpooled features, [output of each stage])``, timm's convention (``intermediates_only=False``)."""
        outputs = []
        for stage in self.stages():
            x = stage(x)
            outputs.append(x)
        return x, outputs


def create_timm_model(
    name: str, pretrained: bool = False, checkpoint_path: str | None = None, **kwargs: Any
) -> nn.Module:
    """A timm model without classifier (``num_classes=0``), from its name and weights.

    ``name`` must carry a pretrained tag (``vit_base_patch16_224.augreg_in21k``) when weights are downloaded: timm's
    bare names resolve to a default tag that changes between timm versions, and the pretrained-model methods' results
    depend on the weights. ``pretrained=True`` downloads them (on a machine with internet); ``checkpoint_path`` loads a
    local file instead (offline; the file names the weights, so the bare architecture name is enough). ``kwargs`` go
    to ``timm.create_model`` (``img_size``, ``depth`` ... for small models).

    Raises:
        ValueError: ``pretrained`` with a name without tag, or a ``checkpoint_path`` that is not a file.
    """
    if pretrained and "." not in name:
        raise ValueError(
            f"{name!r} has no pretrained tag: name the weights, e.g. 'vit_base_patch16_224.orig_in21k' (L2P, "
            "DualPrompt), 'vit_base_patch16_224.augreg_in21k_ft_in1k' (CODA-Prompt)"
        )
    if checkpoint_path and not os.path.isfile(checkpoint_path):
        raise ValueError(f"checkpoint_path={checkpoint_path!r} is not a file (expected the model's weights, saved)")
    import timm  # only here: importing it costs a second

    checkpoint = checkpoint_path or ""
    return timm.create_model(name, pretrained=pretrained, num_classes=0, checkpoint_path=checkpoint, **kwargs)


class TimmBackbone(nn.Module):
    """A timm model (without classifier) as a config's ``backbone``, for the pretrained-model methods::

        backbone:
          class_path: clfw.backbones.TimmBackbone
          init_args: {name: vit_base_patch16_224.augreg_in21k, pretrained: true}

    The model is :attr:`model`; the feature interface (``forward_features``, ``forward_head``,
    ``forward_intermediates``, ``num_features``) is its own. Weights as :func:`create_timm_model` loads them.

    Args:
        name: timm model name, with its pretrained tag when ``pretrained``.
        pretrained: Download the named weights (needs internet; use ``checkpoint_path`` offline).
        checkpoint_path: Local file of the model's weights (``timm.create_model(checkpoint_path=...)``).
        model_kwargs: Extra arguments of ``timm.create_model`` (``img_size``, ``depth`` ... for small models).
    """

    def __init__(
        self,
        name: str,
        pretrained: bool = False,
        checkpoint_path: str | None = None,
        model_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.model = create_timm_model(name, pretrained, checkpoint_path, **(model_kwargs or {}))
        self.num_features: int = self.model.num_features

    def forward_features(self, x: Tensor) -> Tensor:
        return self.model.forward_features(x)

    def forward_head(self, x: Tensor, pre_logits: bool = True) -> Tensor:
        return self.model.forward_head(x, pre_logits=pre_logits)

    def forward_intermediates(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        return self.model.forward_intermediates(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


def intermediates(backbone: nn.Module, x: Tensor) -> tuple[Tensor, list[Tensor]]:
    """``(pooled features [B, num_features], [each stage's output])`` of a backbone with ``forward_intermediates``.

    Raises:
        ValueError: the backbone has no ``forward_intermediates`` (timm models and :mod:`clfw.backbones` have it).
    """
    method = getattr(backbone, "forward_intermediates", None)
    if method is None:
        raise ValueError(
            f"backbone {type(backbone).__name__} has no forward_intermediates (timm's models and clfw.backbones have "
            "it): this strategy needs its intermediate feature maps"
        )
    final, maps = method(x)
    return backbone.forward_head(final, pre_logits=True), list(maps)


class MLP(_Backbone):
    """Fully connected ReLU network on flattened inputs (the 2x400 MLP of the Split/Permuted MNIST literature).

    Args:
        in_features: Size of the flattened input (784 for 28x28 MNIST).
        hidden: Widths of the hidden layers.
        dropout: Dropout probability after each hidden layer.
    """

    def __init__(self, in_features: int = 784, hidden: Sequence[int] = (400, 400), dropout: float = 0.0) -> None:
        super().__init__()
        if in_features <= 0 or not hidden or any(h <= 0 for h in hidden):
            raise ValueError(f"in_features and hidden widths must be positive, got {in_features}, {list(hidden)}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.in_features = in_features
        layers: list[nn.Module] = []
        for width in hidden:
            layers += [nn.Linear(in_features, width), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            in_features = width
        self.layers = nn.Sequential(*layers)
        self.num_features = in_features

    def forward_features(self, x: Tensor) -> Tensor:
        return self.layers(self._flat(x))

    def _flat(self, x: Tensor) -> Tensor:
        x = x.flatten(1)
        if x.shape[1] != self.in_features:
            raise ValueError(f"MLP expects {self.in_features} input features per sample, got {x.shape[1]}")
        return x

    def stages(self) -> list[Callable[[Tensor], Tensor]]:
        """One stage per hidden layer (Linear, ReLU and its dropout), after flattening the input."""
        mods, stages, current = list(self.layers), [], []
        for m in mods:
            if isinstance(m, nn.Linear) and current:
                stages.append(nn.Sequential(*current))
                current = []
            current.append(m)
        stages.append(nn.Sequential(*current))
        first = stages[0]
        return [lambda x: first(self._flat(x)), *stages[1:]]


class SmallCNN(_Backbone):
    """Conv(3x3)-BN-ReLU-MaxPool blocks, then global average pooling.

    Args:
        in_channels: Input channels (1 for MNIST, 3 for CIFAR).
        channels: Output channels of each block.
    """

    def __init__(self, in_channels: int = 1, channels: Sequence[int] = (32, 64)) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        for out in channels:
            blocks += [nn.Conv2d(in_channels, out, 3, padding=1), nn.BatchNorm2d(out), nn.ReLU(), nn.MaxPool2d(2)]
            in_channels = out
        self.blocks = nn.Sequential(*blocks)
        self.num_features = in_channels

    def forward_features(self, x: Tensor) -> Tensor:
        return self.blocks(x)

    def stages(self) -> list[Callable[[Tensor], Tensor]]:
        """One stage per block (conv, BN, ReLU, max-pool)."""
        return [self.blocks[i : i + 4] for i in range(0, len(self.blocks), 4)]


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet18(_Backbone):
    """The reduced ResNet-18 of the CL literature: 3x3 stride-1 stem, no max-pool, four stages of two basic blocks.

    With ``nf=64`` it is the network of Mammoth/DER (Buzzega et al. 2020); ``nf=20`` is the slim version of GEM
    (Lopez-Paz & Ranzato 2017) used in the stability-gap paper.

    Args:
        in_channels: Input channels.
        nf: Width of the first stage (stages have nf, 2nf, 4nf, 8nf channels).
    """

    def __init__(self, in_channels: int = 3, nf: int = 64) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, nf, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(nf)
        stages, cin = [], nf
        for i, stride in enumerate((1, 2, 2, 2)):
            cout = nf * 2**i
            stages.append(nn.Sequential(_BasicBlock(cin, cout, stride), _BasicBlock(cout, cout, 1)))
            cin = cout
        self.layers = nn.Sequential(*stages)
        self.num_features = cin

    def forward_features(self, x: Tensor) -> Tensor:
        return self.layers(self._stem(x))

    def _stem(self, x: Tensor) -> Tensor:
        return F.relu(self.bn1(self.conv1(x)))

    def stages(self) -> list[Callable[[Tensor], Tensor]]:
        """The four stages (the stem is applied before the first)."""
        return [lambda x: self.layers[0](self._stem(x)), *self.layers[1:]]
