"""Reservoir buffer: Vitter's algorithm R (statistically), O(batch) operations, checkpoints."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from clfw.buffers import ClassBalancedBuffer, Memory, ReservoirBuffer, herding


def test_fills_in_order_then_keeps_each_sample_with_probability_m_over_n() -> None:
    M, N, trials = 10, 15, 4000
    counts = torch.zeros(N)
    for trial in range(trials):
        buf = ReservoirBuffer(capacity=M, seed=trial)
        for start in range(0, N, 4):  # uneven batches: 4, 4, 4, 3
            buf.add(id=torch.arange(start, min(start + 4, N)))
        assert len(buf) == M and len(set(buf.id.tolist())) == M
        counts[buf.id] += 1
    p = counts / trials
    sd = math.sqrt((M / N) * (1 - M / N) / trials)
    assert (p - M / N).abs().max() < 4.5 * sd, p
    # the classic bug (j drawn from [0, n-1)) keeps the last sample with probability M/(N-1) = 0.714, not 0.667
    assert abs(p[-1] - M / N) < 4.5 * sd and abs(p[-1] - M / (N - 1)) > 4.5 * sd


def test_a_batch_is_inserted_as_algorithm_r_one_sample_at_a_time() -> None:
    """Batched insertion equals the sequential algorithm driven by the same draws: the n-th sample goes to slot n - 1
    while there is room, then to slot floor(u n) if below capacity, a later sample of the batch overwriting an earlier
    one in the same slot."""
    from clfw.seeding import derived_generator

    capacity, stored, seen = 6, [None] * 6, 0
    buf = ReservoirBuffer(capacity=capacity, seed=3)
    for start in range(0, 60, 10):
        ids = torch.arange(start, start + 10)
        u = torch.rand(10, generator=derived_generator(3, seen), dtype=torch.float64).tolist()
        for i, sample in enumerate(ids.tolist()):
            seen += 1
            j = seen - 1 if seen <= capacity else int(u[i] * seen)
            if j < capacity:
                stored[j] = sample
        buf.add(id=ids)
        assert buf.id.tolist() == stored
    assert len(set(stored)) == capacity


def test_first_capacity_samples_fill_slots_in_order() -> None:
    buf = ReservoirBuffer(capacity=5)
    written = buf.add(x=torch.arange(3).view(3, 1).to(torch.uint8), y=torch.tensor([0, 1, 2]))
    assert written.tolist() == [0, 1, 2] and len(buf) == 3
    assert buf.x.dtype == torch.uint8 and buf.x[:3].flatten().tolist() == [0, 1, 2]


def test_sampling_is_distinct_and_uniform() -> None:
    buf = ReservoirBuffer(capacity=20)
    buf.add(id=torch.arange(20))
    hits = torch.zeros(20)
    for _ in range(3000):
        s = buf.sample(5)["id"]
        assert len(set(s.tolist())) == 5
        hits[s] += 1
    p = hits / 3000
    assert (p - 0.25).abs().max() < 5 * math.sqrt(0.25 * 0.75 / 3000)


def test_checkpoint_round_trip_continues_identically() -> None:
    a = ReservoirBuffer(capacity=8, seed=3)
    a.add(x=torch.randint(0, 255, (12, 2), dtype=torch.uint8), y=torch.arange(12))
    a.sample(4)
    b = ReservoirBuffer(capacity=8, seed=3)
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.x, b.x) and b.fields == ["x", "y"] and int(b.seen) == 12
    more = dict(x=torch.randint(0, 255, (9, 2), dtype=torch.uint8), y=torch.arange(12, 21))
    assert torch.equal(a.add(**more), b.add(**more)) and torch.equal(a.y, b.y)
    assert torch.equal(a.sample(4)["y"], b.sample(4)["y"])


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="capacity"):
        ReservoirBuffer(capacity=0)
    buf = ReservoirBuffer(capacity=4)
    with pytest.raises(ValueError, match="empty buffer"):
        buf.sample(2)
    with pytest.raises(ValueError, match="same number of samples"):
        buf.add(x=torch.zeros(3, 1), y=torch.zeros(2))
    buf.add(x=torch.zeros(3, 1), y=torch.zeros(3))
    with pytest.raises(ValueError, match="stores fields"):
        buf.add(x=torch.zeros(3, 1))


@pytest.mark.slow
@pytest.mark.xdist_group("ddp")
def test_ddp_ranks_hold_the_buffer_of_a_single_reservoir_over_the_gathered_stream(ddp_suite: Path) -> None:
    r0, r1 = (torch.load(ddp_suite / "buffer" / f"buffer{r}.pt") for r in (0, 1))
    for key in r0["state"]:
        assert torch.equal(r0["state"][key], r1["state"][key]), key
    held = set(r0["state"]["id"].tolist())
    assert any(i % 2 == 0 for i in held) and any(i % 2 == 1 for i in held), "samples from both ranks' shards"
    # a single process offered the gathered stream (rank 0's batch, then rank 1's, step by step) holds the same
    single = ReservoirBuffer(capacity=16, seed=5)
    stream = torch.arange(200)
    for i in range(0, 100, 10):
        ids = torch.cat([stream[0::2][i : i + 10], stream[1::2][i : i + 10]])
        single.add(id=ids, x=(ids % 256).to(torch.uint8).view(-1, 1).repeat(1, 3))
    assert torch.equal(single.id, r0["state"]["id"]) and torch.equal(single.x, r0["state"]["x"])
    # each rank draws its own replay minibatch
    assert not torch.equal(r0["replay"], r1["replay"])
    # the class-balanced memory too: same on both ranks, the one of a single process over the gathered stream
    balanced = ClassBalancedBuffer(capacity=12, seed=5)
    for i in range(0, 100, 10):
        ids = torch.cat([stream[0::2][i : i + 10], stream[1::2][i : i + 10]])
        balanced.add(id=ids, y=(ids * ids) % 7)
    for key, value in balanced.state_dict().items():
        assert key == "_extra_state" or torch.equal(value, r0["balanced"][key]), key
        assert key == "_extra_state" or torch.equal(value, r1["balanced"][key]), key


def greedy_class_counts(labels: list[int], capacity: int) -> dict[int, int]:
    """GDumb's sampler written out sample by sample: how many samples of each class it keeps."""
    counts: dict[int, int] = {}
    for c in labels:
        counts.setdefault(c, 0)
        if sum(counts.values()) < capacity:
            counts[c] += 1
        elif counts[c] < capacity / len(counts):
            largest = max(counts, key=lambda k: (counts[k], -k))
            counts[largest] -= 1
            counts[c] += 1
    return {c: n for c, n in sorted(counts.items()) if n}


def test_class_balanced_buffer_follows_gdumbs_greedy_rule() -> None:
    g = torch.Generator().manual_seed(0)
    # a stream where class 0 dominates early and class 3 arrives last
    labels = torch.cat(
        [torch.zeros(30, dtype=torch.long), torch.randint(0, 3, (40,), generator=g), torch.full((15,), 3)]
    )
    buf = ClassBalancedBuffer(capacity=12, seed=1)
    for start in range(0, len(labels), 8):
        y = labels[start : start + 8]
        buf.add(x=torch.arange(start, start + len(y)).to(torch.uint8).view(-1, 1), y=y)
    expected = greedy_class_counts(labels.tolist(), 12)
    assert buf.class_counts() == expected == {0: 3, 1: 3, 2: 3, 3: 3}
    stored = buf.x[: len(buf)].flatten().long()
    assert torch.equal(labels[stored], buf.y[: len(buf)]), "each slot holds a sample with its own label"
    assert len(set(stored.tolist())) == 12


def test_class_balanced_buffer_round_trip() -> None:
    a = ClassBalancedBuffer(capacity=6, seed=2)
    a.add(x=torch.arange(10).view(-1, 1), y=torch.tensor([0, 0, 0, 0, 1, 1, 0, 1, 0, 0]))
    b = ClassBalancedBuffer(capacity=6, seed=2)
    b.load_state_dict(a.state_dict())
    assert b.class_counts() == a.class_counts() and b.classes == {0, 1}
    more = dict(x=torch.arange(10, 16).view(-1, 1), y=torch.tensor([2, 2, 1, 2, 2, 2]))
    assert torch.equal(a.add(**more), b.add(**more)) and torch.equal(a.x, b.x)
    assert a.class_counts() == {0: 2, 1: 2, 2: 2}
    with pytest.raises(ValueError, match="labels as field y"):
        a.add(x=torch.zeros(1, 1))


def test_herding_is_the_greedy_rule_step_by_step() -> None:
    features = torch.randn(25, 6, generator=torch.Generator().manual_seed(0))
    phi = torch.nn.functional.normalize(features.double(), dim=1)
    mu = phi.mean(0)
    chosen: list[int] = []
    for k in range(1, 9):  # argmin_x || mu - (phi(x) + sum of chosen) / k || over the samples not chosen
        best, best_d = -1, float("inf")
        for i in range(len(phi)):
            if i in chosen:
                continue
            d = float((mu - (phi[i] + sum((phi[j] for j in chosen), torch.zeros(6, dtype=torch.double))) / k).norm())
            if d < best_d:
                best, best_d = i, d
        chosen.append(best)
    assert herding(features, 8).tolist() == chosen
    assert herding(features, 3).tolist() == chosen[:3], "a smaller set is a prefix of the larger one"
    assert herding(features, 40).sort().values.tolist() == list(range(25))


def test_memory_assign_replaces_the_contents() -> None:
    mem = Memory(capacity=5)
    mem.assign(x=torch.arange(4).view(-1, 1), y=torch.arange(4))
    assert len(mem) == 4
    mem.assign(x=torch.arange(2).view(-1, 1), y=torch.arange(2))
    assert len(mem) == 2 and set(mem.sample(9)["y"].tolist()) == {0, 1}
    with pytest.raises(ValueError, match="capacity 5"):
        mem.assign(x=torch.zeros(6, 1), y=torch.zeros(6))
