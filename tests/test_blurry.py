"""Blurry-M and i-Blurry-N-M boundaries (Koh et al., ICLR 2022), checked sample by sample on tasks whose inputs are
the samples' ids."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from clfw.data import Task, TaskData, blurry_tasks
from clfw.testing import TinyStream

PER_CLASS = 50


def split_stream(n_tasks: int = 5, per_task: int = 2) -> list[Task]:
    """``n_tasks`` tasks of ``per_task`` classes, ``PER_CLASS`` training samples each; input = the sample's id."""
    tasks = []
    for t in range(n_tasks):
        classes = tuple(range(t * per_task, (t + 1) * per_task))
        y = torch.tensor(classes).repeat_interleave(PER_CLASS)
        ids = torch.arange(len(y)) + t * len(y)
        test = TaskData.for_task(torch.zeros(len(classes), 1), torch.tensor(classes), t)
        tasks.append(Task(t, classes, TaskData.for_task(ids.view(-1, 1), y, t), test))
    return tasks


def where(tasks: list[Task]) -> dict[int, Counter[int]]:
    """For each class, how many of its training samples each task holds."""
    out: dict[int, Counter[int]] = {}
    for task in tasks:
        for c, n in Counter(task.train.y.tolist()).items():
            out.setdefault(c, Counter())[task.id] = n
    return out


def test_iblurry_50_10_keeps_half_the_classes_disjoint_and_mixes_10_percent_of_the_others() -> None:
    before = split_stream()
    after = blurry_tasks(before, blurry_m=10, iblurry_n=50, seed=0)
    # no sample lost, duplicated or altered; task sizes kept; each task's samples numbered 0..n-1 with its id
    ids = torch.cat([t.train.x for t in after]).flatten().sort().values
    assert torch.equal(ids, torch.arange(5 * 2 * PER_CLASS))
    for t, task in enumerate(after):
        assert len(task.train) == len(before[t].train) and task.test is before[t].test
        assert torch.equal(task.train.index, torch.arange(len(task.train))) and set(task.train.task.tolist()) == {t}
        assert torch.equal(task.train.y, task.train.x.flatten() // PER_CLASS)  # labels travel with their samples
    spread = where(after)
    disjoint = [c for c, tasks in spread.items() if len(tasks) == 1]
    blurry = [c for c, tasks in spread.items() if len(tasks) > 1]
    assert len(disjoint) == 5 and len(blurry) == 5
    for t in range(5):  # one disjoint and one blurry class at home in each task
        home = set(before[t].classes)
        assert len(home & set(disjoint)) == 1
        (own,) = home & set(blurry)
        # 10% of the home task's 50 blurry samples went into the pool; some may come back
        assert 45 <= spread[own][t] < PER_CLASS
        assert sum(n for c in blurry if c != own for n in [spread[c][t]]) == PER_CLASS - spread[own][t]
        assert after[t].classes[:2] == before[t].classes
        assert set(after[t].classes) == set(after[t].train.y.tolist())
    for c in disjoint:
        assert spread[c] == Counter({c // 2: PER_CLASS})


def test_blurry_m_mixes_every_class_and_is_seeded() -> None:
    after = blurry_tasks(split_stream(), blurry_m=30, seed=1)
    spread = where(after)
    assert all(len(tasks) > 1 for tasks in spread.values())
    moved = sum(n for c, tasks in spread.items() for t, n in tasks.items() if t != c // 2)
    assert 0.3 * 500 * 0.6 < moved <= 0.3 * 500  # a pooled sample leaves its task with probability 4/5
    again = blurry_tasks(split_stream(), blurry_m=30, seed=1)
    other = blurry_tasks(split_stream(), blurry_m=30, seed=2)
    assert all(torch.equal(a.train.x, b.train.x) for a, b in zip(after, again, strict=True))
    assert not all(torch.equal(a.train.x, b.train.x) for a, b in zip(after, other, strict=True))


def test_no_blur_keeps_the_stream_and_bad_percentages_are_refused() -> None:
    before = split_stream()
    for m, n in ((0, 50), (10, 100)):
        assert all(a is b for a, b in zip(blurry_tasks(before, m, n), before, strict=True))
    with pytest.raises(ValueError, match=r"blurry_m must be a percentage in \[0, 100\], got 150"):
        TinyStream(blurry_m=150)
    with pytest.raises(ValueError, match="blurry task boundaries are class-incremental"):
        TinyStream(blurry_m=10, scenario="domain")


def test_a_blurry_stream_is_seeded_by_the_data_seed() -> None:
    def train_y(seed: int) -> list[list[int]]:  # without blurring, the labels' order does not depend on the seed
        return [t.train.y.tolist() for t in TinyStream(n_tasks=2, seed=seed, blurry_m=50).stream.tasks]

    assert train_y(0) == train_y(0) != train_y(1)
    plain = TinyStream(n_tasks=2).stream
    blurred = TinyStream(n_tasks=2, blurry_m=50).stream
    assert [t.classes for t in plain.tasks] == [(0, 1), (2, 3)]
    assert [set(t.classes) for t in blurred.tasks] == [{0, 1, 2, 3}] * 2
    assert [len(t.train) for t in blurred.tasks] == [len(t.train) for t in plain.tasks]
