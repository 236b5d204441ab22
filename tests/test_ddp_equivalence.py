"""A 2-process DDP run is the 1-process run split (issue 15): per rank batch B and replay R against batch 2B and
replay 2R, for every family, in one 2-process launch (``tests/scripts/ddp_equivalence.py``).

Identical: the samples each step trains on (rank 0's block then rank 1's is the 1-process batch, in order), and what
memories store apart from model outputs (inputs, labels, task ids, counters). Close, with tolerances: everything
computed from the weights (weights, DER's stored logits, Fisher and importances, iCaRL's exemplars via its features),
because the all-reduce averages the two ranks' gradients in another summation order than one process's mean over
the joint batch: float32 rounding, about 1e-7 relative per step, which a few dozen steps keep below 1e-4.

Dropout is off here: each rank draws the masks of its own samples, so with dropout the two runs are equal in
distribution, not in value (docs: README "Beyond one machine").
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.scripts.ddp_equivalence import main

FAMILIES = ["Naive", "ER", "ERACE", "DER", "DERPP", "ICaRL", "GDumb", "AGEM", "EWC", "SI", "MAS", "LwF", "Refresh",
            "L2P"]  # fmt: skip
MEMORY = ("buffer.", "memory.", "plugins.1.memory.")
OUTPUTS = ("logits",)  # memory fields computed by the model: close, not identical


@pytest.mark.slow
@pytest.mark.xdist_group("ddp")
def test_a_two_process_run_trains_on_the_one_process_runs_samples_and_ends_close_to_it(
    ddp_suite: Path, tmp_path: Path
) -> None:
    main(str(tmp_path), 1, FAMILIES)
    for name in FAMILIES:
        one = torch.load(tmp_path / f"{name}_w1_rank0.pt", weights_only=False)
        r0, r1 = (torch.load(ddp_suite / "equivalence" / f"{name}_w2_rank{r}.pt", weights_only=False) for r in (0, 1))
        assert len(one["steps"]) == len(r0["steps"]) == len(r1["steps"]) > 0, name
        for s, (a, b, joint) in enumerate(zip(r0["steps"], r1["steps"], one["steps"], strict=True)):
            assert a + b == joint, f"{name}: step {s} trained on other samples, or in another order"
        state, single = r0["state_dict"], one["state_dict"]
        assert state.keys() == single.keys(), name
        for key, value in single.items():
            if not isinstance(value, torch.Tensor):
                assert state[key] == value, (name, key)
            elif key.startswith(MEMORY) and key.rsplit(".", 1)[-1] not in OUTPUTS and "mean" not in key:
                assert torch.equal(state[key], value), f"{name}: memory field {key} differs"
            elif value.is_floating_point():
                torch.testing.assert_close(state[key], value, rtol=1e-4, atol=1e-5, msg=f"{name}: {key}")
            else:
                assert torch.equal(state[key], value), f"{name}: {key} differs"
        assert r0["rows"] == r1["rows"] == one["rows"], f"{name}: accuracy matrices differ"
