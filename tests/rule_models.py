"""Small modules, one (or two) channel rules each, for the numerical rule tests."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class ConvBnRelu(nn.Module):  # conv, batchnorm, unary
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.c2, self.b2 = nn.Conv2d(16, 8, 3, padding=1), nn.BatchNorm2d(8)

    def forward(self, x):
        return self.b2(self.c2(F.silu(self.b1(self.c1(x)))))


class Residual(nn.Module):  # binary add couples both producers
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.a = nn.Conv2d(16, 16, 3, padding=1)
        self.b = nn.Conv2d(16, 16, 1)
        self.head = nn.Conv2d(16, 4, 1)

    def forward(self, x):
        x = F.relu(self.stem(x))
        x = x + F.relu(self.a(x))
        x = x * torch.sigmoid(self.b(x))  # an activation with f(0) != 0 on the path
        return self.head(x)


class ConcatSplit(nn.Module):  # concat offsets, split/chunk
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 12, 3, padding=1), nn.Conv2d(3, 8, 1)
        self.c = nn.Conv2d(20, 10, 1)
        self.d = nn.Conv2d(5, 6, 1)

    def forward(self, x):
        y = torch.cat([F.relu(self.a(x)), self.b(x)], dim=1)
        u, v = torch.chunk(self.c(y), 2, dim=1)
        return torch.cat([self.d(u), v * 2], 1)


class Depthwise(nn.Module):  # depthwise conv, with a channel multiplier
    def __init__(self) -> None:
        super().__init__()
        self.pw = nn.Conv2d(3, 12, 1)
        self.dw = nn.Conv2d(12, 12, 3, padding=1, groups=12)
        self.dw2 = nn.Conv2d(12, 24, 3, padding=1, groups=12)
        self.out = nn.Conv2d(24, 5, 1)

    def forward(self, x):
        return self.out(self.dw2(F.relu6(self.dw(self.pw(x)))))


class Grouped(nn.Module):  # grouped conv: every group keeps the same size
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 16, 1)
        self.g = nn.Conv2d(16, 24, 3, padding=1, groups=4)
        self.b = nn.Conv2d(24, 6, 1)

    def forward(self, x):
        return self.b(F.relu(self.g(F.relu(self.a(x)))))


class FlattenLinear(nn.Module):  # block expansion: C*H*W
    def __init__(self) -> None:
        super().__init__()
        self.c = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.fc = nn.Linear(8 * 4 * 4, 10)
        self.fc2 = nn.Linear(10, 3)

    def forward(self, x):
        x = F.relu(self.c(x))
        return self.fc2(F.gelu(self.fc(x.view(x.size(0), -1))))


class ChannelShuffle(nn.Module):  # view + transpose + view
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(3, 8, 3, padding=1)
        self.c = nn.Conv2d(8, 6, 1)
        self.d = nn.Conv2d(8, 6, 1)

    def forward(self, x):
        y = torch.cat([self.a(x), self.b(x)], 1)
        n, c, h, w = y.shape
        y = y.view(n, 2, c // 2, h, w).transpose(1, 2).contiguous().view(n, c, h, w)
        u, v = y.chunk(2, dim=1)
        return torch.cat([self.c(u), self.d(v)], 1)


class SqueezeExcite(nn.Module):  # pooling and a broadcast multiply
    def __init__(self) -> None:
        super().__init__()
        self.c = nn.Conv2d(3, 16, 3, padding=1)
        self.f1, self.f2 = nn.Conv2d(16, 4, 1), nn.Conv2d(4, 16, 1)
        self.out = nn.Linear(16, 5)

    def forward(self, x):
        x = F.relu(self.c(x))
        s = F.adaptive_avg_pool2d(x, 1)
        x = x * F.hardsigmoid(self.f2(F.relu(self.f1(s))))
        return self.out(x.mean((2, 3)))


class Attention(nn.Module):  # heads: (B, N, C) -> (B, N, heads, head_dim), sdpa
    def __init__(self, dim: int = 32, heads: int = 4) -> None:
        super().__init__()
        self.heads = heads
        self.embed = nn.Linear(6, dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, 3)

    def forward(self, x):
        x = self.embed(x)
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        a = F.scaled_dot_product_attention(q, k, v)
        x = x + self.proj(a.transpose(1, 2).reshape(b, n, c))
        return self.head(x)


class MatmulAttention(nn.Module):  # explicit q @ k^T, softmax, @ v, and an einsum
    def __init__(self, dim: int = 24, heads: int = 3) -> None:
        super().__init__()
        self.heads, self.hd = heads, dim // heads
        self.q, self.k, self.v = nn.Linear(8, dim), nn.Linear(8, dim), nn.Linear(8, dim)
        self.w = nn.Parameter(torch.randn(dim, 5))

    def forward(self, x):
        b, n, _ = x.shape
        def split(t):
            return t.view(b, n, self.heads, self.hd).transpose(1, 2)
        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        att = (q @ k.transpose(-2, -1) * self.hd ** -0.5).softmax(-1)
        y = (att @ v).transpose(1, 2).reshape(b, n, -1)
        return torch.einsum("bnc,cd->bnd", y, self.w)


class EmbeddingMLP(nn.Module):  # embedding columns are channels
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(20, 16)
        self.fc = nn.Linear(16, 4)

    def forward(self, idx):
        return self.fc(F.relu(self.emb(idx)).sum(1))


class ConvTranspose(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.up = nn.ConvTranspose2d(8, 6, 2, stride=2)
        self.b = nn.Conv2d(6, 2, 1)

    def forward(self, x):
        return self.b(F.relu(self.up(F.relu(self.a(x)))))


class LayerNormMLP(nn.Module):  # layer norm over pruned channels: inexact by nature
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.ln, self.fc2 = nn.Linear(6, 16), nn.LayerNorm(16), nn.Linear(16, 3)

    def forward(self, x):
        return self.fc2(self.ln(self.fc1(x)))


class GroupNormNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c, self.gn, self.out = nn.Conv2d(3, 16, 3, padding=1), nn.GroupNorm(4, 16), \
            nn.Conv2d(16, 2, 1)

    def forward(self, x):
        return self.out(self.gn(self.c(x)))


class Unknown(nn.Module):  # flip along channels has no rule: a barrier
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 8, 1), nn.Conv2d(8, 2, 1)

    def forward(self, x):
        x = F.relu(self.a(x))
        y = torch.flip(self.b(x), dims=[1])
        return self.c(y)


IMG = (2, 3, 8, 8)
EXACT_CASES = {
    "conv-bn-relu": (ConvBnRelu, lambda: (torch.randn(*IMG),)),
    "residual": (Residual, lambda: (torch.randn(*IMG),)),
    "concat-split": (ConcatSplit, lambda: (torch.randn(*IMG),)),
    "depthwise": (Depthwise, lambda: (torch.randn(*IMG),)),
    "grouped": (Grouped, lambda: (torch.randn(*IMG),)),
    "flatten-linear": (FlattenLinear, lambda: (torch.randn(*IMG),)),
    "channel-shuffle": (ChannelShuffle, lambda: (torch.randn(*IMG),)),
    "squeeze-excite": (SqueezeExcite, lambda: (torch.randn(*IMG),)),
    "attention-heads": (Attention, lambda: (torch.randn(2, 5, 6),)),
    "matmul-einsum": (MatmulAttention, lambda: (torch.randn(2, 7, 8),)),
    "embedding": (EmbeddingMLP, lambda: (torch.randint(0, 20, (3, 4)),)),
    "conv-transpose": (ConvTranspose, lambda: (torch.randn(*IMG),)),
}


class SliceRange(nn.Module):  # a contiguous slice of channels: bounds move with pruning
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 12, 1)
        self.b, self.c = nn.Conv2d(4, 5, 1), nn.Conv2d(12, 5, 1)

    def forward(self, x):
        y = F.relu(self.a(x))
        return self.b(y[:, 4:8]) + self.c(y)


EXACT_CASES["slice-range"] = (SliceRange, lambda: (torch.randn(*IMG),))


class ResidualNet(nn.Module):
    """Conv-BN-ReLU, a residual block and a classifier: the channel couplings pruning
    rewrites (one coupled group), for the backend tests."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16),
                                   nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1))
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.stem(x)
        y = torch.relu(self.block(y) + y)
        return self.head(y.mean((2, 3)))
