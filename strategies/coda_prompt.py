"""CODA-Prompt: attention-weighted prompt components, a slice per task, attached by prefix tuning."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F  # noqa: N812
from typing_extensions import override

from clfw import Batch
from clfw.prompt import Prefix, PromptModule, run_blocks, vit_tokens


class CODAPrompt(PromptModule):
    """CODA-Prompt (Smith et al., CVPR 2023, "CODA-Prompt: COntinual Decomposed Attention-based Prompting").

    At each of ``layers``, ``pool_size`` components: prompts ``P_m`` (``prompt_length`` x D), keys ``K_m`` and
    attention vectors ``A_m`` (D). For a query ``q`` (the frozen ViT's [CLS] feature without prompts) the weights are
    ``alpha_m = cos(q * A_m, K_m)`` and the prompt is ``sum_m alpha_m P_m`` (no top-k: trained end to end); its first
    half gives the key prefixes and its second half the value prefixes of the layer's attention. Task ``t`` owns the
    components ``[t M/T, (t+1) M/T)``: while it trains, the earlier components are used detached (and restored after
    each optimizer step, so weight decay cannot move them either) and later ones not at all; at the start of task
    ``t`` its new slice of P, K and A is drawn at random and orthonormalised against the earlier components (Gram-
    Schmidt, done with a QR factorisation, so exactly orthogonal to their span). ``ortho_weight`` adds the paper's
    penalty ``||X X^T - I||^2`` (mean) on the used components of K, A and P. The head classifies the prompted [CLS].

    Args:
        pool_size: Components per layer M (100), split evenly across the stream's tasks.
        prompt_length: Length of each component (8: 4 key and 4 value prefixes).
        layers: Blocks that get prompts (0-4).
        ortho_weight: Weight of the orthogonality penalty (0 disables it, as the official configs do). The official
            code scales its penalty by a further 1e-6, so its ``mu`` corresponds to ``ortho_weight = mu * 1e-6``.
        **kwargs: Arguments of :class:`~clfw.prompt.PromptModule` (vit, pretrained, checkpoint_path, optimizer ...).
    """

    def __init__(
        self,
        pool_size: int = 100,
        prompt_length: int = 8,
        layers: list[int] | None = None,
        ortho_weight: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.layers = list(range(5)) if layers is None else list(layers)
        depth = len(self.backbone.blocks)
        bad = [i for i in self.layers if not 0 <= i < depth]
        if bad or prompt_length < 2 or prompt_length % 2 or ortho_weight < 0 or pool_size < 1:
            raise ValueError(
                f"layers must be in [0, {depth}) (got {bad}), prompt_length even and >= 2, pool_size >= 1, "
                f"ortho_weight >= 0; got {prompt_length=}, {pool_size=}, {ortho_weight=}"
            )
        if pool_size > self.embed_dim:
            raise ValueError(
                f"pool_size={pool_size} exceeds the embedding size {self.embed_dim}: keys can't be orthogonal"
            )
        n, d = len(self.layers), self.embed_dim
        self.ortho_weight = ortho_weight
        self.prompts = nn.Parameter(torch.zeros(n, pool_size, prompt_length, d))
        self.keys = nn.Parameter(torch.zeros(n, pool_size, d))
        self.attention = nn.Parameter(torch.zeros(n, pool_size, d))

    @override
    def attach_stream(self, dm: Any) -> None:
        super().attach_stream(dm)
        if self.keys.shape[1] < self.stream.n_tasks:
            raise ValueError(f"pool_size={self.keys.shape[1]} is less than the stream's {self.stream.n_tasks} tasks")

    def task_slice(self, task: int) -> tuple[int, int]:
        """Components ``[start, end)`` owned by ``task``."""
        per_task = self.keys.shape[1] // self.stream.n_tasks
        return task * per_task, (task + 1) * per_task

    @override
    def on_task_start(self, task: int) -> None:
        start, end = self.task_slice(task)
        generator = torch.Generator().manual_seed(task)
        with torch.no_grad():
            for param in (self.prompts, self.keys, self.attention):
                for layer in range(len(self.layers)):
                    flat = param[layer].flatten(1)  # [M, features]
                    fresh = torch.randn(end - start, flat.shape[1], generator=generator, dtype=torch.float64)
                    flat[start:end] = self._orthonormal(flat[:start].double().cpu(), fresh).to(flat)  # QR on the CPU

    @override
    def fixed_parts(self) -> list[tuple[nn.Parameter, tuple[slice, ...]]]:
        start, _ = self.task_slice(self.current_task)
        return [(p, (slice(None), slice(0, start))) for p in self._params()]

    def _params(self) -> tuple[nn.Parameter, ...]:
        return self.prompts, self.keys, self.attention

    @staticmethod
    def _orthonormal(earlier: Tensor, fresh: Tensor) -> Tensor:
        """Rows of ``fresh`` made orthonormal to each other and to the span of ``earlier``'s rows (Gram-Schmidt)."""
        basis = torch.cat(
            [earlier, fresh]
        ).T  # columns: earlier first, so QR orthogonalises the fresh ones against them
        q, _ = torch.linalg.qr(basis)
        return q[:, len(earlier) :].T

    def prefixes(self, query: Tensor) -> tuple[dict[int, Prefix], Tensor]:
        """Key and value prefixes per layer, and the orthogonality penalty of the used components."""
        start, end = self.task_slice(self.current_task)
        out: dict[int, Prefix] = {}
        penalty = query.new_zeros(())
        for i, layer in enumerate(self.layers):
            p, k, a = (self._visible(param[i], start, end) for param in self._params())
            alpha = torch.einsum("bmd,md->bm", F.normalize(query[:, None, :] * a[None], dim=2), F.normalize(k, dim=1))
            prompt = torch.einsum("bm,mld->bld", alpha, p)
            half = prompt.shape[1] // 2
            out[layer] = (prompt[:, :half], prompt[:, half:])
            if self.ortho_weight and self.training:
                for x in (k, a, p.flatten(1)):
                    gram = x @ x.T
                    penalty = penalty + (gram - torch.eye(len(x), device=x.device)).pow(2).mean()
        return out, self.ortho_weight * penalty

    def _visible(self, param: Tensor, start: int, end: int) -> Tensor:
        """Components ``[0, end)``: the earlier ones detached while training, all of them when evaluating."""
        return torch.cat([param[:start].detach(), param[start:end]]) if self.training else param[:end]

    @override
    def prompted_features(self, x: Tensor, batch: Batch | None = None) -> tuple[Tensor, Tensor]:
        prefixes, penalty = self.prefixes(self.query(x, batch))
        out = run_blocks(self.backbone, vit_tokens(self.backbone, x), prefixes)
        return out[:, 0], penalty
