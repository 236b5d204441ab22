"""Prompt strategies over a tiny random-weight timm ViT: timm parts reproduced exactly, only prompts and head train,
key-query matching, DualPrompt's layers, CODA's orthogonal components, refresh on them, and weight loading."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

import clfw.prompt
import clfw.strategies
from clfw.prompt import PromptModule, block_forward, create_vit, run_blocks, vit_tokens
from tests.helpers import TinyStream, fit, snapshot, tiny_vit

PROMPTS: dict[str, dict[str, Any]] = {
    "L2P": {"pool_size": 4, "prompt_length": 2, "top_k": 2},
    "DualPrompt": {"g_length": 2, "g_layers": [0], "e_pool_size": 2, "e_length": 2, "e_layers": [1, 2]},
    "CODAPrompt": {"pool_size": 4, "prompt_length": 2, "layers": [0, 1]},
}


def make(name: str, **extra: Any) -> PromptModule:
    torch.manual_seed(0)
    kwargs = {"optimizer": lambda p: torch.optim.Adam(p, lr=0.01), **PROMPTS[name], **extra}
    return getattr(clfw.strategies, name)(vit=tiny_vit(), **kwargs)


def test_assembled_parts_reproduce_timms_vit_and_blocks_exactly() -> None:
    torch.manual_seed(0)
    vit = tiny_vit().eval()
    x = torch.randn(5, 1, 4, 4)
    tokens = vit_tokens(vit, x)
    assert torch.equal(run_blocks(vit, tokens), vit.forward_features(x))
    empty = torch.zeros(5, 0, 16)
    for block in vit.blocks:
        assert torch.equal(block_forward(block, tokens), block(tokens))
        assert torch.equal(block_forward(block, tokens, (empty, empty)), block(tokens)), "an empty prefix is a no-op"
        tokens = block(tokens)


@pytest.mark.parametrize("name", sorted(PROMPTS))
def test_only_prompts_and_head_train_and_the_backbone_is_bit_identical(name: str) -> None:
    m, dm = make(name), TinyStream(n_tasks=2, batch_size=8)
    m.attach_stream(dm)  # builds the head
    before = snapshot(m)
    fit(m, dm)
    after = snapshot(m)
    backbone = [k for k in before if k.startswith("backbone.")]
    assert backbone and all(torch.equal(before[k], after[k]) for k in backbone)
    trainable = {n for n, p in m.named_parameters() if p.requires_grad and not n.startswith("backbone.")}
    handed = {id(p) for p in m.trainable_parameters()}
    assert {n for n, p in m.named_parameters() if id(p) in handed} == trainable
    changed = {k for k in trainable if not torch.equal(before[k], after[k])}
    assert "head.weight" in changed and changed - {"head.weight", "head.bias"}, f"prompt parameters train: {changed}"


@pytest.mark.parametrize("finetune", [False, True])
def test_vit_baselines_probe_frozen_features_or_fine_tune_everything(finetune: bool) -> None:
    torch.manual_seed(0)
    m, dm = clfw.strategies.ViTBaseline(vit=tiny_vit(), finetune=finetune, cache_queries=True), TinyStream(n_tasks=2)
    m.attach_stream(dm)
    before = snapshot(m)
    fit(m, dm)
    after = snapshot(m)
    backbone_same = all(torch.equal(before[k], after[k]) for k in before if k.startswith("backbone."))
    assert backbone_same != finetune and not torch.equal(before["head.weight"], after["head.weight"])
    assert len(m._queries) == (0 if finetune else 96), "the probe caches each training sample's query once"


def test_l2p_selects_the_prompts_whose_keys_match_the_query() -> None:
    m = make("L2P", batchwise_selection=False)
    with torch.no_grad():
        m.keys.copy_(torch.eye(4, 16) * torch.tensor([[1.0], [2.0], [3.0], [4.0]]))
    query = torch.zeros(3, 16)
    query[0, 2], query[0, 1] = 1.0, 0.5  # closest to key 2, then key 1
    query[1, 0], query[1, 3] = -1.0, 0.1  # key 3 first; the others tie at 0 with key 0 last (negative)
    query[2, 1] = 1.0
    idx, sim = m.select(query)
    assert idx[0].tolist() == [2, 1] and idx[1, 0].item() == 3 and idx[2, 0].item() == 1
    torch.testing.assert_close(sim[0], torch.tensor([1.0, 0.5]) / torch.tensor(1.25).sqrt())
    m.batchwise_selection = True
    voted, _ = m.select(torch.stack([query[0], query[0], query[2]]), train=True)
    assert voted.tolist() == [[1, 2]] * 3 or voted.tolist() == [[2, 1]] * 3, "the batch's two most chosen prompts"


def test_dualprompt_uses_the_current_tasks_e_prompt_in_training_and_the_best_key_at_test() -> None:
    m = make("DualPrompt")
    m.current_task = 1
    with torch.no_grad():
        m.e_keys.copy_(torch.eye(2, 16))
    query = torch.eye(2, 16)[[0, 0, 1]]
    assert m.select(query, train=True)[0].tolist() == [1, 1, 1]
    assert m.select(query, train=False)[0].tolist() == [0, 0, 1]


def test_dualprompt_prefixes_reach_exactly_the_configured_layers(monkeypatch: pytest.MonkeyPatch) -> None:
    m = make("DualPrompt", g_layers=[0, 2], e_layers=[2])
    m.attach_stream(TinyStream(n_tasks=2))
    seen: dict[int, int] = {}
    original = clfw.prompt.block_forward

    def spy(block: torch.nn.Module, x: torch.Tensor, prefix: Any = None) -> torch.Tensor:
        seen[list(m.backbone.blocks).index(block)] = prefix[0].shape[1]
        return original(block, x, prefix)

    monkeypatch.setattr(clfw.prompt, "block_forward", spy)
    m.eval()(torch.randn(2, 1, 4, 4))
    assert seen == {0: 2, 2: 4}, "layer 0: the G-prompt; layer 2: G- then E-prompt; layer 1: none"


def test_coda_components_of_a_new_task_are_orthogonal_and_earlier_ones_do_not_change() -> None:
    m = make("CODAPrompt", optimizer=lambda p: torch.optim.AdamW(p, lr=0.05, weight_decay=0.5))
    records: list[dict[str, torch.Tensor]] = []

    class Record(clfw.ContinualCallback):
        def on_task_end(self, trainer: Any, module: Any, task: int) -> None:
            records.append({k: v.detach().clone() for k, v in module.named_parameters() if not k.startswith("back")})

    fit(m, TinyStream(n_tasks=2, batch_size=8, epochs_per_task=2), callbacks=[Record()])
    first, last = records
    for name in ("prompts", "keys", "attention"):
        assert torch.equal(first[name][:, :2], last[name][:, :2]), f"task 0's {name} changed during task 1"
        assert not torch.equal(first[name][:, 2:], last[name][:, 2:])
    # a new task's fresh slice against the earlier components
    m.current_task = 1
    m.on_task_start(1)
    for param in (m.prompts, m.keys, m.attention):
        for layer in range(2):
            flat = param[layer].flatten(1).double()
            cross = flat[2:] @ flat[:2].T
            assert cross.abs().max() < 1e-5, "orthogonal to the earlier components"
            torch.testing.assert_close(flat[2:] @ flat[2:].T, torch.eye(2, dtype=torch.double), atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", sorted(PROMPTS))
def test_refresh_moves_only_the_trainable_parameters(name: str) -> None:
    m = make(name, plugins=[clfw.strategies.Refresh(delta=0.05)])
    before = snapshot(m)
    fit(m, TinyStream(n_tasks=2, batch_size=8))
    after = snapshot(m)
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("backbone."))
    assert int(m.plugins[0].steps) == 12
    fisher = {k for k in after if k.startswith("plugins.0.fisher:")}
    assert fisher and not any(k.startswith("plugins.0.fisher:backbone") for k in fisher)


def test_weights_by_name_and_tag_or_from_a_local_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no pretrained tag"):
        create_vit("vit_base_patch16_224", pretrained=True)
    torch.manual_seed(1)
    source = tiny_vit()
    torch.save(source.state_dict(), tmp_path / "vit.pth")
    torch.manual_seed(2)
    kwargs = dict(img_size=4, patch_size=2, in_chans=1, embed_dim=16, depth=3, num_heads=2)
    loaded = create_vit("vit_tiny_patch16_224", checkpoint_path=str(tmp_path / "vit.pth"), **kwargs)
    assert all(
        torch.equal(a, b) for a, b in zip(source.state_dict().values(), loaded.state_dict().values(), strict=True)
    )
    with pytest.raises(ValueError, match="backbone"):
        clfw.strategies.L2P(vit=source, backbone=torch.nn.Identity())


def test_a_timm_backbone_from_a_local_file_has_the_models_features(tmp_path: Path) -> None:
    """``clfw.backbones.TimmBackbone`` (a config's backbone for SimpleCIL, APER, RanPAC, SLCA): the checkpoint's
    weights, the timm model's features and intermediates, and the tag check."""
    from clfw.backbones import TimmBackbone, intermediates

    with pytest.raises(ValueError, match="no pretrained tag"):
        TimmBackbone("vit_tiny_patch16_224", pretrained=True)
    with pytest.raises(ValueError, match=r"missing\.pth' is not a file"):  # timm's own error is a traceback
        TimmBackbone("vit_tiny_patch16_224", checkpoint_path=str(tmp_path / "missing.pth"))
    torch.manual_seed(1)
    source = tiny_vit().eval()
    torch.save(source.state_dict(), tmp_path / "vit.pth")
    torch.manual_seed(2)
    kwargs = dict(img_size=4, patch_size=2, in_chans=1, embed_dim=16, depth=3, num_heads=2)
    backbone = TimmBackbone("vit_tiny_patch16_224", checkpoint_path=str(tmp_path / "vit.pth"), model_kwargs=kwargs)
    x = torch.randn(3, 1, 4, 4)
    assert backbone.num_features == 16
    assert torch.equal(backbone.eval()(x), source(x))
    pooled, maps = intermediates(backbone, x)
    assert torch.equal(pooled, source(x)) and len(maps) == 3


@pytest.mark.parametrize("name", ["L2P", "DualPrompt", "CODAPrompt", "ViTBaseline", "EASE", "InfLoRA"])
def test_from_a_config_the_optimizer_is_re_created_at_every_task(name: str) -> None:
    """The prompt papers re-create the optimizer per task. The default once came from ``kwargs.setdefault``, which a
    config never reached: jsonargparse passes ContinualModule's own default (False) explicitly, so every prompt run
    from the CLI kept one optimizer (Adam's moments) across tasks."""
    from clfw.testing import build_model, model_config
    from tests.test_contract import TINY_KWARGS

    model = build_model(model_config(f"clfw.strategies.{name}", TINY_KWARGS[name]))
    assert model.reset_optimizer_per_task is True
    assert make("L2P").reset_optimizer_per_task is True  # built in Python as before
