"""Do the prompt strategies learn the stream, or only keep a frozen backbone? (issue 6's evidence; prints figures)

    python scripts/prompt_evidence.py [--pretraining letters|digits|rotations] [--seeds 0 1 2] [--jobs 2]

1. Pretraining, on classes the stream never shows, of a small timm ViT (``vit_tiny_patch16_224``'s architecture at
   28x28: 7x7 patches, width 64, depth 4, 4 heads, random init) with a linear head; the weights without the head go
   to ``results/prompt_evidence/vit_<pretraining>.pth``.
   - ``letters`` (default): 48 printed letters (A-Z, a-z without O, o, I and l, which are drawn like 0 and 1) rendered
     MNIST-style (white on black, longest side 20 px, centred by mass in 28x28) from the 22 Latin text fonts that ship
     with matplotlib, 12 renders per letter and font with random stroke width, rotation (+-15 degrees) and width
     (x0.8-1.2), 2,000 of them held out; random affine jitter per batch; AdamW 1e-3 (one-cycle), weight decay 0.05,
     label smoothing 0.1, batch 64, ``--pretrain-epochs`` (20). The stream is then all ten digits: 5 tasks of 2.
   - ``digits``: the offline digits 0-3 (1,600 images; Adam 1e-3, batch 64). The stream is the digits 4-9: 3 tasks.
   - ``rotations``: the digits 0-3 at 0/90/180/270 degrees, 16 classes, otherwise as ``digits``.
2. The stream: offline Split MNIST over those digits, class-IL, batch 32, 10% of each task's training images held out
   for validation (``configs/prompt_digits/base.yaml``). Methods, each from the checkpoint
   (``configs/prompt_digits/*.yaml``): L2P, DualPrompt, CODA-Prompt (10 components per task), a linear probe on the
   frozen features and Naive fine-tuning of the whole ViT; the last two with the prompt methods' current-task training
   mask and per-task optimizer (Adam).
3. Selection, the same for every method: the learning rate (``LR_GRID``, 4 values) and the epochs per task (5 or 20)
   with the best final validation accuracy (the mean of the last row of the validation accuracy matrix) on the first
   seed; the test split is not looked at. ``--fixed`` skips this (each config's lr, 5 epochs per task).
4. With the chosen setting, every seed of ``--seeds`` runs with the multi-seed runner (``clfw.seeds``); the table of
   final test accuracy, forgetting and BWT goes to ``docs/results_prompt_<pretraining>_table.md``, the selection to
   ``docs/results_prompt_<pretraining>_selection.md``. Finished runs are not run again, so the script resumes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch
from torch.nn import functional as F  # noqa: N812

sys.path.insert(0, os.path.dirname(__file__))
from results_split_mnist import run_all, write_tables

from clfw import Normalize
from clfw.benchmarks.mnist import MNIST_MEAN, MNIST_STD, load_mnist
from clfw.prompt import create_vit

VIT = dict(img_size=28, patch_size=7, in_chans=1, embed_dim=64, depth=4, num_heads=4)
SUITES = {  # --suite: the methods compared, each with its config of configs/prompt_digits/
    "prompts": {
        "L2P": "l2p",
        "DualPrompt": "dualprompt",
        "CODA-Prompt": "coda_prompt",
        "linear probe": "linear_probe",
        "Naive fine-tuning": "finetune",
    },
    "pretrained": {
        "SimpleCIL": "simplecil",
        "APER": "aper",
        "RanPAC": "ranpac",
        "SLCA": "slca",
        "InfLoRA": "inflora",
        "EASE": "ease",
    },
}
FINETUNE_LRS = (1e-5, 3e-5, 1e-4, 3e-4)  # methods training the whole ViT with Adam
LR_GRID = {config: (1e-3, 3e-3, 1e-2, 3e-2) for suite in SUITES.values() for config in suite.values()} | {
    "finetune": FINETUNE_LRS,
    "aper": FINETUNE_LRS,
    "ranpac": FINETUNE_LRS,
    "simplecil": (1e-3,),  # nothing trains: one setting
    "inflora": (1e-4, 3e-4, 1e-3, 3e-3),  # around the reference's 5e-4 (Adam)
    "ease": (3e-3, 1e-2, 3e-2, 1e-1),  # around the reference's 0.025 (SGD)
}
EPOCH_GRID = (5, 20)  # epochs per task
EPOCHS = {"simplecil": (1,)}  # one pass over each task (its zero-loss steps change nothing)
BACKBONE_CONFIGS = ("simplecil", "aper", "ranpac", "slca")  # the checkpoint goes to their backbone, not the strategy
FONTS = [  # matplotlib's Latin text fonts (its other files are symbols or math extensions)
    *(f"DejaVu{f}{s}.ttf" for f in ("Sans", "SansMono") for s in ("", "-Bold", "-Oblique", "-BoldOblique")),
    *(f"DejaVuSerif{s}.ttf" for s in ("", "-Bold", "-Italic", "-BoldItalic")),
    *(f"STIXGeneral{s}.ttf" for s in ("", "Bol", "Italic", "BolIta")),
    *(f"cm{s}10.ttf" for s in ("r", "b", "ss", "ti", "tt", "mi")),
]
LETTERS = [c for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz" if c not in "OoIl"]
# pretraining -> the stream's digits, and the pool sizes that depend on its number of tasks
STREAMS = {
    "letters": ([0, 1, 2, 3, 4, 5, 6, 7, 8, 9], 5),
    "digits": ([4, 5, 6, 7, 8, 9], 3),
    "rotations": ([4, 5, 6, 7, 8, 9], 3),
}


def render_letter(char: str, font: str, rng: np.random.Generator) -> np.ndarray:
    """One MNIST-style 28x28 ``uint8`` render of ``char`` in ``font`` with random stroke, rotation and width."""
    from PIL import Image, ImageDraw, ImageFilter, ImageFont

    img = Image.new("L", (128, 128), 0)
    ImageDraw.Draw(img).text((32, 16), char, fill=255, font=ImageFont.truetype(font, 64))
    if stroke := int(rng.integers(0, 4)):
        img = img.filter(ImageFilter.MaxFilter(2 * stroke + 1))
    img = img.rotate(float(rng.uniform(-15, 15)), resample=Image.BILINEAR)
    img = img.crop(img.getbbox())
    img = img.resize((max(1, int(img.width * rng.uniform(0.8, 1.2))), img.height), Image.BILINEAR)
    scale = 20 / max(img.size)
    img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.LANCZOS)
    a = np.asarray(img, dtype=np.float32)
    cy = (a.sum(1) * np.arange(a.shape[0])).sum() / a.sum()
    cx = (a.sum(0) * np.arange(a.shape[1])).sum() / a.sum()
    oy = min(max(round(14 - cy), 0), 28 - a.shape[0])
    ox = min(max(round(14 - cx), 0), 28 - a.shape[1])
    out = np.zeros((28, 28), np.uint8)
    out[oy : oy + a.shape[0], ox : ox + a.shape[1]] = a.clip(0, 255)
    return out


def letters(renders: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    """``renders`` random renders of every letter in every font: ``uint8 [N, 1, 28, 28]`` images, labels."""
    import matplotlib

    folder = os.path.join(matplotlib.get_data_path(), "fonts", "ttf")
    rng = np.random.default_rng(0)
    images = [
        render_letter(c, os.path.join(folder, font), rng) for c in LETTERS for font in FONTS for _ in range(renders)
    ]
    labels = torch.arange(len(LETTERS)).repeat_interleave(len(FONTS) * renders)
    return torch.from_numpy(np.stack(images)).unsqueeze(1), labels


def jitter(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random affine per image: rotation +-0.2 rad, scale x0.9-1.1, shear +-0.15, shift +-6% of the side."""
    n = len(x)
    u = lambda *shape: torch.rand(*shape, generator=g) * 2 - 1  # noqa: E731
    angle, scale, shear, shift = 0.2 * u(n), 1 + 0.1 * u(n), 0.15 * u(n), 0.12 * u(n, 2)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, shear - sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    return F.grid_sample(x, F.affine_grid(theta, list(x.shape), align_corners=False), align_corners=False)


def pretraining_data(kind: str) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """``((train_x, train_y), (test_x, test_y))`` of the pretraining, ``uint8`` images."""
    if kind == "letters":
        x, y = letters()
        perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
        return (x[perm[2000:]], y[perm[2000:]]), (x[perm[:2000]], y[perm[:2000]])
    (x, y), (xt, yt) = load_mnist("offline", "data", False, seed=0)
    (x, y), (xt, yt) = (x[y < 4], y[y < 4]), (xt[yt < 4], yt[yt < 4])
    if kind == "rotations":  # label 4 * rotation + digit
        x, xt = (torch.cat([torch.rot90(a, k, dims=(2, 3)) for k in range(4)]) for a in (x, xt))
        y, yt = (torch.cat([4 * k + b for k in range(4)]) for b in (y, yt))
    return (x, y), (xt, yt)


def pretrain(kind: str, epochs: int, checkpoint: str) -> None:
    torch.manual_seed(0)
    (x, y), (xt, yt) = pretraining_data(kind)
    norm = Normalize(MNIST_MEAN, MNIST_STD)
    vit = create_vit("vit_tiny_patch16_224", **VIT)
    head = torch.nn.Linear(64, int(y.max()) + 1)
    params = [*vit.parameters(), *head.parameters()]
    if kind == "letters":
        opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.05)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, 1e-3, total_steps=epochs * -(-len(y) // 64), pct_start=0.1)
    else:
        opt, sched = torch.optim.Adam(params, lr=1e-3), None
    g = torch.Generator().manual_seed(1)
    start = time.perf_counter()
    for epoch in range(epochs):
        vit.train()
        for idx in torch.randperm(len(y), generator=g).split(64):
            xb = norm(jitter(x[idx].float(), g) if kind == "letters" else x[idx])
            loss = F.cross_entropy(head(vit(xb)), y[idx], label_smoothing=0.1 if kind == "letters" else 0.0)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
        vit.eval()
        with torch.no_grad():
            acc = (head(vit(norm(xt))).argmax(1) == yt).float().mean().item()
        print(
            f"pretraining epoch {epoch + 1}/{epochs}: loss {loss.item():.3f}, held-out accuracy {acc:.3f}", flush=True
        )
    os.makedirs(os.path.dirname(checkpoint), exist_ok=True)
    torch.save(vit.state_dict(), checkpoint)
    print(f"saved {checkpoint} ({time.perf_counter() - start:.0f} s)", flush=True)


def fit_args(kind: str, config: str, checkpoint: str, setting: tuple[float, int] | None) -> list[str]:
    classes, n_tasks = STREAMS[kind]
    args = ["--config", "configs/prompt_digits/base.yaml", "--config", f"configs/prompt_digits/{config}.yaml"]
    owner = "--model.init_args.backbone.init_args" if config in BACKBONE_CONFIGS else "--model.init_args"
    args += [f"{owner}.checkpoint_path={checkpoint}", f"--data.init_args.classes={classes}"]
    args.append(f"--data.init_args.n_tasks={n_tasks}")
    if config == "dualprompt":
        args.append(f"--model.init_args.e_pool_size={n_tasks}")
    if config == "coda_prompt":
        args.append(f"--model.init_args.pool_size={10 * n_tasks}")
    if setting is not None:
        lr, epochs = setting
        args += [f"--model.init_args.optimizer.init_args.lr={lr}", f"--data.init_args.epochs_per_task={epochs}"]
    return args


def directory(out: str, config: str, setting: tuple[float, int] | None) -> str:
    return f"{out}/{config}" + (f"_lr{setting[0]:g}_ep{setting[1]}" if setting else "")


def validation_accuracy(out: str, seed: int) -> float:
    """Final validation accuracy (%): the mean of the last row of the validation accuracy matrix."""
    with open(os.path.join(out, f"seed_{seed}", "metrics.json")) as f:
        last = json.load(f)["val_accuracy_matrix"][-1]
    return 100 * sum(last) / len(last)


def select(
    methods: dict[str, str], kind: str, out: str, checkpoint: str, seed: int, jobs: int, prefix: str
) -> dict[str, tuple[float, int]]:
    """Runs every method's (lr, epochs) grid on ``seed``; returns each method's best by final validation accuracy."""
    grid = [(c, (lr, ep)) for c in methods.values() for lr in LR_GRID[c] for ep in EPOCHS.get(c, EPOCH_GRID)]
    run_all([("class", c, directory(out, c, s), fit_args(kind, c, checkpoint, s)) for c, s in grid], [seed], jobs)
    lines = [
        "| method | lr | " + " | ".join(f"{ep} epochs" for ep in EPOCH_GRID) + " |",
        "|---" * (2 + len(EPOCH_GRID)) + "|",
    ]
    chosen = {}
    for label, config in methods.items():
        epochs = EPOCHS.get(config, EPOCH_GRID)
        scores = {
            (lr, ep): validation_accuracy(directory(out, config, (lr, ep)), seed)
            for lr in LR_GRID[config]
            for ep in epochs
        }
        chosen[config] = max(scores, key=scores.get)
        for lr in LR_GRID[config]:
            if epochs != EPOCH_GRID:
                lines.append(
                    f"| {label} | {lr:g} | {scores[lr, epochs[0]]:.1f} ({epochs[0]} epoch, nothing trains) | |"
                )
                continue
            cells = [
                f"**{scores[lr, ep]:.1f}**" if (lr, ep) == chosen[config] else f"{scores[lr, ep]:.1f}"
                for ep in EPOCH_GRID
            ]
            lines.append(f"| {label} | {lr:g} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    with open(f"docs/results_{prefix}_{kind}_selection.md", "w") as f:
        f.write(f"Final validation accuracy (%, seed {seed}); in bold the setting chosen per method\n\n{table}\n")
    print(table)
    return chosen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pretraining", choices=list(STREAMS), default="letters")
    parser.add_argument(
        "--suite",
        choices=list(SUITES),
        default="prompts",
        help="prompts: L2P, DualPrompt, CODA-Prompt, the linear probe and fine-tuning (docs/results_prompt_*); "
        "pretrained: SimpleCIL, APER, RanPAC, SLCA, InfLoRA, EASE (docs/results_pretrained_*)",
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--pretrain-epochs", type=int, default=None, help="default: 20 for letters, 15 otherwise")
    parser.add_argument("--fixed", action="store_true", help="each config's lr and 5 epochs per task, no selection")
    parser.add_argument("--out", default=None, help="default: results/prompt_<pretraining>")
    args = parser.parse_args()
    kind, out = args.pretraining, args.out or f"results/prompt_{args.pretraining}"
    if args.jobs > 1:
        os.environ["OMP_NUM_THREADS"] = "1"  # the runs share the cores
    checkpoint = f"results/prompt_evidence/vit_{kind}.pth"
    if not os.path.exists(checkpoint):
        pretrain(kind, args.pretrain_epochs or (20 if kind == "letters" else 15), checkpoint)
    methods, prefix = SUITES[args.suite], "prompt" if args.suite == "prompts" else args.suite
    chosen = (
        {c: None for c in methods.values()}
        if args.fixed
        else select(methods, kind, out, checkpoint, args.seeds[0], args.jobs, prefix)
    )
    runs = [
        ("class", label, directory(out, config, chosen[config]), fit_args(kind, config, checkpoint, chosen[config]))
        for label, config in methods.items()
    ]
    run_all(runs, args.seeds, args.jobs)
    write_tables(out, runs, f"docs/results_{prefix}_{kind}_table.md", columns=("ACC", "forgetting", "BWT"))


if __name__ == "__main__":
    main()
