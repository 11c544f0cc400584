"""Where a torch encoder's weights come from and how they become engine.vit's state dict.

A weights path is a file or a folder (a hub snapshot, or any folder holding one checkpoint).
safetensors is read first; pickled checkpoints (.bin, .pth, .pt) only when the user opts in, and
then with torch.load(weights_only=True), which unpickles tensors and containers, never code.
transformers checkpoints (ViTModel, Dinov2Model) are renamed to timm's names; a position
embedding laid out for another image size is resampled (bicubic) to the registry's.
"""
from __future__ import annotations

import hashlib
import math
import re
from pathlib import Path

import torch
import torch.nn.functional as F

from engine.encoder_registry import EncoderError, EncoderSpec
from engine.vit import ViTConfig

SAFE = ("*.safetensors",)
PICKLED = ("*.bin", "*.pth", "*.pt")
HUB_FILES = ["*.json", *SAFE]  # what a download fetches: configs and safetensors (pickles only on opt-in)

# transformers names -> timm names; the query/key/value triples are joined into qkv after renaming.
_HF_COMMON = [
    (r"^embeddings\.cls_token$", "cls_token"),
    (r"^embeddings\.position_embeddings$", "pos_embed"),
    (r"^embeddings\.patch_embeddings\.projection\.", "patch_embed.proj."),
    (r"^encoder\.layer\.(\d+)\.attention\.attention\.(query|key|value)\.", r"blocks.\1.attn.\2."),
    (r"^encoder\.layer\.(\d+)\.attention\.output\.dense\.", r"blocks.\1.attn.proj."),
    (r"^layernorm\.", "norm."),
]
RENAMES = {
    "hf-vit": _HF_COMMON + [
        (r"^encoder\.layer\.(\d+)\.layernorm_before\.", r"blocks.\1.norm1."),
        (r"^encoder\.layer\.(\d+)\.layernorm_after\.", r"blocks.\1.norm2."),
        (r"^encoder\.layer\.(\d+)\.intermediate\.dense\.", r"blocks.\1.mlp.fc1."),
        (r"^encoder\.layer\.(\d+)\.output\.dense\.", r"blocks.\1.mlp.fc2."),
    ],
    "hf-dinov2": _HF_COMMON + [
        (r"^encoder\.layer\.(\d+)\.norm([12])\.", r"blocks.\1.norm\2."),
        (r"^encoder\.layer\.(\d+)\.layer_scale([12])\.lambda1$", r"blocks.\1.ls\2.gamma"),
        (r"^encoder\.layer\.(\d+)\.mlp\.(fc1|weights_in)\.", r"blocks.\1.mlp.fc1."),
        (r"^encoder\.layer\.(\d+)\.mlp\.(fc2|weights_out)\.", r"blocks.\1.mlp.fc2."),
    ],
    "timm": [],
}
UNUSED = re.compile(r"^(head|fc_norm|pooler|embeddings\.mask_token)(\.|$)")  # classifier heads, DINOv2's mask token
POOLER = ("attn_pool_contrast.", "ln_contrast.")  # CONCH's pooler: beside the trunk, under its own names


def weight_file(path: Path, allow_pickle: bool = False) -> Path:
    """The checkpoint in `path` (a file, or a folder with one safetensors file or, opted in, one pickle)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise EncoderError(f"{path}: no such file or folder", "point {weights} at a checkpoint or its folder")
    if path.is_dir():
        found = sorted(f for pattern in SAFE for f in path.rglob(pattern))
        pickled = sorted(f for pattern in PICKLED for f in path.rglob(pattern))
        if not found and pickled and allow_pickle:
            found = pickled
        if len(found) != 1:
            what = (f"only pickled weights ({', '.join(f.name for f in pickled)})" if pickled and not found
                    else f"{len(found)} checkpoints" if found else "no checkpoint")
            hint = ("pass {allow_pickle} to load them (tensors only, no code)" if pickled and not found
                    else "point {weights} at one file")
            raise EncoderError(f"{path}: {what}", hint)
        path = found[0]
    if path.suffix != ".safetensors" and not allow_pickle:
        raise EncoderError(f"{path}: a pickled checkpoint; pickles are loaded only when asked",
                           "convert it to safetensors, or pass {allow_pickle} (tensors only, no code)")
    return path


def file_hash(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return "sha256:" + h.hexdigest()[:16]


def read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise EncoderError(f"{path}: not a checkpoint of tensors ({type(e).__name__}: {str(e).splitlines()[0]})") from e
    return state.get("state_dict", state.get("model", state)) if isinstance(state, dict) else state


def to_vit(state: dict[str, torch.Tensor], spec: EncoderSpec) -> dict[str, torch.Tensor]:
    """A checkpoint's tensors under engine.vit's (timm's) names, for `spec`'s architecture."""
    cls = "embeddings.cls_token" if spec.layout.startswith("hf-") else "cls_token"
    cls_key = next((k for k in state if k == cls or k.endswith("." + cls)), None)
    if cls_key is None:
        raise EncoderError(f"the checkpoint has no {cls}: not {spec.name}'s weights (a {spec.layout} checkpoint)",
                           "point {weights} at the model's own weights")
    prefix = cls_key[: -len(cls)]
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if spec.vit.attn_pool and key.startswith(POOLER):
            out[key] = value
            continue
        if not key.startswith(prefix) or UNUSED.match(key[len(prefix):]):
            continue
        key = key[len(prefix):]
        for pattern, repl in RENAMES[spec.layout]:
            key = re.sub(pattern, repl, key)
        out[key] = value
    for qkv in sorted({k.rsplit(".", 2)[0] for k in out if re.search(r"\.attn\.query\.", k)}):
        for part in ("weight", "bias"):
            out[f"{qkv}.qkv.{part}"] = torch.cat([out.pop(f"{qkv}.{t}.{part}") for t in ("query", "key", "value")])
    if "pos_embed" in out:
        out["pos_embed"] = resample_positions(out["pos_embed"], spec.vit)
    return out


def resample_positions(pos: torch.Tensor, c: ViTConfig) -> torch.Tensor:
    """A position embedding laid out for another grid, resampled to `c`'s (bicubic, as DINOv2 does).
    With `c.pos_grid` (CONCH v1.5), as TRIDENT's code does it: first to that grid (bilinear, timm's
    resample_abs_pos_embed on loading), then to `c`'s as DINO's forward interpolates (bicubic, scale
    factor (grid + 0.1) / pos_grid), here once instead of at every forward."""
    pos = pos.reshape(1, -1, pos.shape[-1])
    k = c.prefix if c.pos_on_prefix else 0
    grid = math.isqrt(pos.shape[1] - k)
    if grid * grid != pos.shape[1] - k or (grid == c.grid and not c.pos_grid):
        return pos  # as it is, or not a square grid: the shape check on loading says what differs
    patches = pos[:, k:].reshape(1, grid, grid, -1).permute(0, 3, 1, 2).float()
    if c.pos_grid:
        if grid != c.pos_grid:
            patches = F.interpolate(patches, size=(c.pos_grid, c.pos_grid), mode="bilinear", align_corners=False)
        scale = (c.grid + 0.1) / c.pos_grid
        patches = F.interpolate(patches, scale_factor=(scale, scale), mode="bicubic")
    else:
        patches = F.interpolate(patches, size=(c.grid, c.grid), mode="bicubic", align_corners=False)
    return torch.cat([pos[:, :k], patches.permute(0, 2, 3, 1).reshape(1, c.grid ** 2, -1).to(pos.dtype)], dim=1)
