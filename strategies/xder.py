"""X-DER: eXtended Dark Experience Replay (DER++ with logits revised afterwards and future heads prepared)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.nn import functional as F  # noqa: N812
from typing_extensions import override

from clfw import Batch, ContinualModule
from clfw.buffers import Memory
from clfw.data import StrongAugment
from clfw.distributed import sum_across_ranks
from clfw.seeding import derived_generator


@contextmanager
def _frozen_batch_norm_stats(module: nn.Module) -> Iterator[None]:
    """Forwards inside use batch statistics in training mode but leave the running statistics as they are (Mammoth's
    ``bn_track_stats(module, False)``); the modules' train/eval flags are untouched."""
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    for m in norms:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m in norms:
            m.track_running_stats = True


class XDER(ContinualModule):
    """X-DER (Boschini, Bonicelli, Buzzega, Porrello & Calderara, IEEE TPAMI 2022, "Class-Incremental Continual
    Learning into the eXtended DER-verse"), the variant with a plain linear head and cross-entropy (Mammoth's ``xder``;
    the RPC head of ``xder_rpc`` is not implemented). A head is the set of a task's classes.

    Memory: class-balanced and written only at task ends. At the end of task ``t`` it keeps the first
    ``buffer_size // seen classes`` stored samples of each class, then fills the free slots with task ``t``'s training
    samples, an equal quota per class (the remainder to random classes), taken in a random order. A new sample stores
    its label, task and the network's logits on its augmented input, whose past heads are scaled by ``gamma * z_y /
    max(past)`` when their maximum exceeds the ground-truth logit ``z_y``. Then every older sample has the heads of
    tasks ``>= t`` (future when it was stored) replaced by the network's responses, scaled the same way
    (:meth:`update_logits`); ``gamma`` keeps them below the ground truth. During task ``t``, each replayed older sample
    gets the same update with probability ``1 / (times drawn in this task)``.

    Loss at task ``t`` = CE over the current head only + ``alpha`` MSE(f(x'), z') on a replayed minibatch (all heads)
    + ``beta`` CE over the past heads on a second, independent one + ``lambd`` SupCon on each future head (tasks
    ``> t``): the L2-normalised future-head logits of ``num_views`` strong augmentations of up to ``supcon_batch_size``
    current and as many stored samples, labels as positives, temperature ``temperature`` (:meth:`supcon`), averaged
    over anchors and heads + the future constraint ``eta`` mean[max(future head) + m - max(own head)]_+ over the
    current batch (own head: the current one) and the replayed samples (the head of their task) + the past constraint
    ``eta`` mean[max(past softmax).detach() + m - max(current softmax)]_+ (softmax over the seen classes) on the current
    batch. Logged as ``train/der``, ``derpp``, ``supcon``, ``future_constraint``, ``past_constraint``.

    Defaults: the paper code's best arguments for Seq-CIFAR-100 with 500 samples (``utils/best_args.py`` of the X-DER
    release in Mammoth: alpha 0.3, beta 0.8, gamma 0.85, lambd 0.05, eta 0.001, m 0.7, SupCon temperature 5, 2 views,
    batch 64; 2000 samples: alpha 0.6, beta 0.9, eta 0.01, m 0.2). Today's Mammoth ``xder`` defaults differ: eta 0.1,
    m 0.3, the past constraint off, 4 views, plus options not implemented here (``align_bn``, which joins current
    samples to the replayed batch for BatchNorm statistics, and a ``dp_weight`` distance-preserving loss). Mammoth's
    ``xder_ce`` is this method without future preparation and past constraint: ``lambd=0, past_constraint=False``.

    Scenarios: class- and task-IL (the paper code's); training is the same in both, evaluation masks as the scenario
    says. Not domain-IL: its tasks share all classes, so there are no past, current and future heads.

    Deviations: responses at a task end are computed in the training mode with frozen BatchNorm statistics, as the
    reference does, over the chosen samples in batches of the training batch size (the reference forwards whole loader
    batches); the random draws there come from a generator seeded from ``buffer_seed`` and the task, so every DDP rank
    stores the same. Mammoth's per-sample ``task_labels`` update (unused by the loss) is not kept. Strong augmentation
    is :class:`~clfw.data.StrongAugment` followed by the stream's evaluation transform; on streams whose stored inputs
    are not ``uint8`` images with 1 or 3 channels, the views go through the stream's training transform instead. Under
    DDP the online update averages the responses of ranks that drew the same sample, so replicas stay identical.

    Args:
        buffer_size: Memory capacity (samples).
        replay_batch_size: Samples in each of the two replayed minibatches (Mammoth's ``minibatch_size``).
        alpha: Weight of the logit-matching MSE.
        beta: Weight of the replayed cross-entropy over the past heads.
        gamma: Scale bounding revised logits below the ground-truth logit (``0 < gamma <= 1``).
        lambd: Weight of the SupCon future preparation (0 switches it off).
        temperature: SupCon temperature (its base temperature is the same, so the loss is not rescaled).
        num_views: Strong augmentations per sample in the SupCon batch (at least 2).
        supcon_batch_size: Stored samples drawn for SupCon, and the most current samples taken.
        eta: Weight of the past and future constraints.
        m: Margin of the constraints.
        past_constraint: Apply the past-head constraint.
        future_constraint: Apply the future-head constraint.
        strong_augmentation: SupCon views by :class:`~clfw.data.StrongAugment` (``False``: the training transform).
        buffer_seed: Seed of the memory's draws (sampling, selection at task ends, online updates).
        **kwargs: Arguments of :class:`~clfw.ContinualModule` (backbone, optimizer, plugins ...).
    """

    supported_scenarios: ClassVar[tuple[str, ...]] = ("class", "task")

    def __init__(
        self,
        buffer_size: int = 500,
        replay_batch_size: int = 32,
        alpha: float = 0.3,
        beta: float = 0.8,
        gamma: float = 0.85,
        lambd: float = 0.05,
        temperature: float = 5.0,
        num_views: int = 2,
        supcon_batch_size: int = 64,
        eta: float = 0.001,
        m: float = 0.7,
        past_constraint: bool = True,
        future_constraint: bool = True,
        strong_augmentation: bool = True,
        buffer_seed: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        checks = {
            "replay_batch_size": (replay_batch_size, replay_batch_size >= 1, ">= 1"),
            "supcon_batch_size": (supcon_batch_size, supcon_batch_size >= 1, ">= 1"),
            "num_views": (num_views, num_views >= 2, ">= 2 (each anchor needs another view as positive)"),
            "gamma": (gamma, 0 < gamma <= 1, "in (0, 1]"),
            "temperature": (temperature, temperature > 0, "> 0"),
            **{k: (v, v >= 0, ">= 0") for k, v in {"alpha": alpha, "beta": beta, "lambd": lambd, "eta": eta}.items()},
        }
        for name, (value, ok, expected) in checks.items():
            if not ok:
                raise ValueError(f"{name} must be {expected}, got {value}")
        self.replay_batch_size, self.supcon_batch_size, self.num_views = replay_batch_size, supcon_batch_size, num_views
        self.alpha, self.beta, self.gamma, self.lambd, self.temperature = alpha, beta, gamma, lambd, temperature
        self.eta, self.m, self.past_constraint, self.future_constraint = eta, m, past_constraint, future_constraint
        self.strong_augmentation = strong_augmentation
        self.buffer = Memory(buffer_size, buffer_seed, "buffer_size")  # fields x, y, task, logits, slot
        self.register_buffer("update_counter", torch.zeros(buffer_size, dtype=torch.long))  # draws in this task
        self.strong_augment = StrongAugment()

    def heads(self, tasks: range) -> Tensor:
        """Boolean ``[num_classes]``: the classes of ``tasks``."""
        return self.task_masks[list(tasks)].any(0) if len(tasks) else torch.zeros_like(self.task_masks[0])

    def update_logits(self, old: Tensor, new: Tensor, y: Tensor, heads: Tensor) -> Tensor:
        """``old`` with its columns ``heads`` replaced by ``new``'s, each row scaled by ``gamma * old[y] /
        max(new[heads])`` where that maximum exceeds the ground-truth logit ``old[y]`` (else by 1)."""
        transplant = new[:, heads].to(old.dtype)
        truth = old.gather(1, y[:, None]).squeeze(1)
        top = transplant.max(1).values
        coeff = torch.where(top > truth, self.gamma * truth / top, torch.ones_like(top))
        out = old.clone()
        out[:, heads] = transplant * coeff[:, None]
        return out

    @staticmethod
    def supcon(features: Tensor, labels: Tensor, temperature: float) -> Tensor:
        """Supervised contrastive loss (Khosla et al. 2020) of ``features`` ``[N, V, D]`` (V views of N samples, already
        normalised): over the ``N V`` anchors, the mean of ``-mean_{p: same label, p != a} log softmax_{j != a}(z_a .
        z_j / temperature)_p``."""
        n, v = features.shape[:2]
        z = features.transpose(0, 1).reshape(n * v, -1)
        y = labels.repeat(v)
        itself = torch.eye(n * v, dtype=torch.bool, device=z.device)
        sim = (z @ z.T / temperature).masked_fill(itself, float("-inf"))
        log_prob = sim - torch.logsumexp(sim, 1, keepdim=True)
        positive = (y[:, None] == y[None, :]) & ~itself
        return -(log_prob.masked_fill(~positive, 0.0).sum(1) / positive.sum(1)).mean()

    def hinge(self, bad: Tensor, good: Tensor) -> Tensor:
        """``eta`` times the mean of the positive ``bad + m - good`` (0 if none)."""
        gap = bad + self.m - good
        positive = gap > 0
        return self.eta * (gap * positive).sum() / positive.sum().clamp_min(1)

    def future_penalty(self, outputs: Tensor, own: Tensor, future: Tensor) -> Tensor:
        """The future constraint: ``hinge`` of each row's maximum over the ``future`` classes against its maximum over
        its ``own`` (``[B, C]``) head."""
        bad = outputs.masked_fill(~future, float("-inf")).max(1).values
        return self.hinge(bad, outputs.masked_fill(~own, float("-inf")).max(1).values)

    def past_penalty(self, logits: Tensor, own: Tensor, past: Tensor) -> Tensor:
        """The past constraint: with the softmax over the ``own`` (``[B, C]``, the current head) and ``past`` classes,
        ``hinge`` of its maximum over the past ones (no gradient) against its maximum over the current ones."""
        probs = torch.softmax(logits.masked_fill(~(own | past), float("-inf")), 1)
        top_past = probs.masked_fill(~past, -1.0).max(1).values.detach()
        return self.hinge(top_past, probs.masked_fill(~own, -1.0).max(1).values)

    def views(self, raw: Tensor) -> Tensor:
        """``num_views`` augmented model inputs of each stored input, sample-major."""
        raw = raw.repeat_interleave(self.num_views, 0)
        if self.strong_augmentation and raw.dtype == torch.uint8 and raw.ndim == 4 and raw.shape[1] in (1, 3):
            return self.stored_eval_inputs(self.strong_augment(raw))
        return self.replay_inputs(raw)

    def future_preparation(self, batch: Batch) -> Tensor:
        """The weighted SupCon term on the future heads."""
        raw, y = self.raw_inputs(batch)[: self.supcon_batch_size], batch.y[: self.supcon_batch_size]
        if len(self.buffer):
            drawn = self.buffer.sample(self.supcon_batch_size)
            raw, y = torch.cat([drawn["x"].to(raw.device), raw]), torch.cat([drawn["y"].to(y.device), y])
        with torch.no_grad():
            x = self.views(raw)
        with _frozen_batch_norm_stats(self):
            out = self(x).view(len(y), self.num_views, -1)
        heads = [self.task_masks[k] for k in range(self.current_task + 1, self.stream.n_tasks)]
        losses = [self.supcon(F.normalize(out[:, :, h], dim=2), y, self.temperature) for h in heads]
        return self.lambd * torch.stack(losses).mean()

    @torch.no_grad()
    def refresh_replayed(self, slots: Tensor, outputs: Tensor) -> None:
        """The online update of the replayed samples' logits (each slot once in ``slots``), the same on every rank."""
        cap, task = self.buffer.capacity, self.current_task
        new = torch.zeros(cap, outputs.shape[1], device=outputs.device)
        hits = torch.zeros(cap, device=outputs.device)
        new[slots], hits[slots] = outputs.float(), 1.0
        sum_across_ranks([new, hits])
        drawn = hits > 0
        self.update_counter += drawn.to(self.update_counter.device)
        g = derived_generator(self.buffer.seed, 3, int(self.buffer.sample_calls))
        u = torch.rand(cap, generator=g, dtype=torch.float64).to(drawn.device)
        stored = self.buffer.logits
        chosen = drawn & (u * self.update_counter.to(drawn.device) < 1) & (self.buffer.task.to(drawn.device) < task)
        revised = self.update_logits(stored, new / hits.clamp_min(1)[:, None], self.buffer.y, self.heads_from(task))
        stored.copy_(torch.where(chosen[:, None].to(stored.device), revised, stored))

    def heads_from(self, task: int) -> Tensor:
        """The classes of tasks ``task`` and later."""
        return self.heads(range(task, self.stream.n_tasks))

    @override
    def training_loss(self, batch: Batch) -> dict[str, Tensor]:
        t = self.current_task
        logits = self(batch.x)
        own = self.task_masks[batch.task]
        loss = F.cross_entropy(logits.masked_fill(~own, float("-inf")), batch.y)
        terms: dict[str, Tensor] = {}
        outputs, heads = [logits], [own]  # for the future constraint: the current batch and the replayed samples
        if len(self.buffer):
            first, second = self.buffer.sample(self.replay_batch_size), self.buffer.sample(self.replay_batch_size)
            out1, out2 = self(self.replay_inputs(first["x"])), self(self.replay_inputs(second["x"]))
            terms["der"] = self.alpha * F.mse_loss(out1, first["logits"].to(out1.dtype))
            past = self.heads(range(t))
            terms["derpp"] = self.beta * F.cross_entropy(out2.masked_fill(~past, float("-inf")), second["y"])
            slots, replayed = torch.cat([first["slot"], second["slot"]]), torch.cat([out1, out2])
            order = torch.arange(len(slots), device=slots.device)
            earliest = torch.full((self.buffer.capacity,), len(slots), device=slots.device, dtype=torch.long)
            keep = earliest.scatter_reduce(0, slots, order, "amin")[slots] == order  # each slot once, its first draw
            self.refresh_replayed(slots[keep], replayed[keep].detach())
            outputs.append(replayed[keep])
            heads.append(self.task_masks[torch.cat([first["task"], second["task"]])[keep]])
        if t < self.stream.n_tasks - 1:
            if self.lambd > 0:
                terms["supcon"] = self.future_preparation(batch)
            if self.future_constraint:
                future = self.heads(range(t + 1, self.stream.n_tasks))
                terms["future_constraint"] = self.future_penalty(torch.cat(outputs), torch.cat(heads), future)
        if self.past_constraint and t > 0:
            terms["past_constraint"] = self.past_penalty(logits, own, self.heads(range(t)))
        return {"loss": loss + sum(terms.values()), "logits": logits, **terms}

    def responses(self, raw: Tensor) -> Tensor:
        """The network's logits on augmented stored inputs, in training-batch-sized chunks (no gradient)."""
        size = self.datamodule.batch_size
        return torch.cat([self(self.replay_inputs(chunk)) for chunk in raw.split(size)])

    @override
    def on_task_end(self, task: int) -> None:
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.no_grad(), torch.random.fork_rng(devices=devices), _frozen_batch_norm_stats(self):
            torch.manual_seed(derived_generator(self.buffer.seed, 4, task).initial_seed())  # the same on every rank
            self.rebuild_memory(task)
            self.update_counter.zero_()

    def rebuild_memory(self, task: int) -> None:
        """Shrinks the memory to an equal share per seen class, adds the task's samples, revises the older logits."""
        buf, dm = self.buffer, self.datamodule
        per_class = buf.capacity // int(self.heads(range(task + 1)).sum())
        kept: list[Tensor] = []
        if len(buf):
            y = buf.y[: len(buf)]
            kept = [torch.nonzero(y == c).flatten()[:per_class] for c in torch.unique(y).tolist()]
        old = torch.cat(kept) if kept else torch.zeros(0, dtype=torch.long, device=buf.size.device)
        data = dm.train_data(task)
        classes = sorted(self.stream.tasks[task].classes)
        free = buf.capacity - len(old)
        quota = torch.full((len(classes),), free // len(classes), dtype=torch.long)
        quota[torch.randperm(len(classes))[: free - int(quota.sum())]] += 1
        perm = torch.randperm(len(data.y))
        y_perm, take = data.y[perm], torch.zeros(len(perm), dtype=torch.bool)
        for c, q in zip(classes, quota.tolist(), strict=True):
            take[torch.nonzero(y_perm == c).flatten()[:q]] = True
        chosen = perm[take]
        raw = dm.memory_inputs(dm.raw_train_inputs(data.task[chosen], data.index[chosen])).to(buf.size.device)
        y_new = data.y[chosen].to(self.device)
        logits = self.responses(raw)
        if task > 0:
            logits = self.update_logits(logits, logits, y_new, self.heads(range(task)))
        fields = {"x": raw, "y": y_new, "task": data.task[chosen].to(self.device), "logits": logits}
        if len(old):
            stored = {name: getattr(buf, name)[old] for name in fields}
            fields = {k: torch.cat([stored[k].to(v.device, v.dtype), v]) for k, v in fields.items()}
        n = len(fields["y"])
        buf.assign(**fields, slot=torch.arange(n, device=self.device))
        if n and bool((buf.task[:n] < task).any()):  # the older samples' heads of tasks >= task: the current net's
            order = torch.randperm(n, device=self.device)  # a shuffled pass, as the reference's get_data
            out = torch.empty_like(buf.logits[:n])
            out[order] = self.responses(buf.x[:n][order.to(buf.x.device)]).to(out.dtype)
            revised = self.update_logits(buf.logits[:n], out, buf.y[:n], self.heads_from(task))
            older = (buf.task[:n] < task)[:, None]
            buf.logits[:n] = torch.where(older, revised, buf.logits[:n])
