"""A nearest-mean head (Łapacz et al.): classification by class means of features, as a plugin for any strategy."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor
from torch.nn import functional as F  # noqa: N812
from typing_extensions import override

from clfw import Batch, ContinualModule, Plugin
from clfw.buffers import Memory, replay_memory
from clfw.distributed import sum_across_ranks
from clfw.evaluation import eval_mode

Source = Literal["memory", "running"]


class NearestMeanHead(Plugin):
    """Predicts by the nearest class mean of the backbone's features instead of the linear head (Łapacz et al., WACV
    2025: the classification head drives much of the stability gap; a nearest-mean classifier on the same features
    shows a smaller one). Training is unchanged: with and without this plugin the weights are bit-identical, so the
    two runs' curves tell the gap of the representation from the gap of the head.

    The score of class ``c`` is ``-||f(x) - mu_c||`` (features and means L2-normalised with ``normalize``, as iCaRL's
    nearest-mean-of-exemplars), masked to the classes the scenario allows. The means ``mu_c`` come from

    - ``"memory"``: the features of the strategy's replay memory under the current model, recomputed whenever the
      weights or the memory changed (every evaluation sees the model it evaluates);
    - ``"running"``: the running mean of the training features of each class, every training sample counted once
      with the features the model gave it when it was trained on (eval mode, no gradient: no random draw, BatchNorm
      statistics untouched); summed across DDP ranks.

    Until every class the scenario allows has a mean (an empty memory, a class never stored), the linear head's scores
    pass through unchanged, as iCaRL does. Deviations: the paper's exact feature normalisation and mean estimator
    could not be consulted here; both sources are offered and named in the results.

    Args:
        source: Where the class means come from: ``"memory"`` or ``"running"``.
        normalize: L2-normalise features and means.
    """

    def __init__(self, source: Source = "memory", normalize: bool = True) -> None:
        super().__init__()
        if source not in ("memory", "running"):
            raise ValueError(f"source must be 'memory' or 'running', got {source!r}")
        self.source, self.normalize = source, normalize
        self._memory: list[Memory] = []
        self._cache: tuple[tuple[int, ...], Tensor, Tensor] | None = None

    @override
    def on_setup(self, module: ContinualModule) -> None:
        if self.source == "memory":
            self._memory = [replay_memory(module, "NearestMeanHead(source='memory')")]
        elif not hasattr(self, "sums"):
            device = module.head.weight.device
            self.register_buffer("sums", torch.zeros(module.stream.num_classes, module.head.in_features, device=device))
            self.register_buffer("counts", torch.zeros(module.stream.num_classes, device=device))

    def _features(self, module: ContinualModule, x: Tensor) -> Tensor:
        features = module.features(x)
        return F.normalize(features, dim=1) if self.normalize else features

    @override
    def before_training_step(self, module: ContinualModule, batch: Batch) -> None:
        if self.source != "running":
            return
        with torch.no_grad(), eval_mode(module):
            features = self._features(module, batch.x)
        sums = torch.zeros_like(self.sums).index_add_(0, batch.y, features.to(self.sums.dtype))
        counts = torch.bincount(batch.y, minlength=len(self.counts)).to(self.counts.dtype)
        sum_across_ranks([sums, counts])
        self.sums += sums
        self.counts += counts

    def class_means(self, module: ContinualModule) -> tuple[Tensor, Tensor]:
        """``(means [C, D], has_mean [C])`` under the current model."""
        if self.source == "running":
            means = self.sums / self.counts.clamp(min=1).unsqueeze(1)
            return (F.normalize(means, dim=1) if self.normalize else means), self.counts > 0
        memory = self._memory[0]
        version = (*(int(t._version) for t in (*module.parameters(), *module.buffers())), len(memory))
        if self._cache is not None and self._cache[0] == version:
            return self._cache[1], self._cache[2]
        n, classes = len(memory), module.stream.num_classes
        dim = module.head.in_features
        sums = torch.zeros(classes, dim, device=module.head.weight.device)
        counts = torch.zeros(classes, device=sums.device)
        for start in range(0, n, 256):
            x = module.stored_eval_inputs(memory.x[start : min(n, start + 256)])
            y = memory.y[start : min(n, start + 256)].to(sums.device)
            sums.index_add_(0, y, self._features(module, x).to(sums.dtype))
            counts += torch.bincount(y, minlength=classes).to(counts.dtype)
        means = sums / counts.clamp(min=1).unsqueeze(1)
        means = F.normalize(means, dim=1) if self.normalize else means
        self._cache = (version, means, counts > 0)
        return means, counts > 0

    @override
    def predict(self, module: ContinualModule, x: Tensor, task_ids: Tensor, scores: Tensor) -> Tensor:
        means, has_mean = self.class_means(module)
        mask = module.class_mask(task_ids)
        allowed = mask.any(0) if mask is not None else torch.ones_like(has_mean)
        if not bool(has_mean[allowed].all()):
            return scores
        out = -torch.cdist(self._features(module, x).to(means.dtype), means)
        return out if mask is None else out.masked_fill(~mask, float("-inf"))

    @override
    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: object, **kwargs: object) -> None:
        self._cache = None
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)  # type: ignore[arg-type]
