"""The Vision Transformer every torch encoder of engine.encoder_registry is, in plain torch.

timm would build these, but timm imports torchvision, and no torchvision wheel imports beside the
pinned torch 2.13.0 build (README, "Encoders"). The module's parameter names are timm's
(`patch_embed.proj`, `blocks.N.attn.qkv`, `blocks.N.ls1.gamma`, `norm`, ...), so the weights of
the timm-format hub repos load as they are; engine.encoder_weights renames the transformers ones.

What differs between the encoders is data (`ViTConfig`): sizes, the MLP (GELU, or SwiGLU with
fc1 packed: silu(first half) * second half), register tokens, whether the position embedding
covers the prefix tokens (timm's original layout) or the patch tokens only (DINOv2 with registers,
timm's `no_embed_class`), LayerScale, the norms' epsilon, and for CONCH v1.5 the CoCa attentional
pooler on top (`attn_pool_contrast`, `ln_contrast`: the names of MahmoodLab's checkpoint).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class ViTConfig:
    dim: int
    depth: int
    heads: int
    mlp_hidden: int  # fc1's output width; for SwiGLU, both halves together
    patch: int = 16
    image: int = 224  # the side the position embedding is laid out for
    mlp: str = "gelu"  # gelu | swiglu
    registers: int = 0
    pos_on_prefix: bool = True  # the position embedding has entries for the class and register tokens
    layer_scale: bool = False
    norm_eps: float = 1e-6
    attn_pool: int = 0  # width of a CoCa attentional pooler (one query, 8 heads) + LayerNorm on top; 0: none
    # The grid the reference code keeps the positions on and interpolates from at every forward (DINO's
    # way); loading does that interpolation once (engine.encoder_weights). 0: the checkpoint's own grid.
    pos_grid: int = 0

    @property
    def grid(self) -> int:
        return self.image // self.patch

    @property
    def prefix(self) -> int:
        """Tokens before the patch tokens: the class token and the registers."""
        return 1 + self.registers


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, swiglu: bool):
        super().__init__()
        self.swiglu = swiglu
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden // 2 if swiglu else hidden, dim)

    def forward(self, x):
        x = self.fc1(x)
        if self.swiglu:
            gate, value = x.chunk(2, dim=-1)
            return self.fc2(F.silu(gate) * value)
        return self.fc2(F.gelu(x))


class _LayerScale(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), 1e-5))

    def forward(self, x):
        return x * self.gamma


class _Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        n, t, d = x.shape
        q, k, v = self.qkv(x).reshape(n, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(n, t, d))


class _Block(nn.Module):
    def __init__(self, c: ViTConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(c.dim, eps=c.norm_eps)
        self.attn = _Attention(c.dim, c.heads)
        self.ls1 = _LayerScale(c.dim) if c.layer_scale else nn.Identity()
        self.norm2 = nn.LayerNorm(c.dim, eps=c.norm_eps)
        self.mlp = _Mlp(c.dim, c.mlp_hidden, c.mlp == "swiglu")
        self.ls2 = _LayerScale(c.dim) if c.layer_scale else nn.Identity()

    def forward(self, x):
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class _AttentionalPooler(nn.Module):
    """CoCa's pooler (CONCH's `attn_pool_contrast`): learned queries attend to the layer-normed tokens."""

    def __init__(self, width: int, context: int, heads: int = 8, queries: int = 1):
        super().__init__()
        self.heads = heads
        self.query = nn.Parameter(torch.randn(queries, width))
        self.ln_k = nn.LayerNorm(context)
        self.ln_q = nn.LayerNorm(width)
        self.to_q = nn.Linear(width, width, bias=False)
        self.to_kv = nn.Linear(context, 2 * width, bias=False)
        self.to_out = nn.Linear(width, width, bias=False)

    def forward(self, x):
        n, h = len(x), self.heads
        q = self.to_q(self.ln_q(self.query)).expand(n, -1, -1)
        k, v = self.to_kv(self.ln_k(x)).chunk(2, dim=-1)
        q, k, v = (t.reshape(n, t.shape[1], h, -1).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(n, -1, h * q.shape[-1])
        return self.to_out(out)


class _PatchEmbed(nn.Module):
    def __init__(self, c: ViTConfig):
        super().__init__()
        self.proj = nn.Conv2d(3, c.dim, c.patch, c.patch)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class VisionTransformer(nn.Module):
    """float32 NCHW images at `config.image` px -> the final-normed tokens (n, prefix + grid², dim)."""

    def __init__(self, config: ViTConfig):
        super().__init__()
        if config.mlp not in ("gelu", "swiglu"):
            raise ValueError(f"mlp must be gelu or swiglu, not {config.mlp!r}")
        c = self.config = config
        self.patch_embed = _PatchEmbed(c)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c.dim))
        self.reg_token = nn.Parameter(torch.zeros(1, c.registers, c.dim)) if c.registers else None
        positions = c.grid ** 2 + (c.prefix if c.pos_on_prefix else 0)
        self.pos_embed = nn.Parameter(torch.randn(1, positions, c.dim) * 0.02)
        self.blocks = nn.Sequential(*(_Block(c) for _ in range(c.depth)))
        self.norm = nn.LayerNorm(c.dim, eps=c.norm_eps)
        if c.attn_pool:
            self.attn_pool_contrast = _AttentionalPooler(c.attn_pool, c.dim)
            self.ln_contrast = nn.LayerNorm(c.attn_pool)

    def forward(self, x):
        x = self.patch_embed(x)
        prefix = [self.cls_token.expand(len(x), -1, -1)]
        if self.reg_token is not None:
            prefix.append(self.reg_token.expand(len(x), -1, -1))
        if self.config.pos_on_prefix:
            x = torch.cat(prefix + [x], dim=1) + self.pos_embed
        else:
            x = torch.cat(prefix + [x + self.pos_embed], dim=1)
        return self.norm(self.blocks(x))

    def embed(self, x, how: str):
        """float32 NCHW images -> (n, width): the tokens pooled as `how` says (POOLINGS)."""
        return pool(self(x), self.config.prefix, how, self)


POOLINGS = ("cls", "cls+mean", "attn")


def pool(tokens: torch.Tensor, prefix: int, how: str, net: VisionTransformer | None = None) -> torch.Tensor:
    """The class token, or (`cls+mean`, as Virchow and others publish) the class token followed by
    the mean of the patch tokens (registers left out), or (`attn`, CONCH v1.5) `net`'s attentional
    pooler over every token, layer-normed."""
    if how == "cls":
        return tokens[:, 0]
    if how == "cls+mean":
        return torch.cat([tokens[:, 0], tokens[:, prefix:].mean(1)], dim=-1)
    if how == "attn" and net is not None and net.config.attn_pool:
        return net.ln_contrast(net.attn_pool_contrast(tokens)[:, 0])
    if how == "attn":
        raise ValueError("attn pooling needs a network built with attn_pool")
    raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}, not {how!r}")
