"""InfLoRA: a low-rank branch per task on the keys and values of a frozen ViT, designed to leave earlier tasks alone."""

from __future__ import annotations

import math
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn
from typing_extensions import override

from clfw import Batch
from clfw.distributed import sum_across_ranks
from clfw.evaluation import eval_mode
from clfw.prompt import PromptModule, block_forward, vit_tokens

A_SCALE = 1 / math.sqrt(3)  # the reference code's scale of the designed A_t (its rows have norm 1/sqrt(3))


def design_lora_a(representation: Tensor, basis: Tensor, retain: bool, rank: int) -> Tensor:
    """InfLoRA's ``A_t`` (unscaled, ``[rank, D]``): the top-``rank`` left singular vectors of the layer's representation
    matrix ``H`` (``[D, D]``) projected out of the earlier tasks' subspace, ``(I - M M^T) H`` with ``M`` the DualGPM
    ``basis`` (``[D, k]``, orthonormal columns; ``k = 0`` before any task), or ``M M^T H`` when the basis stores the
    complement (``retain``). The rows are orthonormal and orthogonal to the earlier subspace."""
    if basis.shape[1]:
        inside = basis @ (basis.T @ representation)
        representation = inside if retain else representation - inside
    return torch.linalg.svd(representation, full_matrices=False)[0][:, :rank].T


def dualgpm_update(basis: Tensor, retain: bool, representation: Tensor, threshold: float) -> tuple[Tensor, bool]:
    """The DualGPM basis after a task (Liang & Li's reference code, ``update_DualGPM``): returns ``(basis, retain)``.

    ``basis`` ``[D, k]`` spans the earlier tasks' subspace, or its complement when ``retain``. With ``S`` the singular
    values of the task's representation matrix ``H`` and the energies ``S^2 / ||H||_F^2``:

    - first task (``k = 0``): the ``r`` leading singular vectors of ``H`` whose cumulative energy is below ``threshold``
      (at least one);
    - subspace kept: the energy of ``H`` inside it, then the leading singular vectors of ``(I - M M^T) H`` one by one,
      adding their energies, until ``threshold`` is reached; they join the basis;
    - complement kept: the energy of ``M M^T H`` is removed direction by direction (its leading singular vectors) while
      it is at least ``1 - threshold``; those directions leave the complement.

    When the subspace exceeds ``D / 2`` dimensions its complement is kept instead (from then on).

    >>> e = torch.eye(4, dtype=torch.float64)
    >>> basis, retain = dualgpm_update(e[:, :0], False, torch.diag(torch.tensor([0.8, 0.4, 0.4, 0.2]).sqrt()), 0.9)
    >>> basis.shape[1], retain  # cumulative energies 0.44, 0.67, 0.89 < 0.9: 3 > D / 2 kept, stored as the complement
    (1, True)
    """
    d, k = basis.shape
    total = torch.linalg.matrix_norm(representation) ** 2  # the sum of the squared singular values
    if k == 0 and not retain:
        u, s, _ = torch.linalg.svd(representation, full_matrices=False)
        basis = u[:, : max(int((torch.cumsum(s**2 / total, 0) < threshold).sum()), 1)]
    elif not retain:
        u, s, _ = torch.linalg.svd(representation - basis @ (basis.T @ representation), full_matrices=False)
        energy, r = 1 - float((s**2).sum() / total), 0
        for ratio in (s**2 / total).tolist():
            if energy >= threshold:
                break
            energy, r = energy + ratio, r + 1
        basis = torch.cat([basis, u[:, :r]], 1)[:, :d]
    else:
        u, s, _ = torch.linalg.svd(basis @ (basis.T @ representation), full_matrices=False)
        energy, r = float((s**2).sum() / total), 0
        for ratio in (s[:k] ** 2 / total).tolist():
            if energy < 1 - threshold:
                break
            energy, r = energy - ratio, r + 1
        if r:
            rest = basis - u[:, :r] @ (u[:, :r].T @ basis)
            basis = torch.linalg.svd(rest)[0][:, : k - r]
    if not retain and basis.shape[1] > d / 2:
        basis, retain = torch.linalg.svd(basis)[0][:, basis.shape[1] :], True
    return basis, retain


def lora_qkv(attn: nn.Module, x: Tensor, a: Tensor, b_k: Tensor, b_v: Tensor) -> Tensor:
    """``attn.qkv(x)`` with ``B_k A x`` added to the keys and ``B_v A x`` to the values: the projection with weights
    ``W_k + B_k A`` and ``W_v + B_v A`` (``a`` ``[R, D]``, ``b_k``/``b_v`` ``[D, R]``, computed through the rank R)."""
    q, k, v = attn.qkv(x).chunk(3, dim=-1)
    h = x @ a.T
    return torch.cat([q, k + h @ b_k.T, v + h @ b_v.T], dim=-1)


class InfLoRA(PromptModule):
    """InfLoRA (Liang & Li, CVPR 2024, "InfLoRA: Interference-Free Low-Rank Adaptation for Continual Learning"), the
    reference code's default variant (``methods/inflora.py``; not InfLoRA-b5 nor InfLoRA+CA).

    A pretrained ViT is frozen. In every block's attention, task ``t`` adds a low-rank branch to the key and value
    projections, ``W_k + sum_{s<=t} B^k_s A_s`` and ``W_v + sum_{s<=t} B^v_s A_s`` (one ``A_s`` of ``rank`` rows for
    both). At the start of task ``t``, the layer's representation matrix ``H_t`` (the mean of ``x x^T`` over every
    token of the task's training data at the attention's input, with the earlier branches on) is projected out of the
    earlier tasks' subspace kept by DualGPM, and ``A_t`` is its top-``rank`` left singular vectors times ``1/sqrt(3)``,
    then frozen; ``B_t`` starts at zero and trains with the head (cross-entropy over the current task's classes). Since
    ``A_t`` is orthogonal to the earlier subspace, training ``B_t`` leaves the layer's output on inputs inside it
    unchanged. At the end of the task, ``H_t`` is gathered again with the trained branch and the DualGPM basis is
    extended (:func:`dualgpm_update`) with threshold ``threshold + (threshold_end - threshold) t / T``. The branches
    are kept (not merged): prediction runs every branch so far and the head over all seen classes (class-IL), or the
    sample's task's classes (task-IL), as the reference's per-task heads concatenated.

    All tasks' ``A`` (buffer), ``B`` (one parameter; only the current task's slice trains: earlier slices are detached
    and restored after every optimizer step, later ones are unused) and the DualGPM basis (padded to ``[L, D, D]``,
    with its size and mode per layer) are sized when the stream is attached, so checkpoints have fixed keys. The
    representation matrices are summed across DDP ranks before each design or update, so every rank builds the same.

    Deviations from the reference code: the representations are gathered on the eval transform
    (``datamodule.task_loader``) instead of the augmented training loader; the matrices are summed in float64 and the
    SVDs run in float64 on the CPU (the reference: float32); after the first task, a subspace of more than ``D / 2``
    dimensions is stored as its complement (the reference's first-task branch, from ``D / 2`` dimensions on, stores the
    subspace itself under the complement's label: its own later check then stops the run, except at ``D / 2`` exactly,
    where it goes on with the wrong subspace); in the complement mode at most ``k`` directions are removed (the
    reference's loop may count past ``k``, and then slices from the end). The head is clfw's one linear head with the
    current task's classes as the training mask (the reference: one head per task, earlier ones frozen; the same with
    its Adam without weight decay, since the masked rows get no gradient). The reference's k-means keys (computed, never
    used to predict) are left out. The reference trains with the network in eval mode (no dropout): clfw's ``train``
    mode matters only for a ViT built with dropout.

    Args:
        rank: Rows of each task's ``A`` (the reference's ``rank``, 10).
        threshold: DualGPM's energy threshold at the first task (the reference's ``lamb``: 0.95 on CIFAR-100, 0.98 on
            ImageNet-R).
        threshold_end: The threshold it would reach after the last task, linearly (the reference's ``lame``, 1.0).
        vit: timm model name with its pretrained tag (the reference: ``vit_base_patch16_224_in21k`` of timm 0.6.7, the
            AugReg ImageNet-21k weights), or a ViT module.
        **kwargs: Arguments of :class:`~clfw.prompt.PromptModule` (pretrained, checkpoint_path, optimizer ...).
    """

    def __init__(
        self,
        rank: int = 10,
        threshold: float = 0.95,
        threshold_end: float = 1.0,
        vit: str | nn.Module = "vit_base_patch16_224.augreg_in21k",
        **kwargs: Any,
    ) -> None:
        if kwargs.get("cache_queries"):
            raise ValueError("InfLoRA has no query to cache: cache_queries must be false")
        super().__init__(vit=vit, **kwargs)
        if not 1 <= rank <= self.embed_dim:
            raise ValueError(f"rank must be in [1, {self.embed_dim}] (the embedding size), got {rank}")
        if not 0 < threshold <= threshold_end <= 1:
            raise ValueError(f"need 0 < threshold <= threshold_end <= 1, got {threshold=} and {threshold_end=}")
        self.rank, self.threshold, self.threshold_end = rank, threshold, threshold_end

    @override
    def build_for_stream(self) -> None:
        t, n_layers, d, device = self.stream.n_tasks, len(self.backbone.blocks), self.embed_dim, self.head.weight.device
        self.register_buffer("lora_a", torch.zeros(t, n_layers, self.rank, d, device=device))
        self.lora_b = nn.Parameter(torch.zeros(t, 2, n_layers, d, self.rank, device=device))  # [task, k/v, layer]
        self.register_buffer("gpm_basis", torch.zeros(n_layers, d, d, dtype=torch.float64, device=device))
        self.register_buffer("gpm_size", torch.zeros(n_layers, dtype=torch.long, device=device))
        self.register_buffer("gpm_retain", torch.zeros(n_layers, dtype=torch.bool, device=device))

    def basis(self, layer: int) -> tuple[Tensor, bool]:
        """The DualGPM basis ``[D, k]`` of ``layer`` (float64, on the CPU) and whether it spans the complement."""
        return self.gpm_basis[layer, :, : int(self.gpm_size[layer])].cpu(), bool(self.gpm_retain[layer])

    def encode(self, x: Tensor, record: Tensor | None = None) -> Tensor:
        """The tokens ``[B, N, D]`` after the final norm, with the branches of tasks ``0..current_task``; ``record``
        (``[L, D, D]``, float64) adds up every attention input's ``x^T x``."""
        vit, t = self.backbone, self.current_task
        if t >= 0:
            a = self.lora_a[: t + 1].transpose(0, 1).flatten(1, 2)  # [L, (t+1) r, D]
            b = self.lora_b[: t + 1]
            if self.training:  # the earlier tasks' B are fixed
                b = torch.cat([b[:t].detach(), b[t:]])
            b = b.permute(2, 1, 3, 0, 4).flatten(3)  # [L, 2, D, (t+1) r]
        h = vit_tokens(vit, x)
        for i, block in enumerate(vit.blocks):
            qkv_fn = partial(lora_qkv, block.attn, a=a[i], b_k=b[i, 0], b_v=b[i, 1]) if t >= 0 else None
            if record is not None:
                qkv_fn = partial(self._recording, record[i], qkv_fn or block.attn.qkv)
            h = block_forward(block, h, qkv_fn=qkv_fn)
        return vit.norm(h)

    @staticmethod
    def _recording(total: Tensor, qkv_fn: Any, x: Tensor) -> Tensor:
        flat = x.reshape(-1, x.shape[-1]).double()
        total.add_(flat.T @ flat)
        return qkv_fn(x)

    @override
    def prompted_features(self, x: Tensor, batch: Batch | None = None) -> tuple[Tensor, Tensor]:
        features = self.encode(x)[:, 0]
        return features, features.new_zeros(())

    def representations(self, task: int) -> Tensor:
        """Each layer's representation matrix ``[L, D, D]`` (float64, CPU) over ``task``'s training data (eval
        transform, eval mode, no gradients): the mean of ``x x^T`` over tokens, summed across DDP ranks."""
        n_layers, d = len(self.backbone.blocks), self.embed_dim
        total = torch.zeros(n_layers, d, d, dtype=torch.float64, device=self.device)
        count = torch.zeros(1, dtype=torch.float64, device=self.device)
        with eval_mode(self), torch.no_grad(), torch.autocast(self.device.type, enabled=False):
            for batch in self.datamodule.task_loader(task):
                tokens = self.encode(batch.x.to(self.device), record=total)
                count += tokens.shape[0] * tokens.shape[1]
        sum_across_ranks([total, count])
        return (total / count.clamp(min=1)).cpu()

    @override
    def on_task_start(self, task: int) -> None:
        representation = self.representations(task)  # with the earlier branches (this task's B is still zero)
        for layer in range(len(self.backbone.blocks)):
            a = design_lora_a(representation[layer], *self.basis(layer), self.rank)
            self.lora_a[task, layer] = (A_SCALE * a).to(self.lora_a)

    @override
    def on_task_end(self, task: int) -> None:
        representation = self.representations(task)
        threshold = self.threshold + (self.threshold_end - self.threshold) * task / self.stream.n_tasks
        for layer in range(len(self.backbone.blocks)):
            basis, retain = dualgpm_update(*self.basis(layer), representation[layer], threshold)
            self.gpm_basis[layer].zero_()
            self.gpm_basis[layer, :, : basis.shape[1]] = basis.to(self.gpm_basis)
            self.gpm_size[layer], self.gpm_retain[layer] = basis.shape[1], retain

    @override
    def fixed_parts(self) -> list[tuple[nn.Parameter, tuple[slice, ...]]]:
        t = self.current_task  # only the current task's B trains
        return [(self.lora_b, (slice(0, t),)), (self.lora_b, (slice(t + 1, None),))]
