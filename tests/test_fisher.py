"""The diagonal Fisher: batched per-sample gradients equal a per-sample loop, in both modes."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F  # noqa: N812

from clfw.backbones import MLP, SmallCNN
from clfw.fisher import diagonal_fisher, output_sensitivity
from clfw.strategies import Naive
from tests.helpers import TinyStream


def setup_model(backbone: torch.nn.Module) -> tuple[Naive, TinyStream]:
    torch.manual_seed(0)
    dm = TinyStream(n_tasks=2, eval_batch_size=7)
    m = Naive(backbone=backbone)
    m.attach_stream(dm)  # checks the inputs with a float forward and builds the head
    m.double()
    m.current_task = 0
    m._update_seen_mask()  # class-IL after task 0: classes 0 and 1 unmasked
    return m, dm


def loop_fisher(
    m: Naive, dm: TinyStream, labels: torch.Tensor | None = None, weighted: bool = False
) -> dict[str, torch.Tensor]:
    data = dm.stream.tasks[0].test
    x = dm.eval_transform()(data.x).double()
    total = {n: torch.zeros_like(p) for n, p in m.named_parameters()}
    m.eval()
    for k in range(len(data)):
        m.zero_grad()
        y = data.y[k : k + 1] if labels is None else labels[k : k + 1]
        log_p = -F.cross_entropy(m.masked(m(x[k : k + 1]), data.task[k : k + 1]), y)
        log_p.backward()
        for n, p in m.named_parameters():
            total[n] += p.grad.pow(2) * (log_p.exp().item() if weighted else 1.0)
    return {n: t / len(data) for n, t in total.items()}


def batches(dm: TinyStream):
    for b in dm.task_loader(0, "test"):
        yield b._replace(x=b.x.double())


@pytest.mark.parametrize("backbone", [MLP(in_features=16, hidden=(8,)), SmallCNN(in_channels=1, channels=(4,))])
def test_empirical_fisher_equals_a_per_sample_loop(backbone: torch.nn.Module) -> None:
    m, dm = setup_model(backbone)
    fisher = diagonal_fisher(m, batches(dm), "empirical", chunk_size=3)
    expected = loop_fisher(m, dm)
    assert fisher.keys() == expected.keys()
    for n in fisher:
        torch.testing.assert_close(fisher[n], expected[n], rtol=1e-9, atol=1e-12)
    assert fisher["head.weight"][2:].abs().max() == 0, "masked classes contribute no gradient"


def test_weighted_fisher_weights_each_squared_gradient_by_the_probability_of_its_label() -> None:
    m, dm = setup_model(MLP(in_features=16, hidden=(8,)))
    fisher = diagonal_fisher(m, batches(dm), "weighted", chunk_size=4)
    expected = loop_fisher(m, dm, weighted=True)
    for n in fisher:
        torch.testing.assert_close(fisher[n], expected[n], rtol=1e-9, atol=1e-12)
    plain = diagonal_fisher(m, batches(dm), "empirical")
    assert all((fisher[n] <= plain[n] + 1e-15).all() for n in fisher), "weights are probabilities"


def test_sampled_fisher_uses_labels_drawn_from_the_model() -> None:
    m, dm = setup_model(MLP(in_features=16, hidden=(8,)))
    fisher = diagonal_fisher(m, batches(dm), "sampled", generator=torch.Generator().manual_seed(4))
    # the same draws, made by hand: one multinomial per loader batch, in order
    g = torch.Generator().manual_seed(4)
    labels = []
    with torch.no_grad():
        for b in batches(dm):
            probs = torch.softmax(m.masked(m(b.x), b.task), 1)
            labels.append(torch.multinomial(probs.cpu().double(), 1, generator=g).flatten())
    expected = loop_fisher(m, dm, torch.cat(labels))
    for n in fisher:
        torch.testing.assert_close(fisher[n], expected[n], rtol=1e-9, atol=1e-12)
    assert set(torch.cat(labels).tolist()) <= {0, 1}, "labels are drawn among the unmasked classes"


def test_bad_input() -> None:
    m, dm = setup_model(MLP(in_features=16, hidden=(8,)))
    with pytest.raises(ValueError, match="mode must be"):
        diagonal_fisher(m, batches(dm), "true")
    with pytest.raises(ValueError, match="empty"):
        diagonal_fisher(m, [])


@pytest.mark.slow
@pytest.mark.xdist_group("ddp")
def test_ddp_fisher_equals_the_single_process_fisher(ddp_suite) -> None:
    from tests.scripts.ddp_fisher import build

    tmp_path = ddp_suite / "fisher"

    model, dm = build()
    data = [b._replace(x=b.x.double()) for b in dm.task_loader(0, "test")]
    for name, single in (("fisher", diagonal_fisher(model, data)), ("sensitivity", output_sensitivity(model, data))):
        r0, r1 = (torch.load(tmp_path / f"{name}{r}.pt") for r in (0, 1))
        for n in single:
            assert torch.equal(r0[n], r1[n]), (name, n)
            torch.testing.assert_close(r0[n], single[n], rtol=1e-12, atol=1e-15)
