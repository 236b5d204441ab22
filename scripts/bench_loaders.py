"""Samples per second of each stream's training loader, in memory and lazy (decoded from disk), on this machine.

    python scripts/bench_loaders.py [--rounds 3] [--images 320]

Writes generated pictures at realistic sizes into a temporary folder, in each folder stream's layout: an image folder
of 32 x 32 JPEGs read at 32 (CIFAR-sized), one of 320 x 400 JPEGs read at 224 (ImageNet-R-sized), Tiny-ImageNet's
layout (64 x 64) and CUB-200's (320 x 400, training images stored at 300, test at 224). Streams without the lazy path
(no ``in_memory`` argument) are timed in memory only. Each variant (stream, path, ``num_workers``) runs
in a fresh interpreter, which builds the stream (``setup s``: the in-memory path decodes every image there) and then
draws 4 epochs of its first task's training loader, augmentation included, as the Trainer would: samples/s is that of
epochs 2-4, and ``epoch 1 s`` the first epoch's time, which includes starting the workers (kept for the task). Variants
are interleaved over the rounds, so a busy machine slows all of them alike; the table gives the median samples/s, the
spread over rounds (min-max) and the ratio to the in-memory loader of the same stream measured in the same round.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

EPOCHS = 4
BATCH = 32

#: name -> (stream, folder, stream arguments); each is run in memory with 0 workers and lazily with 0 and 2 workers
STREAMS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "ImageFolderStream 32 px": ("ImageFolderStream", "folder32", {"image_size": 32}),
    "SplitImageNetR 224 px": ("SplitImageNetR", "folder224", {"image_size": 224}),
    "SplitTinyImageNet 64 px": ("SplitTinyImageNet", "tiny", {}),
    "SplitCUB200 224 px": ("SplitCUB200", "cub", {}),
}
VARIANTS = [("in memory", True, 0), ("lazy", False, 0), ("lazy", False, 2)]
CLASSES = 8


def picture(g: np.random.Generator, shape: tuple[int, int]) -> Any:
    """A smooth random colour field (upsampled noise) with some grain: it compresses and decodes like a photograph
    rather than like white noise."""
    from PIL import Image

    coarse = Image.fromarray(g.integers(0, 255, (6, 8, 3), dtype=np.uint8)).resize(shape[::-1], Image.BILINEAR)
    pixels = np.clip(np.asarray(coarse, dtype=np.float64) + g.normal(0, 8, (*shape, 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels)


def write_folder(root: Path, n: int, shape: tuple[int, int]) -> None:
    """``n`` JPEG pictures in ``CLASSES`` folders, ``root/<class>/<image>``."""
    g = np.random.default_rng(0)
    for i in range(n):
        folder = root / f"n{i % CLASSES:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        picture(g, shape).save(folder / f"{i:05d}.JPEG", quality=90)


def write_tiny_imagenet(root: Path, n: int) -> None:
    """Tiny-ImageNet's layout: ``wnids.txt``, ``train/<wnid>/images/*.JPEG``, ``val/images`` + annotations; 4/5 of
    the ``n`` 64 x 64 pictures train, the rest validate."""
    g, wnids = np.random.default_rng(1), [f"n{c:08d}" for c in range(CLASSES)]
    (root / "val" / "images").mkdir(parents=True)
    (root / "wnids.txt").write_text("".join(f"{w}\n" for w in wnids))
    lines = []
    for i in range(n):
        wnid = wnids[i % CLASSES]
        if i % 5:
            (root / "train" / wnid / "images").mkdir(parents=True, exist_ok=True)
            picture(g, (64, 64)).save(root / "train" / wnid / "images" / f"{wnid}_{i}.JPEG", quality=90)
        else:
            picture(g, (64, 64)).save(root / "val" / "images" / f"val_{i}.JPEG", quality=90)
            lines.append(f"val_{i}.JPEG\t{wnid}\t0\t0\t63\t63\n")
    (root / "val" / "val_annotations.txt").write_text("".join(lines))


def write_cub(root: Path, n: int) -> None:
    """CUB-200-2011's layout: ``images/<class>/*.jpg`` and its four split files; half of the ``n`` 320 x 400
    pictures train."""
    g = np.random.default_rng(2)
    images, labels, split = [], [], []
    for i in range(1, n + 1):
        c = (i - 1) % CLASSES + 1
        path = f"{c:03d}.bird_{c}/bird_{i}.jpg"
        (root / "images" / path).parent.mkdir(parents=True, exist_ok=True)
        picture(g, (320, 400)).save(root / "images" / path, quality=90)
        images.append(f"{i} {path}\n")
        labels.append(f"{i} {c}\n")
        split.append(f"{i} {int(i % 2 == 0)}\n")
    (root / "images.txt").write_text("".join(images))
    (root / "image_class_labels.txt").write_text("".join(labels))
    (root / "train_test_split.txt").write_text("".join(split))
    (root / "classes.txt").write_text("".join(f"{c} {c:03d}.bird_{c}\n" for c in range(1, CLASSES + 1)))


def has_lazy_path(stream: str) -> bool:
    """Whether the stream (or a base class it passes its arguments to) takes ``in_memory``."""
    import clfw.benchmarks

    classes = getattr(clfw.benchmarks, stream).__mro__
    return any("in_memory" in inspect.signature(c.__init__).parameters for c in classes if "__init__" in vars(c))


def measure(stream: str, root: str, in_memory: bool, workers: int, kwargs: dict[str, Any]) -> dict[str, float]:
    """One variant, in this interpreter: setup time, first epoch's time, throughput of the later epochs."""
    import pytorch_lightning as pl
    import torch

    import clfw.benchmarks

    torch.set_num_threads(1)
    start = time.perf_counter()
    if not in_memory:
        kwargs = {**kwargs, "in_memory": False}
    dm = getattr(clfw.benchmarks, stream)(
        root=root, n_tasks=1, batch_size=BATCH, epochs_per_task=EPOCHS, num_workers=workers, **kwargs
    )
    dm.stream  # noqa: B018
    setup = time.perf_counter() - start
    samples, start, first = 0, time.perf_counter(), 0.0
    for epoch in range(EPOCHS):
        if epoch == 1:
            samples, first = 0, time.perf_counter() - start
            start = time.perf_counter()
        dm.trainer = SimpleNamespace(  # what train_dataloader reads of a Trainer
            current_epoch=epoch,
            global_rank=0,
            world_size=1,
            lightning_module=SimpleNamespace(training_data="current"),
            accelerator=pl.accelerators.CPUAccelerator(),
        )
        for batch in dm.train_dataloader():
            samples += len(batch.y)
    rate = samples / (time.perf_counter() - start)
    dm.teardown("fit")
    return {"setup_s": setup, "first_epoch_s": first, "samples_per_s": rate}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--images", type=int, default=320, help="images per folder")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: JSON of one variant, run in this interpreter
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(**json.loads(args.one))))
        return
    with tempfile.TemporaryDirectory(prefix="clfw-bench-loaders-") as tmp:
        write_folder(Path(tmp) / "folder32", args.images, (32, 32))
        write_folder(Path(tmp) / "folder224", args.images, (320, 400))
        write_tiny_imagenet(Path(tmp) / "tiny", args.images)
        write_cub(Path(tmp) / "cub", args.images)
        variants = {name: VARIANTS if has_lazy_path(s[0]) else VARIANTS[:1] for name, s in STREAMS.items()}
        results: dict[tuple[str, str, int], list[dict[str, float]]] = {}
        for r in range(args.rounds):
            for name, (stream, folder, kwargs) in STREAMS.items():
                for label, in_memory, workers in variants[name]:
                    spec = {"stream": stream, "root": os.path.join(tmp, folder), "in_memory": in_memory}
                    spec.update(workers=workers, kwargs=kwargs)
                    out = subprocess.run(
                        [sys.executable, __file__, "--one", json.dumps(spec)], capture_output=True, text=True
                    )
                    if out.returncode:
                        raise SystemExit(f"{name} {label} {workers} failed:\n{out.stderr}")
                    results.setdefault((name, label, workers), []).append(json.loads(out.stdout.splitlines()[-1]))
            print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
    print(
        f"{args.images} images per folder, batch {BATCH}, {os.cpu_count()} CPUs, {args.rounds} rounds: median (min-max)"
    )
    print("| stream | path | workers | samples/s | vs in memory | setup s | epoch 1 s |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name in STREAMS:
        base = [m["samples_per_s"] for m in results[name, "in memory", 0]]
        for label, _, workers in variants[name]:
            runs = results[name, label, workers]
            rates = [m["samples_per_s"] for m in runs]
            ratios = [x / b for x, b in zip(rates, base, strict=True)]
            setup = statistics.median(m["setup_s"] for m in runs)
            first = statistics.median(m["first_epoch_s"] for m in runs)
            print(
                f"| {name} | {label} | {workers} | {statistics.median(rates):.0f} ({min(rates):.0f}-{max(rates):.0f})"
                f" | {statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})"
                f" | {setup:.2f} | {first:.2f} |"
            )


if __name__ == "__main__":
    main()
