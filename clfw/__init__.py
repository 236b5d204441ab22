"""clfw: continual learning on PyTorch Lightning."""

from clfw.callbacks import ContinualCallback, ContinualProgressBar
from clfw.continual_eval import ContinualEvaluation
from clfw.data import Batch, Normalize, RandomCropFlip, Resize, Stream, Task, TaskData
from clfw.datamodule import ContinualDataModule
from clfw.evaluation import AccuracyMatrix, TaskAccuracy, evaluate
from clfw.module import ContinualModule
from clfw.plugins import Plugin
from clfw.tracking import WandbTracking

__all__ = [
    "AccuracyMatrix",
    "Batch",
    "ContinualCallback",
    "ContinualDataModule",
    "ContinualEvaluation",
    "ContinualModule",
    "ContinualProgressBar",
    "Normalize",
    "Plugin",
    "RandomCropFlip",
    "Resize",
    "Stream",
    "Task",
    "TaskAccuracy",
    "TaskData",
    "WandbTracking",
    "evaluate",
]
__version__ = "0.1.0"
