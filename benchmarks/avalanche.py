"""Any Avalanche benchmark as a clfw stream: its ``train_stream`` and ``test_stream`` of experiences, task labels
included, converted into in-memory tasks.

avalanche-lib is an optional extra (``pip install "clfw[avalanche]"``), imported only by this module, when a stream is
made.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor
from typing_extensions import override

from clfw import ContinualDataModule, Normalize, Stream, Task, TaskData
from clfw.data import BatchTransform, ScenarioName, stratified_split

BenchmarkFactory = Callable[..., Any]


def _require_avalanche() -> None:
    """Imports avalanche-lib, or raises an ``ImportError`` naming the extra that installs it."""
    try:
        with warnings.catch_warnings():  # qpsolvers, imported by Avalanche, warns when it finds no QP solver
            warnings.filterwarnings("ignore", message="no QP solver found")
            importlib.import_module("avalanche")
    except ImportError as err:
        raise ImportError(
            f'AvalancheStream needs avalanche-lib ({err}); install it with: pip install "clfw[avalanche]"',
            name="avalanche",
        ) from err


def resolve_factory(path: str) -> BenchmarkFactory:
    """The callable named by a dotted path (``avalanche.benchmarks.classic.SplitMNIST``, ``mylab.data.make_bm``)."""
    parts = path.split(".")
    if len(parts) < 2 or not all(p.isidentifier() for p in parts):
        raise ValueError(f"benchmark must be a dotted path to a callable (module.name), got {path!r}")
    for cut in range(len(parts) - 1, 0, -1):  # the longest importable module prefix, then attributes
        module_name = ".".join(parts[:cut])
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="no QP solver found")
                obj: Any = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name is not None and (module_name == err.name or module_name.startswith(err.name + ".")):
                continue  # not a module: the next part is an attribute of a shorter prefix
            raise  # the module exists but one of its own imports is missing
        try:
            for attr in parts[cut:]:
                obj = getattr(obj, attr)
        except AttributeError:
            raise ValueError(f"benchmark {path!r}: module {module_name!r} has no attribute {attr!r}") from None
        if not callable(obj):
            raise ValueError(f"benchmark {path!r} is a {type(obj).__name__}, expected a callable building a benchmark")
        return obj
    raise ValueError(f"benchmark {path!r} cannot be imported: no module {parts[0]!r}")


def _as_tensor(x: Any) -> Tensor:
    """One input as a tensor: tensors as they are, PIL images as ``uint8 [C, H, W]``, arrays through ``torch``."""
    if isinstance(x, Tensor):
        return x
    if hasattr(x, "getbands"):  # a PIL image (Avalanche's eval transform has no ToTensor)
        from torchvision.transforms.functional import pil_to_tensor

        return pil_to_tensor(x)
    return torch.as_tensor(x)


def experience_tensors(experience: Any, num_workers: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """``(x, y, task_label)`` of every sample of an Avalanche experience, in the dataset's order.

    Samples are read through the dataset's ``eval`` transform group (no augmentation) when it has one. Each item is
    ``(x, y)`` or ``(x, y, task_label, ...)``; without a task label in the item, the experience's single task label
    (or 0) is used.
    """
    dataset = experience.dataset
    if hasattr(dataset, "eval"):
        dataset = dataset.eval()
    labels = list(getattr(experience, "task_labels", None) or [0])
    default_task = int(labels[0]) if len(labels) == 1 else None

    def collate(items: list[Any]) -> tuple[Tensor, Tensor, Tensor]:
        xs, ys, ts = [], [], []
        for item in items:
            if not isinstance(item, Sequence) or len(item) < 2:
                raise ValueError(
                    f"an Avalanche classification item is (x, y[, task_label]), got a {type(item).__name__}"
                )
            xs.append(_as_tensor(item[0]))
            ys.append(int(item[1]))
            if len(item) > 2:
                ts.append(int(item[2]))
            elif default_task is not None:
                ts.append(default_task)
            else:
                raise ValueError(f"an experience with task labels {labels} gives items without a task label")
        return torch.stack(xs), torch.tensor(ys, dtype=torch.long), torch.tensor(ts, dtype=torch.long)

    loader = torch.utils.data.DataLoader(
        dataset, batch_size=256, shuffle=False, num_workers=num_workers, collate_fn=collate
    )
    parts = list(loader)
    if not parts:
        return torch.empty(0), torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long)
    return tuple(torch.cat(p) for p in zip(*parts, strict=True))  # type: ignore[return-value]


class AvalancheStream(ContinualDataModule):
    """Any Avalanche benchmark (Lomonaco et al. 2021, "Avalanche: an End-to-End Library for Continual Learning") as a
    clfw stream: experience ``i`` of its ``train_stream`` becomes task ``i``, with the test data of experience ``i`` of
    its ``test_stream``, or, when the test stream is a single experience (Avalanche's new-instances benchmarks), the
    whole test set for every task.

    What is converted, and how:

    - **Inputs** are what Avalanche's *eval* transform group gives for every sample, training samples included, held
      in memory: classic benchmarks (``ToTensor`` + ``Normalize``) give normalised ``float32`` tensors, which reach
      the model unchanged; ``uint8`` inputs (PIL images, raw tensors) are scaled to ``[0, 1]``. Avalanche's training
      augmentation is not applied (it draws per sample from unseeded generators, outside clfw's seeded loader); the
      whole data set must fit in memory as the eval transform outputs it.
    - **Labels** are Avalanche's class ids as they are (after its ``class_ids_from_zero_*`` remapping, if asked for);
      the head covers ``num_classes`` = 1 + the largest id unless given. A task's ``classes`` are the labels its
      training samples hold (Avalanche's ``classes_in_this_experience``).
    - **Task labels**: clfw's task id is the experience's position. When the benchmark has task labels (one per
      experience, distinct, the same on the matching test experience), the scenario is ``"task"``.
    - **Scenario** (unless given): ``"task"`` as above; else ``"class"`` when the experiences' classes are disjoint;
      else ``"domain"`` (classes recur: Avalanche's new-instances benchmarks). ``"task"`` can also be asked for on a
      benchmark without task labels (the experience's position is the label), but not on one whose test stream is a
      single experience, nor one whose task labels do not identify the experiences.

    ``num_classes`` and ``n_tasks`` cannot be known without building the benchmark: the stream builds and converts it
    the first time either, the scenario or the stream is read (the CLI reads ``num_classes`` right after making the
    stream, to size the model's head). Avalanche's classic benchmarks load, and download into their
    ``dataset_root``, their data set when built; under DDP every process builds it, so download the data first (one
    process).

    Args:
        benchmark: What builds the benchmark: a dotted path to a callable (a classic benchmark such as
            ``avalanche.benchmarks.classic.SplitMNIST``, or a factory of your own), or, from Python, the callable.
            Required: there is no default benchmark.
        benchmark_args: Keyword arguments of that callable (e.g. ``{"n_experiences": 5, "seed": 0}``).
        scenario: ``"class"``, ``"task"`` or ``"domain"``; ``None`` infers it from the benchmark (above).
        num_classes: Head size; ``None`` takes 1 + the largest class id in the benchmark.
        **kwargs: Stream arguments of :class:`~clfw.ContinualDataModule` (seed, batch sizes, epochs, ``val_fraction``
            ...; ``num_workers`` also reads the benchmark's samples in parallel when it is converted).
    """

    def __init__(
        self,
        benchmark: str | BenchmarkFactory,
        benchmark_args: dict[str, Any] | None = None,
        scenario: ScenarioName | None = None,
        num_classes: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(scenario="class" if scenario is None else scenario, **kwargs)
        self._scenario: ScenarioName | None = scenario
        if num_classes is not None and num_classes <= 0:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        if benchmark_args is not None and not isinstance(benchmark_args, dict):
            raise ValueError(f"benchmark_args must be a dict of keyword arguments, got {benchmark_args!r}")
        _require_avalanche()
        if isinstance(benchmark, str):
            self.factory = resolve_factory(benchmark)
        elif callable(benchmark):
            self.factory = benchmark
        else:
            raise ValueError(f"benchmark must be a dotted path or a callable, got {type(benchmark).__name__}")
        self.benchmark = benchmark
        self.benchmark_args = dict(benchmark_args or {})
        self._num_classes = num_classes
        self._converted: _Converted | None = None

    # ------------------------------------------------------------------------------------ known after conversion
    @property  # type: ignore[override]
    def scenario(self) -> ScenarioName:
        """The given scenario, else the one inferred from the benchmark (building it)."""
        if self._scenario is None:
            self._scenario = self.converted.inferred_scenario
        return self._scenario

    @scenario.setter
    def scenario(self, value: ScenarioName | None) -> None:
        self._scenario = value

    @property
    @override
    def num_classes(self) -> int:
        if self._num_classes is None:
            self._num_classes = self.converted.num_classes
        return self._num_classes

    @property
    @override
    def n_tasks(self) -> int:
        return len(self.converted.train)

    @property
    def converted(self) -> _Converted:
        """The benchmark's experiences as tensors (built and converted on first use)."""
        if self._converted is None:
            self._converted = self._convert()
        return self._converted

    def _build(self) -> Any:
        name = self.benchmark if isinstance(self.benchmark, str) else getattr(self.factory, "__name__", "?")
        try:
            bm = self.factory(**self.benchmark_args)
        except TypeError as err:
            raise ValueError(f"benchmark_args {self.benchmark_args} do not fit benchmark {name}: {err}") from err
        except (OSError, RuntimeError) as err:  # e.g. a data set neither under dataset_root nor downloadable
            message = " ".join(str(err).split())[:300]
            raise ValueError(
                f"benchmark {name} could not be built with benchmark_args {self.benchmark_args}: {message} "
                "(classic Avalanche benchmarks read their data from dataset_root, downloading it there on first use)"
            ) from err
        for attr in ("train_stream", "test_stream"):
            if not hasattr(bm, attr):
                raise ValueError(
                    f"benchmark built a {type(bm).__name__} without {attr}; expected an Avalanche benchmark (a "
                    "scenario with train_stream and test_stream)"
                )
        return bm

    def _convert(self) -> _Converted:
        bm = self._build()
        train = [experience_tensors(exp, self.num_workers) for exp in bm.train_stream]
        test = [experience_tensors(exp, self.num_workers) for exp in bm.test_stream]
        if not train:
            raise ValueError("the benchmark's train_stream has no experiences")
        if len(test) not in (1, len(train)):
            raise ValueError(
                f"the benchmark has {len(train)} training experiences but {len(test)} test experiences; expected as "
                f"many, or one test experience shared by every task"
            )
        order = getattr(bm, "classes_order", None)  # the order nc_benchmark dealt the classes in
        return _Converted(train, test, [int(c) for c in order] if order is not None else None)

    # ------------------------------------------------------------------------------------------------ the stream
    @override
    def build_stream(self) -> Stream:
        conv = self.converted
        scenario, n_classes = self.scenario, self.num_classes
        if scenario == "task" and not self.task_boundaries_visible:
            raise ValueError(
                "task_boundaries_visible=False hides task ids from training, which the 'task' scenario needs (the "
                "benchmark's task labels make it 'task' unless scenario is given); pass scenario 'class' or 'domain'"
            )
        if scenario == "task":
            problem = conv.task_label_problem()
            if problem:
                raise ValueError(f"scenario 'task' needs one test experience per task with its task label: {problem}")
        largest = max((int(y.max()) for _, y, _ in (*conv.train, *conv.test) if len(y)), default=-1)
        if largest >= n_classes:
            raise ValueError(f"num_classes={n_classes}, but the benchmark holds class id {largest}")
        shape = tuple(conv.train[0][0].shape[1:])
        dtype = conv.train[0][0].dtype
        for name, split in (("train", conv.train), ("test", conv.test)):
            for i, (x, _, _) in enumerate(split):
                if len(x) and (tuple(x.shape[1:]) != shape or x.dtype != dtype):
                    raise ValueError(
                        f"{name} experience {i} has inputs {x.dtype} {tuple(x.shape[1:])}, but experience 0 has "
                        f"{dtype} {shape}; every input must have one shape and type"
                    )
        if dtype != torch.uint8 and not dtype.is_floating_point:
            raise ValueError(f"the benchmark's inputs are {dtype}; expected float tensors or uint8 images")
        g = torch.Generator().manual_seed(self.seed)
        tasks = []
        for t, (x, y, _) in enumerate(conv.train):
            classes = tuple(sorted(int(c) for c in torch.unique(y)))
            val = None
            if self.val_fraction > 0:
                keep, held = stratified_split(y, self.val_fraction, g)
                if len(held) == 0 or len(keep) == 0:
                    raise ValueError(
                        f"val_fraction={self.val_fraction} leaves task {t} with an empty train or validation split"
                    )
                val = TaskData.for_task(x[held], y[held], t)
                x, y = x[keep], y[keep]
            test_x, test_y, _ = conv.test[t if len(conv.test) > 1 else 0]
            tasks.append(Task(t, classes, TaskData.for_task(x, y, t), TaskData.for_task(test_x, test_y, t), val))
        if scenario != "domain":
            self.class_order = conv.class_order([task.classes for task in tasks])
        return Stream(tasks, scenario, n_classes, shape, self.task_boundaries_visible)

    @override
    def eval_transform(self) -> BatchTransform | None:
        """``uint8`` inputs are scaled to ``[0, 1]``; float inputs (Avalanche's transforms applied) stay as they are."""
        return Normalize() if self.converted.train[0][0].dtype == torch.uint8 else None


class _Converted:
    """An Avalanche benchmark's experiences as ``(x, y, task_label)`` tensors, and what they imply."""

    def __init__(
        self,
        train: list[tuple[Tensor, Tensor, Tensor]],
        test: list[tuple[Tensor, Tensor, Tensor]],
        classes_order: list[int] | None = None,
    ) -> None:
        self.train, self.test, self.classes_order = train, test, classes_order

    def class_order(self, task_classes: list[tuple[int, ...]]) -> list[int] | None:
        """The order the classes were dealt to tasks: the benchmark's ``classes_order`` where it matches the tasks,
        else each task's classes in turn; ``None`` when classes recur across tasks."""
        dealt = [c for classes in task_classes for c in classes]
        if len(set(dealt)) != len(dealt):
            return None
        order = self.classes_order
        if order is not None and len(order) == len(dealt):
            cuts = torch.tensor([0, *[len(c) for c in task_classes]]).cumsum(0).tolist()
            if all(set(order[a:b]) == set(c) for a, b, c in zip(cuts[:-1], cuts[1:], task_classes, strict=True)):
                return order
        return dealt

    @property
    def num_classes(self) -> int:
        return 1 + max((int(y.max()) for _, y, _ in (*self.train, *self.test) if len(y)), default=0)

    def task_labels(self, split: str) -> list[list[int]]:
        """The task labels each experience of ``split`` holds."""
        return [sorted(int(v) for v in torch.unique(t)) for _, _, t in getattr(self, split)]

    def task_label_problem(self) -> str | None:
        """Why the experiences cannot be tasks of task-IL (``None`` when they can)."""
        train, test = self.task_labels("train"), self.task_labels("test")
        if len(self.test) != len(self.train):
            return f"the test stream is one experience shared by the {len(self.train)} training experiences"
        if len({tuple(labels) for labels in train}) == 1 and len(train[0]) == 1:
            return None  # no task labels: the experience's position is the label
        if any(len(labels) != 1 for labels in train) or len({labels[0] for labels in train}) != len(train):
            return f"the training experiences' task labels {train} are not one distinct label per experience"
        if test != train:
            return f"the test experiences' task labels {test} differ from the training experiences' {train}"
        return None

    @property
    def inferred_scenario(self) -> ScenarioName:
        train = self.task_labels("train")
        labelled = len(self.train) > 1 and len({tuple(labels) for labels in train}) > 1
        if labelled and self.task_label_problem() is None:
            return "task"
        seen: set[int] = set()
        for _, y, _ in self.train:
            classes = {int(c) for c in torch.unique(y)}
            if classes & seen:
                return "domain"
            seen |= classes
        return "class"
