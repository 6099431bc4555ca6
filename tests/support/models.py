"""Small models used across the tests."""

from __future__ import annotations

import torch
from torch import nn

from boundflow.models import mlp as build_mlp


def mlp(d_in: int = 6, hidden: int = 8, d_out: int = 3) -> nn.Module:
    return build_mlp([d_in, hidden, hidden, d_out], seed=None, dtype=torch.float32)


class SmallCNN(nn.Module):
    """conv + batch norm + max pool + avg pool + leaky relu + linear head."""

    def __init__(self, c_in: int = 1, classes: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(4, 4, 3, stride=1, padding=1, groups=2)
        self.avg = nn.AdaptiveAvgPool2d(2)
        self.head = nn.Linear(16, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(torch.relu(self.bn(self.conv1(x))))
        x = self.avg(nn.functional.leaky_relu(self.conv2(x), 0.1))
        return self.head(torch.flatten(x, 1))


class SmoothNet(nn.Module):
    """sigmoid, tanh, softplus and a softmax output."""

    def __init__(self, d_in: int = 5, classes: int = 4) -> None:
        super().__init__()
        self.l1 = nn.Linear(d_in, 7)
        self.l2 = nn.Linear(7, 7)
        self.l3 = nn.Linear(7, classes)
        self.conv = nn.Conv1d(1, 2, 3, padding=1)
        self.pool = nn.AvgPool1d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.sigmoid(self.l1(x))
        h = torch.tanh(self.l2(h)) + nn.functional.softplus(h)
        c = self.pool(self.conv(h.unsqueeze(1))).flatten(1)
        z = self.l3(torch.cat([h[:, :4], c[:, :3]], dim=1))
        return torch.softmax(z, dim=1)


def init_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give BatchNorm layers non-trivial running statistics and affine parameters; eval mode."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            with torch.no_grad():
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.3)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.randn(m.num_features, generator=g))
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model.eval()
