"""The diffusion UNet (guided-diffusion's layout, compact): ResBlocks whose second GroupNorm+SiLU is
modulated by the time (+ condition) embedding, attention at low resolutions, skip connections
after every block."""
from __future__ import annotations

import torch
from torch import nn

from histogen.kernels import GroupNormSiLU
from histogen.models.blocks import Attention, Downsample, ResBlock, Sequence, Upsample, sinusoidal, zero_


class UNet(nn.Module):
    """forward(x (N, C, S, S), t (N,) in [0, 1], cond (N, cond_dim) or None, drop (N,) bool or None,
    label (N,) class ids or None) -> (N, C, S, S). A dropped or missing condition is replaced by the
    learned null embedding `null_cond`, a dropped or missing label by the null class `n_labels`
    (classifier-free guidance; `drop` drops both). `side` is S, for placing attention; `cfg` is the
    diffusion.DiffusionConfig (not imported: diffusion.py imports this module)."""

    def __init__(self, channels_in: int, side: int, cfg, cond_dim: int | None = None,
                 latent_scale: float | None = None, n_labels: int = 0):
        super().__init__()
        ch, groups = cfg.channels, cfg.groups
        emb_dim = 4 * ch
        self.channels = ch
        self.time_embed = nn.Sequential(nn.Linear(ch, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.cond_embed = None
        if cond_dim:
            self.cond_embed = nn.Sequential(nn.Linear(cond_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
            self.null_cond = nn.Parameter(torch.zeros(cond_dim))
        self.n_labels = n_labels
        # Only built for labelled runs, so that the other runs' weights and draws stay as they were.
        self.label_embed = nn.Embedding(n_labels + 1, emb_dim) if n_labels else None  # + the null class
        if latent_scale is not None:
            # The factor the autoencoder's latents are multiplied by; 0 = not estimated yet. A buffer
            # so that it travels in this network's checkpoint.
            self.register_buffer("latent_scale", torch.tensor(float(latent_scale)))

        def block(cin, cout, attend):
            return ([ResBlock(cin, cout, groups, emb_dim, cfg.dropout)]
                    + ([Attention(cout, groups, cfg.head_channels)] if attend else []))

        widths = [ch * m for m in cfg.channel_mult]
        self.conv_in = nn.Conv2d(channels_in, ch, 3, padding=1)
        self.down, skips, cin = nn.ModuleList(), [ch], ch
        for level, width in enumerate(widths):
            attend = side >> level in cfg.attention_resolutions
            for _ in range(cfg.num_res_blocks):
                self.down.append(Sequence(block(cin, width, attend)))
                cin = width
                skips.append(cin)
            if level < len(widths) - 1:
                self.down.append(Sequence([Downsample(cin)]))
                skips.append(cin)
        self.mid = Sequence(block(cin, cin, True) + [ResBlock(cin, cin, groups, emb_dim, cfg.dropout)])
        self.up = nn.ModuleList()
        for level in reversed(range(len(widths))):
            attend = side >> level in cfg.attention_resolutions
            for i in range(cfg.num_res_blocks + 1):
                blocks = block(cin + skips.pop(), widths[level], attend)
                cin = widths[level]
                if level > 0 and i == cfg.num_res_blocks:
                    blocks.append(Upsample(cin))
                self.up.append(Sequence(blocks))
        self.out = nn.Sequential(GroupNormSiLU(groups, cin), zero_(nn.Conv2d(cin, channels_in, 3, padding=1)))

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None,
                drop: torch.Tensor | None = None, label: torch.Tensor | None = None) -> torch.Tensor:
        emb = self.time_embed(sinusoidal(1000 * t, self.channels))
        if self.cond_embed is not None:
            null = self.null_cond.expand(x.shape[0], -1)
            if cond is None:
                cond = null
            elif drop is not None:
                cond = torch.where(drop[:, None], null, cond)
            emb = emb + self.cond_embed(cond)
        if self.label_embed is not None:
            null = torch.full((x.shape[0],), self.n_labels, dtype=torch.long, device=x.device)
            if label is None:
                label = null
            elif drop is not None:
                label = torch.where(drop, null, label)
            emb = emb + self.label_embed(label)
        h = self.conv_in(x)
        hs = [h]
        for block in self.down:
            h = block(h, emb)
            hs.append(h)
        h = self.mid(h, emb)
        for block in self.up:
            h = block(torch.cat([h, hs.pop()], dim=1), emb)
        return self.out(h)
