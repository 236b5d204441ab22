"""Test helpers: a strategy and plugin defined outside clfw (as a researcher would), kill points, script launchers.

The tiny stream and the fitting and comparison helpers live in the plug-in kit, :mod:`clfw.testing`, and are
re-exported here for the tests.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor
from typing_extensions import override

from clfw import AccuracyMatrix, Batch, ContinualCallback, ContinualModule, Plugin
from clfw.testing import Interrupt, TinyStream, assert_same_state, fit, snapshot

__all__ = [
    "ROOT",
    "Interrupt",
    "KillAt",
    "KillAtStep",
    "L2Plugin",
    "RecordEvents",
    "SaveFinalState",
    "ScaledLoss",
    "TinyStream",
    "assert_same_state",
    "fit",
    "free_port",
    "run_script",
    "snapshot",
    "tiny_vit",
    "write_cifar",
]


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
            checkpoint file); or ``"sigusr1"``: sends SIGUSR1 (SLURM's preemption warning) after optimizer step
            ``step`` instead of killing, so that :class:`~clfw.preemption.Preemption` checkpoints and stops the run.
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
        if self.point == "sigusr1" and trainer.global_step == self.step:  # SLURM's warning: the run must stop itself
            os.kill(os.getpid(), signal.SIGUSR1)
