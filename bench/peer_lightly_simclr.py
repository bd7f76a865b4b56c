"""lightly 1.6.0's SimCLR recipe on a MedMNIST .npz, probed on the validation split every N steps off the clock.

Runs in the peer's own virtual environment (never medssl's), made with
    python3.11 -m venv PEER && PEER/bin/pip install torch==2.13.0 torchvision==0.28.0 lightly==1.6.0
and is started by bench/time_to_quality.py, which prints the comparison. The recipe is lightly's documented one:
torchvision ResNet-18 trunk, SimCLRProjectionHead(512, 512, 128), NTXentLoss() (temperature 0.5),
SimCLRTransform(input_size=S) with its defaults (crop scale 0.08-1, colour jitter, grey scale, blur, horizontal
flip; ImageNet normalisation of the RGB copy), SGD lr 0.06 with momentum 0.9 and weight decay 5e-4 (lightly's
SimCLR example module), cosine schedule over the run. Matched with medssl: the same 3x3 stride-2 stem without
max-pool (medssl's 'small' stem), batch, steps, one loader worker, torch's default threads.
The probe is bench/_probe.py, the same file medssl's side uses. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

# this torchvision is a CUDA build: its C++ ops cannot load beside the CPU torch, and its import registers fake
# kernels for these two operators, which fails unless their schemas exist; SimCLR never calls them
_LIB = torch.library.Library("torchvision", "DEF")
_LIB.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
_LIB.define("qnms(Tensor qdets, Tensor scores, float iou_threshold) -> Tensor")

import torchvision  # noqa: E402
from lightly.loss import NTXentLoss  # noqa: E402
from lightly.models.modules import SimCLRProjectionHead  # noqa: E402
from lightly.transforms import SimCLRTransform  # noqa: E402
from PIL import Image  # noqa: E402
from torch import nn  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _probe import Clock, features, probe_scores  # noqa: E402

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # SimCLRTransform's default normalisation


class Images(torch.utils.data.Dataset):
    def __init__(self, images: np.ndarray, transform):
        self.images, self.transform = images, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.transform(Image.fromarray(self.images[i]).convert("RGB"))


class SimCLR(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        resnet = torchvision.models.resnet18()
        resnet.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=2, padding=1, bias=False)
        resnet.maxpool = nn.Identity()
        resnet.fc = nn.Identity()
        self.backbone = resnet
        self.projection_head = SimCLRProjectionHead(512, 512, 128)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection_head(self.backbone(x))


def plain(images: np.ndarray) -> torch.Tensor:
    """The evaluation input: the RGB copy, normalised as in training, no augmentation."""
    x = torch.from_numpy(images).float().div_(255)[:, None].expand(-1, 3, -1, -1)
    return (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="MedMNIST-style .npz")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--lr", type=float, default=0.06)
    ap.add_argument("--probe-every", type=int, default=10)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--json", help="also write the JSON here")
    args = ap.parse_args()
    d = np.load(args.data)
    train, size = d["train_images"], int(d["train_images"].shape[-1])
    ys = {k: d[f"{k}_labels"].ravel() for k in ("train", "val", "test")}
    xs = {k: plain(d[f"{k}_images"]) for k in ("train", "val", "test")}

    torch.manual_seed(args.seed)
    model = SimCLR()
    criterion = NTXentLoss()
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, args.steps)
    loader = torch.utils.data.DataLoader(
        Images(train, SimCLRTransform(input_size=size)), batch_size=args.batch, shuffle=True, drop_last=True,
        num_workers=args.workers, persistent_workers=args.workers > 0,
        generator=torch.Generator().manual_seed(args.seed))

    clock, curve = Clock(), []

    def probe(step: int) -> None:
        t = clock.pause()
        f = {k: features(model.backbone, xs[k]) for k in ("train", "val")}
        curve.append((step, t, probe_scores(f["train"], ys["train"], f["val"], ys["val"])))
        print(f"lightly seed {args.seed} step {step}: {t:.1f} s, val AUC {curve[-1][2]}", file=sys.stderr, flush=True)
        clock.resume()

    model.train()
    clock.start()
    probe(0)
    step, images = 0, 0
    while step < args.steps:
        for (x0, x1) in loader:
            loss = criterion(model(x0), model(x1))
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            images += len(x0)
            if step % args.probe_every == 0 or step == args.steps:
                probe(step)
            if step >= args.steps:
                break
    seconds = clock.now()
    f = {k: features(model.backbone, xs[k]) for k in ("train", "test")}
    out = {"tool": "lightly 1.6.0", "recipe": "lightly", "seed": args.seed, "steps": step, "batch": args.batch,
           "train_seconds": seconds, "images_per_s": images / seconds, "curve": curve,
           "test_auc": probe_scores(f["train"], ys["train"], f["test"], ys["test"]), "threads": torch.get_num_threads()}
    text = json.dumps(out)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")


if __name__ == "__main__":
    main()
