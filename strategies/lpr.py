"""Layerwise Proximal Replay (Yoo et al.): a per-layer preconditioner for any replay strategy."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F  # noqa: N812
from typing_extensions import override

from clfw import ContinualModule, Plugin
from clfw.buffers import Memory, replay_memory
from clfw.evaluation import eval_mode

LAYERS = (nn.Linear, nn.Conv2d, nn.BatchNorm2d)


class LayerwiseProximalReplay(Plugin):
    """Layerwise Proximal Replay (Yoo, Liu, Wood & Pleiss, ICML 2024, "Layerwise Proximal Replay: A Proximal Point
    Method for Online Continual Learning"; reference code plai-group/LPR, ``src/strategies/lpr_plugin.py``).

    The strategy's loss is unchanged (ER's on current and replayed samples, DER++'s ...); each layer's update is
    preconditioned so that the layer's outputs on the replayed data move little. For a layer with weight gradient
    ``G`` (``out x in``; a convolution's ``out x in*k*h``) and bias gradient ``g_b``, the update uses
    ``[G | g_b] P^-1`` with ``P = I + (omega_0 / c) (1/N) sum_i a_i a_i^T``, where ``a_i`` are the layer's inputs on
    the ``N`` replayed samples (with a 1 appended when the layer has a bias; a convolution's input patches, summed over
    positions) and ``c = 1`` for linear layers, ``(patches per image)^beta`` for convolutions: this step is the proximal
    point step that penalises ``(omega_0 / 2c) ||(W' - W) a||^2`` averaged over the replayed inputs. A BatchNorm2d
    layer gets a 2x2 ``P`` per channel over ``[normalised input, 1]``, ``c = (H W)^beta``. Every ``Linear``,
    ``Conv2d`` and affine ``BatchNorm2d`` layer whose weights train is preconditioned, the head included, as in the
    reference code.

    ``P^-1`` is recomputed from the whole memory (or ``n_samples`` of it) in eval mode at every ``every_n_steps``-th
    optimizer step while the memory holds samples, and reused in between; before the first computation nothing is
    preconditioned. The matrices are saved with the plugin's state, so a resumed run preconditions exactly as the
    uninterrupted one; under DDP every rank holds the same memory and computes the same matrices. Deviations: the
    memory's inputs go through the evaluation transform (no augmentation); a BatchNorm input is normalised by
    ``sqrt(running_var + eps)`` as BatchNorm does (the reference code divides by ``running_var + eps``); grouped
    convolutions are refused. Cost: a forward pass over the memory every ``every_n_steps`` steps, and for each layer a
    ``(in+1) x (in+1)`` inverse then and a matrix product per step.

    Args:
        omega_0: Strength of the proximal term (the reference code's default 1; its Split CIFAR-100 setting 4).
        beta: Exponent of the spatial scaling of convolutional and BatchNorm layers (default 1; CIFAR-100 setting 2).
        every_n_steps: Optimizer steps between recomputations of the preconditioners (the reference README's
            Split CIFAR-100 setting 30).
        n_samples: Memory samples used (``None``: the whole memory).
        batch_size: Memory samples per forward pass when computing the preconditioners (the reference's 100).
    """

    def __init__(
        self,
        omega_0: float = 1.0,
        beta: float = 1.0,
        every_n_steps: int = 30,
        n_samples: int | None = None,
        batch_size: int = 100,
    ) -> None:
        super().__init__()
        if omega_0 < 0:
            raise ValueError(f"omega_0 must be >= 0, got {omega_0}")
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}")
        if n_samples is not None and n_samples < 1:
            raise ValueError(f"n_samples must be null (the whole memory) or >= 1, got {n_samples}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.omega_0, self.beta, self.every_n_steps = omega_0, beta, every_n_steps
        self.n_samples, self.batch_size = n_samples, batch_size
        self.inverses: dict[str, Tensor] = {}  # layer name -> P^-1 (saved in get_extra_state)
        self._memory: list[Memory] = []

    @override
    def on_setup(self, module: ContinualModule) -> None:
        self._memory = [replay_memory(module, "LayerwiseProximalReplay")]
        for name, layer in self.layers(module).items():
            if isinstance(layer, nn.Conv2d) and layer.groups != 1:
                raise ValueError(f"LayerwiseProximalReplay cannot precondition the grouped convolution {name}")

    @staticmethod
    def layers(module: nn.Module) -> dict[str, nn.Module]:
        """The preconditioned layers by name: ``Linear``, ``Conv2d`` and affine ``BatchNorm2d`` layers whose weight
        trains, outside the plugins."""
        return {
            name: m
            for name, m in module.named_modules()
            if isinstance(m, LAYERS)
            and not name.startswith("plugins.")
            and getattr(m, "weight", None) is not None
            and m.weight.requires_grad
        }

    def layer_inputs(self, layer: nn.Module, a: Tensor) -> tuple[Tensor, int]:
        """The rows ``a_i`` a layer's input contributes (bias column appended) and the number of rows per sample."""
        if isinstance(layer, nn.Linear):
            rows = a.reshape(-1, a.shape[-1])
            per_sample = rows.shape[0] // a.shape[0]
        elif isinstance(layer, nn.Conv2d):
            patches = F.unfold(a, layer.kernel_size, layer.dilation, layer.padding, layer.stride)
            per_sample = patches.shape[-1]
            rows = patches.transpose(1, 2).reshape(-1, patches.shape[1])
        else:
            raise TypeError(type(layer).__name__)
        if getattr(layer, "bias", None) is not None:
            rows = torch.cat([rows, rows.new_ones(len(rows), 1)], 1)
        return rows.double(), per_sample

    @torch.no_grad()
    def compute(self, module: ContinualModule, x: Tensor) -> dict[str, Tensor]:
        """``P^-1`` of every preconditioned layer from the model inputs ``x`` (the replayed samples)."""
        layers = self.layers(module)
        sums: dict[str, Tensor] = {}
        per: dict[str, int] = {}

        def hook(name: str, layer: nn.Module) -> Any:
            def record(_: nn.Module, inputs: tuple[Tensor, ...]) -> None:
                a = inputs[0].detach()
                if isinstance(layer, nn.BatchNorm2d):
                    z = (a - layer.running_mean[None, :, None, None]) / torch.sqrt(
                        layer.running_var[None, :, None, None] + layer.eps
                    )
                    z = z.transpose(0, 1).reshape(a.shape[1], -1).double()  # [C, N*H*W]
                    s_zz, s_z = (z * z).sum(1), z.sum(1)
                    count = torch.full_like(s_z, z.shape[1])
                    stats = torch.stack([torch.stack([s_zz, s_z], -1), torch.stack([s_z, count], -1)], -2)  # [C, 2, 2]
                    per[name] = a.shape[2] * a.shape[3]
                else:
                    rows, per[name] = self.layer_inputs(layer, a)
                    stats = rows.T @ rows
                sums[name] = sums[name] + stats if name in sums else stats

            return record

        handles = [layer.register_forward_pre_hook(hook(n, layer)) for n, layer in layers.items()]
        try:
            with eval_mode(module):
                for start in range(0, len(x), self.batch_size):
                    module(x[start : start + self.batch_size])
        finally:
            for h in handles:
                h.remove()
        out = {}
        for name, s in sums.items():
            scale = 1.0 if isinstance(layers[name], nn.Linear) else float(per[name]) ** self.beta
            eye = torch.eye(s.shape[-1], dtype=s.dtype, device=s.device)
            out[name] = torch.linalg.inv(eye + (self.omega_0 / scale) * s / len(x)).to(layers[name].weight.dtype)
        return out

    @override
    def before_optimizer_step(self, module: ContinualModule, optimizer: torch.optim.Optimizer) -> None:
        memory = self._memory[0] if self._memory else replay_memory(module, "LayerwiseProximalReplay")
        if len(memory) and module.trainer.global_step % self.every_n_steps == 0:
            n = len(memory) if self.n_samples is None else min(self.n_samples, len(memory))
            self.inverses = self.compute(module, module.stored_eval_inputs(memory.x[:n]))
        if self.inverses:
            self.precondition(module)

    def precondition(self, module: nn.Module) -> None:
        """Replaces each preconditioned layer's gradients by ``[G | g_b] P^-1`` (per channel for BatchNorm)."""
        for name, layer in self.layers(module).items():
            inverse = self.inverses.get(name)
            if inverse is None or layer.weight.grad is None:
                continue
            w, b = layer.weight, layer.bias
            inverse = inverse.to(w.grad.device)
            if isinstance(layer, nn.BatchNorm2d):
                if b is None or b.grad is None:
                    continue
                g = torch.stack([w.grad, b.grad], 1).unsqueeze(1)  # [C, 1, 2]
                new = torch.bmm(g, inverse).squeeze(1)
                w.grad.copy_(new[:, 0])
                b.grad.copy_(new[:, 1])
                continue
            g = w.grad.reshape(w.shape[0], -1)
            if b is not None:
                g = torch.cat([g, b.grad.unsqueeze(1)], 1)
            new = g @ inverse
            w.grad.copy_(new[:, : g.shape[1] - (b is not None)].reshape(w.shape))
            if b is not None:
                b.grad.copy_(new[:, -1])

    @override
    def get_extra_state(self) -> dict[str, Tensor]:
        return dict(self.inverses)

    @override
    def set_extra_state(self, state: dict[str, Tensor]) -> None:
        self.inverses = dict(state)
