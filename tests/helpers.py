"""Test helpers: a tiny synthetic stream, and a strategy and plugin defined outside clfw (as a researcher would)."""

from __future__ import annotations

import copy
import os
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor
from typing_extensions import override

from clfw import (
    AccuracyMatrix,
    Batch,
    ContinualCallback,
    ContinualDataModule,
    ContinualModule,
    Normalize,
    Plugin,
    Stream,
)
from clfw.data import ScenarioName, class_incremental_tasks, classes_per_task_split, domain_incremental_tasks


class TinyStream(ContinualDataModule):
    """Synthetic stream: ``num_classes`` Gaussian blobs as ``uint8 [1, 4, 4]`` images, split into tasks.

    Args:
        n_tasks: Number of tasks.
        num_classes_total: Number of classes.
        train_per_class: Training samples per class.
        test_per_class: Test samples per class.
        scenario: class, task or domain (domain: every task holds all classes, shifted inputs per task).
        **kwargs: Stream arguments of ContinualDataModule.
    """

    def __init__(
        self,
        n_tasks: int = 2,
        num_classes_total: int = 4,
        train_per_class: int = 24,
        test_per_class: int = 10,
        scenario: ScenarioName = "class",
        **kwargs: Any,
    ) -> None:
        super().__init__(scenario=scenario, **kwargs)
        self._n_tasks, self._num_classes = n_tasks, num_classes_total
        self.train_per_class, self.test_per_class = train_per_class, test_per_class
        if scenario != "domain":
            self.sizes = classes_per_task_split(num_classes_total, n_tasks, None)

    @property
    @override
    def num_classes(self) -> int:
        return self._num_classes

    @property
    @override
    def n_tasks(self) -> int:
        return self._n_tasks

    @override
    def eval_transform(self) -> Normalize:
        return Normalize((0.5,), (0.25,))

    def _blobs(self, per_class: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
        centers = torch.rand(self._num_classes, 1, 4, 4, generator=torch.Generator().manual_seed(123)) * 200 + 20
        y = torch.arange(self._num_classes).repeat_interleave(per_class)
        x = centers[y] + torch.randn(len(y), 1, 4, 4, generator=g) * 25
        return x.clamp(0, 255).to(torch.uint8), y

    @override
    def build_stream(self) -> Stream:
        g = torch.Generator().manual_seed(self.seed)
        train, test = self._blobs(self.train_per_class, g), self._blobs(self.test_per_class, g)
        if self.scenario == "domain":
            warps = [lambda x, t=t: (x.int() + 30 * t).clamp(0, 255).to(torch.uint8) for t in range(self._n_tasks)]
            tasks = domain_incremental_tasks(train, test, warps, self._num_classes, self.val_fraction, self.seed)
        else:
            order = list(range(self._num_classes))
            tasks = class_incremental_tasks(train, test, order, self.sizes, self.val_fraction, self.seed)
        return Stream(tasks, self.scenario, self._num_classes, (1, 4, 4), self.task_boundaries_visible)


class ScaledLoss(ContinualModule):
    """A strategy written outside clfw: cross-entropy times a factor, counting its task-end calls.

    Args:
        factor: Multiplies the loss.
        **kwargs: ContinualModule arguments.
    """

    def __init__(self, factor: float = 1.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.factor = factor
        self.task_end_calls: list[int] = []

    @override
    def training_loss(self, batch: Batch) -> dict[str, Tensor]:
        out = super().training_loss(batch)
        return {"loss": self.factor * out["loss"], "logits": out["logits"]}

    @override
    def on_task_end(self, task: int) -> None:
        self.task_end_calls.append(task)


class L2Plugin(Plugin):
    """A plugin written outside clfw: adds ``weight * ||logits||^2`` and records the hooks it heard.

    Args:
        weight: Weight of the penalty.
    """

    def __init__(self, weight: float = 0.01) -> None:
        super().__init__()
        self.weight = weight
        self.events: list[tuple[str, int]] = []
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    @override
    def on_task_start(self, module: ContinualModule, task: int) -> None:
        self.events.append(("start", task))

    @override
    def on_task_end(self, module: ContinualModule, task: int) -> None:
        self.events.append(("end", task))

    @override
    def loss_terms(self, module: ContinualModule, batch: Batch, outputs: dict[str, Tensor]) -> dict[str, Tensor]:
        self.steps += 1
        return {"l2_logits": self.weight * outputs["logits"].pow(2).mean()}


class RecordEvents(ContinualCallback):
    """Records ``(event, task, epoch, rows measured so far)`` for lifecycle tests."""

    def __init__(self) -> None:
        self.events: list[tuple[str, int, int]] = []

    @override
    def on_task_start(self, trainer: pl.Trainer, module: ContinualModule, task: int) -> None:
        self.events.append(("start", task, trainer.current_epoch))

    @override
    def on_task_end(self, trainer: pl.Trainer, module: ContinualModule, task: int) -> None:
        self.events.append(("end", task, trainer.current_epoch))


class Interrupt(pl.Callback):
    """Stops the run with an exception once ``step`` optimizer steps are done. Lightning runs checkpoint callbacks
    after all others, so a checkpoint of that very step is not written (stop one step later to resume from it).

    Args:
        step: Optimizer step after which to stop.
    """

    resume_neutral = True

    def __init__(self, step: int) -> None:
        self.step = step

    @override
    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step == self.step:
            raise RuntimeError(f"interrupted after step {self.step}")


class KillAtStep(pl.Callback):
    """Kills its own process with SIGKILL once ``global_step`` reaches ``step`` (after any checkpoint of that step).

    Args:
        step: Optimizer step at which to die.
    """

    resume_neutral = True  # a resumed run may drop it (clfw.resume)

    def __init__(self, step: int) -> None:
        self.step = step

    @override
    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step >= self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class SaveFinalState(pl.Callback):
    """Saves the final ``state_dict`` and accuracy matrix to ``path`` at the end of training.

    Args:
        path: Output file (``torch.save``).
    """

    resume_neutral = True  # a resumed run may add it (clfw.resume)

    def __init__(self, path: str) -> None:
        self.path = path

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        matrix = next(cb for cb in trainer.callbacks if isinstance(cb, AccuracyMatrix))  # type: ignore[attr-defined]
        state = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}
        torch.save(
            {"state_dict": state, "rows": matrix.rows, "initial": matrix.initial, "step": trainer.global_step},
            self.path,
        )


def fit(
    module: ContinualModule, dm: ContinualDataModule, callbacks: list[pl.Callback] | None = None, **trainer_kwargs: Any
) -> tuple[pl.Trainer, AccuracyMatrix]:
    """Fits ``module`` on ``dm`` quietly on CPU with an AccuracyMatrix; returns the trainer and the matrix callback.

    ``root`` is the run directory (a fresh temporary one by default, so tests never write into the working tree);
    ``ckpt_path`` is passed to ``trainer.fit``; other keywords go to the Trainer.
    """
    matrix = AccuracyMatrix()
    ckpt_path = trainer_kwargs.pop("ckpt_path", None)
    kwargs: dict[str, Any] = dict(
        max_epochs=dm.total_epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=trainer_kwargs.pop("root", None) or tempfile.mkdtemp(prefix="clfw-test-"),
    )
    kwargs.update(trainer_kwargs)
    trainer = pl.Trainer(callbacks=[matrix, *(callbacks or [])], **kwargs)
    trainer.fit(module, dm, ckpt_path=ckpt_path)
    return trainer, matrix


def snapshot(module: torch.nn.Module) -> dict[str, Any]:
    """A detached copy of ``module.state_dict()`` (tensors cloned; extra state such as plugin counters copied)."""
    return {
        k: v.detach().clone() if isinstance(v, Tensor) else copy.deepcopy(v) for k, v in module.state_dict().items()
    }


def assert_same_state(a: dict[str, Any], b: dict[str, Any], label: str = "") -> None:
    """Every entry equal: tensors bit for bit, other values (extra state) by ``==``."""
    assert a.keys() == b.keys(), label
    for k in a:
        same = torch.equal(a[k], b[k]) if isinstance(a[k], Tensor) else a[k] == b[k]
        assert same, f"{label} {k}"


ROOT = Path(__file__).resolve().parents[1]


def free_port() -> str:
    """A free TCP port on the loopback interface, for a torch.distributed rendezvous."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return str(sock.getsockname()[1])


def run_script(name: str, *args: str, cwd: Path) -> None:
    """Runs ``tests/scripts/<name>`` in a subprocess with the repository importable; fails with its stderr if it fails.

    DDP tests launch scripts this way: ``strategy="ddp"`` re-runs the command line, which would restart pytest.
    """
    out = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "scripts" / name), *args],
        cwd=cwd, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-4000:]


def tiny_vit(depth: int = 3, embed_dim: int = 16) -> torch.nn.Module:
    """A random-weight timm ViT for TinyStream's ``[1, 4, 4]`` inputs: 2x2 patches, 2 heads."""
    from clfw.prompt import create_vit

    return create_vit(
        "vit_tiny_patch16_224", img_size=4, patch_size=2, in_chans=1, embed_dim=embed_dim, depth=depth, num_heads=2
    )


def write_cifar(root: Path, name: str, per_class: int) -> None:
    """Small CIFAR files in the standard python format (pickled dicts of uint8 rows and labels).

    Every file (the five training batches and the test batch of CIFAR-10, or CIFAR-100's ``train`` and ``test``) holds
    ``per_class`` images of every class, so a CIFAR-10 training split has ``5 * per_class`` images per class.

    Args:
        root: Directory that receives ``cifar-10-batches-py/`` or ``cifar-100-python/`` (created; must not exist).
        name: ``"cifar10"`` or ``"cifar100"``.
        per_class: Images per class in each file.
    """
    import pickle

    import numpy as np

    g = np.random.default_rng(0)
    classes, folder, key = (
        (10, "cifar-10-batches-py", b"labels") if name == "cifar10" else (100, "cifar-100-python", b"fine_labels")
    )
    files = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"] if name == "cifar10" else ["train", "test"]
    (root / folder).mkdir(parents=True)
    for f in files:
        labels = np.repeat(np.arange(classes), per_class)
        # class c's images are brighter in channel c % 3, so a model can learn them
        data = g.integers(0, 100, (len(labels), 3, 32, 32), dtype=np.uint8)
        data[np.arange(len(labels)), labels % 3] += (50 + labels * (100 // classes)).astype(np.uint8)[:, None, None]
        with open(root / folder / f, "wb") as fh:
            pickle.dump({b"data": data.reshape(len(labels), -1), key: labels.tolist()}, fh)


class KillAt(pl.Callback):
    """Kills its own process with SIGKILL at a kill point of the kill-anywhere matrix (a neutral callback: a resumed
    run may drop it).

    Args:
        point: ``"step"`` (after optimizer step ``step`` and its checkpoint), ``"task_end"`` (in the task-end work of
            the task ending at ``step``, after the strategy's and plugins' hooks), ``"evaluation"`` (inside the
            continual-evaluation pass of ``step``) or ``"checkpoint_write"`` (half-way through writing the ``step``-th
            checkpoint file).
        step: The step (or checkpoint count) of the kill.
    """

    resume_neutral = True

    def __init__(self, point: str = "step", step: int = 1) -> None:
        self.point, self.step = point, step

    @staticmethod
    def _die() -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        import clfw.checkpoint
        from clfw import ContinualEvaluation

        if self.point == "task_end":
            original_end = ContinualModule._end_task

            def end(module: ContinualModule, task: int) -> None:
                if module.trainer.global_step != self.step:
                    return original_end(module, task)
                module.on_task_end(task)
                for p in module.plugins:
                    p.on_task_end(module, task)
                self._die()

            ContinualModule._end_task = end  # type: ignore[method-assign]
        elif self.point == "evaluation":
            original_eval = ContinualEvaluation.evaluate

            def evaluate(cb: ContinualEvaluation, module: ContinualModule, task: int) -> Any:
                if module.trainer.global_step == self.step:
                    self._die()
                return original_eval(cb, module, task)

            ContinualEvaluation.evaluate = evaluate  # type: ignore[method-assign]
        elif self.point == "checkpoint_write":
            calls = [0]
            original_save = torch.save

            def save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
                calls[0] += 1
                if calls[0] == self.step and hasattr(f, "write"):
                    f.write(b"PK\x03\x04 half a checkpoint")
                    f.flush()
                    self._die()
                original_save(obj, f, *args, **kwargs)

            clfw.checkpoint.torch.save = save  # type: ignore[assignment]

    @override
    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if self.point == "step" and trainer.global_step >= self.step:
            self._die()
