"""Prompting a frozen timm Vision Transformer: the shared parts of L2P, DualPrompt and CODA-Prompt.

Everything here is assembled from timm's own ViT modules (``patch_embed``, ``_pos_embed``, ``blocks``, each block's
``attn.qkv`` / ``attn.proj``, ``norm``); there is no copy of the ViT. Two ways to condition it:

- *prompt tuning* (L2P): extra tokens inserted into the sequence before block 0 (:func:`vit_tokens`,
  :func:`run_blocks`);
- *prefix tuning* (DualPrompt, CODA-Prompt): extra keys and values prepended to a block's attention
  (:func:`prefix_attention`, :func:`block_forward`). With no prefix, a block's output is exactly timm's own.

:class:`PromptModule` is the base of the three strategies: the frozen ViT (by timm name *and tag*), the query (the
[CLS] feature of the frozen ViT without prompts, optionally cached per training sample), the training mask of the
current task's classes in class-IL, and an optimizer re-created at every task.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.nn import functional as F  # noqa: N812
from typing_extensions import override

from clfw.backbones import create_timm_model
from clfw.data import Batch
from clfw.module import ContinualModule

Prefix = tuple[Tensor, Tensor]  # (keys, values), each [B, L, embed_dim]


def create_vit(name: str, pretrained: bool = False, checkpoint_path: str | None = None, **kwargs: Any) -> nn.Module:
    """A timm Vision Transformer without classifier (``num_classes=0``), loaded as
    :func:`~clfw.backbones.create_timm_model` does (a pretrained tag required with ``pretrained``, or a local
    ``checkpoint_path``; ``kwargs`` to ``timm.create_model``).

    Raises:
        ValueError: no pretrained tag, or the model is not a timm VisionTransformer.
    """
    vit = create_timm_model(name, pretrained, checkpoint_path, **kwargs)
    if not all(hasattr(vit, a) for a in ("patch_embed", "_pos_embed", "blocks", "norm", "num_prefix_tokens")):
        raise ValueError(f"{name!r} is not a timm VisionTransformer (needs patch_embed, _pos_embed, blocks, norm)")
    return vit


def vit_tokens(vit: nn.Module, x: Tensor) -> Tensor:
    """The token sequence entering block 0: patch embedding, [CLS] and position embedding, as timm computes it."""
    x = vit.patch_embed(x)
    x = vit._pos_embed(x)
    x = vit.patch_drop(x)
    return vit.norm_pre(x)


def prefix_attention(
    attn: nn.Module, x: Tensor, prefix: Prefix | None = None, qkv_fn: Callable[[Tensor], Tensor] | None = None
) -> Tensor:
    """timm ``Attention.forward`` with ``prefix`` keys and values prepended to the sequence's (prefix tuning).

    The prefixes enter after the ``qkv`` projection (and after ``k_norm``), split into heads like the keys and values;
    queries are the sequence's own, so the output has the sequence's length. ``qkv_fn`` replaces ``attn.qkv`` (a
    low-rank-adapted projection: InfLoRA). ``prefix=None`` and ``qkv_fn=None`` is timm's forward.
    """
    b, n, _ = x.shape
    gate = attn.gate(x).sigmoid() if getattr(attn, "gate", None) is not None else None
    qkv = (qkv_fn or attn.qkv)(x).reshape(b, n, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    if prefix is not None:
        pk, pv = (p.reshape(b, p.shape[1], attn.num_heads, attn.head_dim).transpose(1, 2) for p in prefix)
        k, v = torch.cat([pk, k], dim=2), torch.cat([pv, v], dim=2)
    if attn.fused_attn:
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=attn.attn_drop.p if attn.training else 0.0)
    else:
        weights = ((q * attn.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
        x = attn.attn_drop(weights) @ v
    x = attn.norm(x.transpose(1, 2).reshape(b, n, -1))
    if gate is not None:
        x = x * gate
    return attn.proj_drop(attn.proj(x))


def block_forward(
    block: nn.Module, x: Tensor, prefix: Prefix | None = None, qkv_fn: Callable[[Tensor], Tensor] | None = None
) -> Tensor:
    """timm ``Block.forward`` whose attention gets ``prefix`` keys and values (and ``qkv_fn`` for its ``qkv``)."""
    x = x + block.drop_path1(block.ls1(prefix_attention(block.attn, block.norm1(x), prefix, qkv_fn)))
    return x + block.drop_path2(block.ls2(block.mlp(block.norm2(x))))


def run_blocks(vit: nn.Module, x: Tensor, prefixes: dict[int, Prefix] | None = None) -> Tensor:
    """All blocks (block ``i`` with ``prefixes[i]`` when given), then the final norm: ``[B, N, D]``."""
    prefixes = prefixes or {}
    for i, block in enumerate(vit.blocks):
        x = block_forward(block, x, prefixes.get(i)) if i in prefixes else block(x)
    return vit.norm(x)


def cosine(a: Tensor, b: Tensor) -> Tensor:
    """Cosine similarities ``[A, B]`` between the rows of ``a`` ``[A, D]`` and of ``b`` ``[B, D]``."""
    return F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T


class PromptModule(ContinualModule):
    """Base of the prompt strategies: a frozen pretrained ViT (``backbone``), learnable prompt parameters, a head.

    - The ViT is built from its timm name and tag (:func:`create_vit`) and frozen; only the strategy's prompt
      parameters and the head train (:meth:`trainable_parameters`), and the optimizer is re-created at each task.
    - :meth:`query` is the [CLS] output (after the final norm) of the frozen ViT without prompts. With
      ``cache_queries`` the queries of training samples are kept per ``(task, index)``: valid only when the training
      transform is deterministic (no augmentation), since the query network never changes.
    - In class-IL, training logits outside the current task's classes are masked, as the three papers do; evaluation
      uses the usual masks (all seen classes).

    Args:
        vit: timm model name with its pretrained tag (e.g. ``vit_base_patch16_224.orig_in21k``), or a ViT module.
        pretrained: Download the named weights (needs internet; use ``checkpoint_path`` offline).
        checkpoint_path: Local file of the ViT's weights (``timm.create_model(checkpoint_path=...)``).
        vit_kwargs: Extra arguments of ``timm.create_model`` (``img_size``, ``depth`` ... for small models).
        cache_queries: Cache the frozen ViT's query per training sample (only without augmentation).
        reset_optimizer_per_task: Re-create the optimizer (and schedule) at every task start, as the prompt papers do
            (declared here, not set from ``kwargs``, so that a config's default is this one and not
            :class:`~clfw.ContinualModule`'s ``False``).
        **kwargs: Arguments of :class:`~clfw.ContinualModule` (num_classes, optimizer, lr_scheduler, plugins).
    """

    supported_scenarios: ClassVar[tuple[str, ...]] = ("class", "task")

    def __init__(
        self,
        vit: str | nn.Module = "vit_base_patch16_224.orig_in21k",
        pretrained: bool = True,
        checkpoint_path: str | None = None,
        vit_kwargs: dict[str, Any] | None = None,
        cache_queries: bool = False,
        reset_optimizer_per_task: bool = True,
        **kwargs: Any,
    ) -> None:
        if kwargs.get("backbone") is not None:
            raise ValueError("prompt strategies build their backbone from `vit`; do not pass `backbone`")
        backbone = (
            vit if isinstance(vit, nn.Module) else create_vit(vit, pretrained, checkpoint_path, **(vit_kwargs or {}))
        )
        super().__init__(
            backbone=backbone.requires_grad_(False), reset_optimizer_per_task=reset_optimizer_per_task, **kwargs
        )
        self.embed_dim: int = backbone.num_features
        self.cache_queries = cache_queries
        self._queries: dict[tuple[int, int], Tensor] = {}
        self._fixed: tuple[int, list[Tensor]] | None = None  # (task, fixed_parts' values when it started)

    @override
    def attach_stream(self, dm: Any) -> None:
        super().attach_stream(dm)
        if not self.stream.boundaries_visible:
            raise ValueError(f"{type(self).__name__} needs visible task boundaries (task_boundaries_visible=True)")

    @override
    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.named_parameters() if p.requires_grad and not n.startswith("backbone.")]

    def fixed_parts(self) -> list[tuple[nn.Parameter, tuple[slice, ...]]]:
        """``(parameter, index)`` of the parts the current task must not move (the earlier tasks' components of
        CODA-Prompt, the other tasks' ``B`` of InfLoRA): remembered when a task's training starts (or resumes) and
        written back after every optimizer step, undoing what weight decay and momentum did to them, so that every
        evaluation, task end and checkpoint of that step sees them unchanged. None by default."""
        return []

    @override
    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        if self._fixed is None or self._fixed[0] != self.current_task:  # a new task, or resumed mid-task
            self._fixed = (self.current_task, [p[index].detach().clone() for p, index in self.fixed_parts()])

    @override
    def after_optimizer_step(self) -> None:
        if self._fixed is None:
            return
        with torch.no_grad():
            for (p, index), kept in zip(self.fixed_parts(), self._fixed[1], strict=True):
                p[index] = kept

    @torch.no_grad()
    def query(self, x: Tensor, batch: Batch | None = None) -> Tensor:
        """[CLS] features ``[B, D]`` of the frozen ViT without prompts (cached per training sample if enabled)."""
        if batch is None or not self.cache_queries:
            return self.backbone.forward_features(x)[:, 0]
        keys = list(zip(batch.task.tolist(), batch.index.tolist(), strict=True))
        missing = [i for i, k in enumerate(keys) if k not in self._queries]
        if missing:
            fresh = self.backbone.forward_features(x[missing])[:, 0]
            for i, q in zip(missing, fresh, strict=True):
                self._queries[keys[i]] = q
        return torch.stack([self._queries[k] for k in keys])

    def prompted_features(self, x: Tensor, batch: Batch | None = None) -> tuple[Tensor, Tensor]:
        """The head's input ``[B, D]`` and the strategy's auxiliary loss (0 if none); ``batch`` during training."""
        raise NotImplementedError

    @override
    def features(self, x: Tensor) -> Tensor:
        return self.prompted_features(x)[0]

    @override
    def training_loss(self, batch: Batch) -> dict[str, Tensor]:
        features, aux = self.prompted_features(batch.x, batch)
        logits = self.head(features)
        task_classes = self.task_masks[self.current_task].expand(len(batch.y), -1)
        mask = task_classes if self.stream.scenario == "class" else self.class_mask(batch.task)
        loss = F.cross_entropy(logits.masked_fill(~mask, float("-inf")), batch.y)
        return {"loss": loss + aux, "logits": logits, "prompt_aux": aux.detach()}
