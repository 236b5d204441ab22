"""AdaptFormer adapters for a frozen timm Vision Transformer: the shared part of adapter-based methods (EASE; APER's
adapter variant could use it too).

An adapter is a bottleneck ``scale * up(dropout(relu(down(x))))`` added *in parallel* to a block's MLP (Chen et al.,
NeurIPS 2022, "AdaptFormer: Adapting Vision Transformers for Scalable Visual Recognition"): its input is the block's
stream after the attention residual, its output is added beside the MLP branch. The block is run from timm's own
modules (``norm1``, ``attn``, ``ls1``, ``drop_path1``, ``norm2``, ``mlp``, ``ls2``, ``drop_path2``; the tokens from
:func:`clfw.prompt.vit_tokens`), so there is no copy of the ViT. The up-projection starts at zero (the reference's
"lora" initialisation), so a fresh adapter leaves the ViT's output exactly unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor, nn


class Adapter(nn.Module):
    """AdaptFormer bottleneck ``scale * up(dropout(relu(down(x))))`` (no layer norm, fixed scale: the configuration
    of EASE and APER's reference code). ``down`` keeps ``nn.Linear``'s weight initialisation (Kaiming-uniform) with a
    zero bias; ``up`` is all zeros, so the adapter's output starts at exactly zero.

    Args:
        dim: The ViT's embedding size.
        bottleneck: Width of the bottleneck (the references' ``ffn_num``, 64).
        scale: Fixed factor of the output (the references' ``ffn_adapter_scalar``, 0.1).
        dropout: Dropout on the bottleneck's activations, in training (0.1).
    """

    def __init__(self, dim: int, bottleneck: int = 64, scale: float = 0.1, dropout: float = 0.1) -> None:
        super().__init__()
        if dim < 1 or bottleneck < 1:
            raise ValueError(f"dim and bottleneck must be >= 1, got dim={dim}, bottleneck={bottleneck}")
        if not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"adapter scale must be a finite number > 0, got {scale}")
        if not 0 <= dropout < 1:
            raise ValueError(f"adapter dropout must be in [0, 1), got {dropout}")
        self.scale = scale
        self.down = nn.Linear(dim, bottleneck)
        self.act = nn.ReLU()
        self.dropout = nn.Dropout(dropout)
        self.up = nn.Linear(bottleneck, dim)
        for zero in (self.down.bias, self.up.weight, self.up.bias):
            nn.init.zeros_(zero)

    def forward(self, x: Tensor) -> Tensor:
        return self.up(self.dropout(self.act(self.down(x)))) * self.scale


def vit_adapters(vit: nn.Module, bottleneck: int = 64, scale: float = 0.1, dropout: float = 0.1) -> nn.ModuleList:
    """One fresh :class:`Adapter` per block of the timm ViT ``vit``."""
    return nn.ModuleList(Adapter(vit.num_features, bottleneck, scale, dropout) for _ in vit.blocks)


def adapted_block_forward(block: nn.Module, x: Tensor, adapter: nn.Module | None = None) -> Tensor:
    """timm ``Block.forward`` with ``adapter`` parallel to the MLP: ``x + mlp_branch(x) + adapter(x)``, ``x`` being
    the stream after the attention residual. ``adapter=None`` (or a zero adapter) gives timm's output exactly."""
    x = x + block.drop_path1(block.ls1(block.attn(block.norm1(x))))
    mlp = block.drop_path2(block.ls2(block.mlp(block.norm2(x))))
    return x + mlp if adapter is None else x + mlp + adapter(x)


def run_adapted_blocks(vit: nn.Module, x: Tensor, adapters: Sequence[nn.Module | None] | None = None) -> Tensor:
    """All blocks of ``vit`` on the tokens ``x`` (block ``i`` beside ``adapters[i]``), then the final norm:
    ``[B, N, D]``. Without adapters it is timm's ``blocks`` and ``norm``."""
    if adapters is not None and len(adapters) != len(vit.blocks):
        raise ValueError(f"{len(adapters)} adapters for a ViT of {len(vit.blocks)} blocks")
    for i, block in enumerate(vit.blocks):
        x = adapted_block_forward(block, x, None if adapters is None else adapters[i])
    return vit.norm(x)
