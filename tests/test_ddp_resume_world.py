"""A checkpoint written by a 2-process run resumes in 1 process and the other way round, in the middle of a task, with
the global batch kept (issue 15): no sample skipped or repeated, the memories and importances of the uninterrupted
run, its continual-evaluation curves, its final matrix within 1 point, over 3 seeds
(``tests/scripts/ddp_resume_world.py``).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from clfw.module import _own_rng_states
from tests.scripts.ddp_resume_world import SAVE_AFTER, SEEDS, main
from tests.test_ddp_equivalence import MEMORY, OUTPUTS

FAMILIES = ["DERPP", "EWC"]  # a replay memory with stored logits; an importance-weighted penalty


def _load(path: Path) -> dict:
    return torch.load(path, weights_only=False)


@pytest.mark.slow
@pytest.mark.xdist_group("ddp")
def test_checkpoints_resume_across_world_sizes_mid_task(ddp_suite: Path) -> None:
    # the suite's fixture ran the 1-process runs from the start, its launch both 2-process parts
    tmp_path = ddp_suite / "resume_world"
    main(str(tmp_path), 1, "2", FAMILIES)
    for name in FAMILIES:
        for seed in SEEDS:
            tag = f"{name}_s{seed}"
            ref = _load(tmp_path / f"{tag}_w1_rank0.pt")  # the uninterrupted 1-process run
            two = [_load(tmp_path / f"{tag}_w2_rank{r}.pt") for r in (0, 1)]
            assert len(ref["steps"]) == 6
            written_by_two = [a + b for a, b in zip(two[0]["steps"], two[1]["steps"], strict=True)][:SAVE_AFTER]
            assert written_by_two == ref["steps"][:SAVE_AFTER], tag
            ckpt = _load(tmp_path / f"{tag}_w2.ckpt")
            assert ckpt["global_step"] == SAVE_AFTER and len(ckpt["clfw"]["rng_per_rank"]) == 2
            resumed = {
                "1 from 2": [_load(tmp_path / f"{tag}_w1_from2_rank0.pt")],
                "2 from 1": [_load(tmp_path / f"{tag}_w2_from1_rank{r}.pt") for r in (0, 1)],
            }
            for how, ranks in resumed.items():
                what = f"{tag}, {how}"
                steps = [[p for rank in s for p in rank] for s in zip(*(r["steps"] for r in ranks), strict=True)]
                assert steps == ref["steps"][SAVE_AFTER:], f"{what}: samples skipped or repeated after the resume"
                end, expected = ranks[0]["state_dict"], ref["state_dict"]
                assert end.keys() == expected.keys(), what
                for key, value in expected.items():
                    exact = key.startswith(MEMORY) and key.rsplit(".", 1)[-1] not in OUTPUTS
                    if not isinstance(value, torch.Tensor):
                        assert end[key] == value, f"{what}: {key} differs"
                    elif exact or not value.is_floating_point():
                        assert torch.equal(end[key], value), f"{what}: {key} differs"
                    else:  # computed from the weights: the all-reduce's summation order (tests/test_ddp_equivalence.py)
                        torch.testing.assert_close(end[key], value, rtol=1e-4, atol=1e-5, msg=f"{what}: {key}")
                for got, want in zip(ranks[0]["rows"], ref["rows"], strict=True):
                    assert max(abs(a - b) for a, b in zip(got, want, strict=True)) <= 0.01, f"{what}: matrix"
                got, want = ranks[0]["curves"], ref["curves"]  # continued from the checkpoint's, not restarted
                assert got["steps"] == want["steps"] == list(range(7)) and got["ends"] == want["ends"], what
                for a, b in zip(got["acc"], want["acc"], strict=True):  # None: a task not evaluated at that step
                    assert [x is None for x in a] == [x is None for x in b], what
                    assert all(abs(x - y) <= 0.01 for x, y in zip(a, b, strict=True) if x is not None), what


def test_each_rank_gets_its_own_random_states_back() -> None:
    per_rank = [{"torch": torch.tensor([r])} for r in range(2)]
    state = {"rng": per_rank[0], "rng_per_rank": per_rank}

    class Rank:
        def __init__(self, rank: int) -> None:
            self.global_rank = rank

    assert _own_rng_states(state, Rank(1)) is per_rank[1]  # type: ignore[arg-type]
    assert _own_rng_states(state, Rank(0)) is per_rank[0]  # type: ignore[arg-type]
    assert _own_rng_states(state, Rank(3)) is per_rank[1]  # type: ignore[arg-type]  # more ranks: r mod 2
    assert _own_rng_states({"rng": per_rank[0]}, Rank(1)) is per_rank[0]  # type: ignore[arg-type]  # older files
