"""The printed-letter pretraining data of ``scripts/prompt_evidence.py`` (issue 6's evidence)."""

from __future__ import annotations

import importlib.util
import json
import os

import matplotlib
import numpy as np
import pytest
import torch

from clfw.cli import main
from clfw.prompt import create_vit
from tests.helpers import ROOT


@pytest.fixture(scope="module")
def evidence():
    spec = importlib.util.spec_from_file_location("prompt_evidence", ROOT / "scripts" / "prompt_evidence.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_letters_are_rendered_mnist_style_from_every_font(evidence) -> None:
    folder = os.path.join(matplotlib.get_data_path(), "fonts", "ttf")
    assert len(evidence.LETTERS) == 48 and not set("OoIl0123456789") & set(evidence.LETTERS)
    rng = np.random.default_rng(0)
    for font in evidence.FONTS:
        images = [evidence.render_letter(c, os.path.join(folder, font), rng) for c in "AgQx"]
        for img in images:
            assert img.shape == (28, 28) and img.dtype == np.uint8
            rows, cols = np.nonzero(img)
            # MNIST's layout: the glyph's longest side is 20 px, its centre of mass at the image centre
            assert max(rows.max() - rows.min(), cols.max() - cols.min()) + 1 in (19, 20, 21), font
            mass = img.astype(float) / img.sum()
            cy, cx = (mass.sum(1) * np.arange(28)).sum(), (mass.sum(0) * np.arange(28)).sum()
            assert abs(cy - 14) < 1.5 and abs(cx - 14) < 1.5, (font, cy, cx)
        # four different letters give four different images (a font without the glyphs would draw boxes)
        flat = np.stack(images).reshape(4, -1).astype(float)
        assert min(np.abs(a - b).mean() for i, a in enumerate(flat) for b in flat[i + 1 :]) > 10, font


# fitted: the configs whose pool sizes the script sets from the stream, and one TimmBackbone config (slca); the
# others are built with the script's arguments (a fit costs 10-15 s each)
FITTED = ["dualprompt", "coda_prompt", "slca"]
BUILT = ["l2p", "linear_probe", "finetune", "simplecil", "aper", "ranpac", "inflora", "ease"]


@pytest.mark.parametrize("config", BUILT)
def test_the_other_evidence_configs_build_from_a_checkpoint_with_the_scripts_arguments(
    evidence, config: str, tmp_path
) -> None:
    """Their model section with the script's checkpoint argument, instantiated as ``clfw fit`` does (fitting every
    config would cost a minute each; the fitted ones cover both ways the checkpoint is passed)."""
    import yaml

    from clfw.testing import build_model

    checkpoint = tmp_path / "vit.pth"
    source = create_vit("vit_tiny_patch16_224", **evidence.VIT)
    torch.save(source.state_dict(), checkpoint)
    (arg,) = [a for a in evidence.fit_args("digits", config, str(checkpoint), (1e-3, 1)) if "checkpoint_path" in a]
    keys, value = arg.removeprefix("--").split("=", 1)
    model = yaml.safe_load((ROOT / "configs" / "prompt_digits" / f"{config}.yaml").read_text())
    node = model
    for key in keys.split(".")[:-1]:
        node = node[key]
    node[keys.split(".")[-1]] = value
    built = build_model(model["model"])
    vit = built.backbone.model if hasattr(built.backbone, "model") else built.backbone
    assert all(torch.equal(a, b) for a, b in zip(source.state_dict().values(), vit.state_dict().values(), strict=True))


@pytest.mark.parametrize("config", FITTED)
def test_evidence_configs_run_from_a_checkpoint_with_the_scripts_arguments(
    evidence, config: str, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``configs/prompt_digits`` with the arguments the script passes: a few steps per task from a local checkpoint."""
    checkpoint = tmp_path / "vit.pth"
    torch.save(create_vit("vit_tiny_patch16_224", **evidence.VIT).state_dict(), checkpoint)
    args = evidence.fit_args("digits", config, str(checkpoint), (1e-3, 1))  # 3 tasks
    cmd = [
        "fit", *args, "--data.init_args.offline_train_per_class=20",
        f"--trainer.default_root_dir={tmp_path}", f"--trainer.logger.init_args.save_dir={tmp_path}",
        "--trainer.enable_progress_bar=false",
    ]  # fmt: skip
    monkeypatch.chdir(ROOT)
    main(cmd)  # in-process: a subprocess would spend most of the test importing torch
    (metrics,) = tmp_path.glob("**/metrics.json")
    report = json.loads(metrics.read_text())
    assert report["tasks_completed"] == 3 and len(report["val_accuracy_matrix"]) == 3
