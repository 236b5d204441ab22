"""Reservoir buffer: Vitter's algorithm R (statistically), O(batch) operations, checkpoints."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from clfw.buffers import ReservoirBuffer
from tests.helpers import free_port, run_script


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
def test_ddp_ranks_hold_the_buffer_of_a_single_reservoir_over_the_gathered_stream(tmp_path: Path) -> None:
    run_script("ddp_buffer.py", str(tmp_path), free_port(), cwd=tmp_path)
    r0, r1 = (torch.load(tmp_path / f"buffer{r}.pt") for r in (0, 1))
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
