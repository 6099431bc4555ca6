"""Training a PointNet on the embedded shapes with rotation augmentation."""

from __future__ import annotations

import math

import torch

from boundflow.pointcloud import transforms as tf
from boundflow.pointcloud.data import CLASSES, make_shapes
from boundflow.pointcloud.model import PointNet

__all__ = ["train_pointnet"]


def train_pointnet(
    n_per_class: int = 100,
    n_points: int = 64,
    epochs: int = 30,
    augment_deg: float = 60.0,
    seed: int = 0,
    pool: str = "max",
    progress: bool = False,
) -> tuple[PointNet, dict]:
    """Adam on clouds rotated about z by a random angle in ``[-augment_deg, augment_deg]`` each
    epoch.  Returns the model (float64, eval mode) and ``{"train_accuracy", "test_accuracy"}`` on
    a held-out set of ``n_per_class // 4`` clouds per class (another seed)."""
    torch.manual_seed(seed)
    x, y = make_shapes(n_per_class, n_points, seed)
    xt, yt = make_shapes(max(n_per_class // 4, 1), n_points, seed + 10_000)
    model = PointNet(len(CLASSES), pool=pool).double()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(seed)
    it = range(epochs)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc="train PointNet", unit="epoch")
    for _ in it:
        perm = torch.randperm(len(x), generator=g)
        for s in range(0, len(x), 32):
            idx = perm[s : s + 32]
            ang = (torch.rand(len(idx), generator=g, dtype=torch.float64) * 2 - 1) * math.radians(augment_deg)
            xb = torch.stack([tf.apply(x[j], "rotation-z", a.reshape(1)) for j, a in zip(idx.tolist(), ang)])
            loss = torch.nn.functional.cross_entropy(model(xb), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        acc = float((model(x).argmax(1) == y).double().mean())
        tacc = float((model(xt).argmax(1) == yt).double().mean())
    return model, {"train_accuracy": acc, "test_accuracy": tacc}
