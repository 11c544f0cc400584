"""A registry encoder built in torch (engine.vit), its weights loaded, ready to embed batches.

    model = load(spec("uni2-h"))                      # from the hub (HF_TOKEN, pinned or main revision)
    model = load(spec("uni2-h"), weights="ckpt/")     # from local weights, no network
    model(x)   # x: float32 NCHW, normalised as spec.transform says -> float32 (n, spec.width)

The forward runs under bf16 autocast where the device computes bf16 natively (CUDA, or a CPU with
AVX512-BF16 or AMX) and the encoder's authors run it in reduced precision; the embeddings are
float32 either way.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from engine import encoder_weights
from engine.encoder_registry import EncoderError, EncoderSpec, SpecShape
from engine.hub_download import download
from engine.vit import VisionTransformer

UNTRAINED_MARKER = "untrained.json"  # beside the weights: a stand-in's (histosynth writes it); any content marks it


def native_bf16(device: torch.device) -> bool:
    """bf16 arithmetic in hardware: CUDA, or a CPU with AVX512-BF16 or AMX (elsewhere oneDNN emulates
    it and fp32 is faster)."""
    if device.type == "cuda":
        return True
    return device.type == "cpu" and (torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def build(spec: EncoderSpec, device: str | torch.device = "cpu") -> VisionTransformer:
    """The architecture with random weights; on "meta" it takes no memory (for counting)."""
    if spec.vit is None:
        raise EncoderError(f"{spec.name} is a TensorFlow SavedModel, not a torch architecture")
    with torch.device(device):
        return VisionTransformer(spec.vit)


@dataclass
class TorchModel(SpecShape):
    spec: EncoderSpec
    net: VisionTransformer
    id: str  # the hub repo, or the weights' path
    revision: str  # the hub commit, or the local weights' hash
    weights_hash: str
    bf16: bool
    marker: str | None = None  # the content of an untrained marker beside the weights; None: none there

    @property
    def device(self) -> torch.device:
        return self.net.cls_token.device

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor) -> np.ndarray:
        x = torch.as_tensor(x).to(self.device, torch.float32)
        if not torch.isfinite(x).all():
            raise EncoderError("input batch contains NaN or inf; the patches or the pipeline are broken")
        with torch.autocast(self.device.type, torch.bfloat16, enabled=self.bf16):
            y = self.net.embed(x, self.spec.pooling)
        y = y.float().cpu().numpy()
        if not np.isfinite(y).all():
            raise EncoderError(f"{self.spec.name}: model returned NaN or inf embeddings")
        return y

    def attrs(self) -> dict:
        """What the store records beside the embeddings (and what makes them current)."""
        t = self.spec.transform
        return {"encoder": self.spec.name, "model": self.id, "revision": self.revision,
                "weights_hash": self.weights_hash, "input_size": t.size, "resize": t.method,
                "mean": list(t.mean), "std": list(t.std), "pooling": self.spec.pooling, "width": self.width}


def load(spec: EncoderSpec, weights: str | Path | None = None, revision: str | None = None, token: str | None = None,
         allow_pickle: bool = False, device: str | torch.device | None = None, bf16: bool | None = None
         ) -> TorchModel:
    """`spec`'s model with its weights from `weights` (a file or folder) or else from the hub. `bf16`:
    autocast the forward; None: where the authors run it so and the device has native bf16."""
    if weights is None and spec.repo is None:
        raise EncoderError(f"{spec.name} has no hub source (random weights for tests)", "pass {weights} with "
                           "a folder written by python -m histosynth.standin_model --arch torch-vit")
    if weights is None and spec.checkpoint and not spec.checkpoint.endswith(".safetensors") and not allow_pickle:
        raise EncoderError(f"{spec.name}'s weights ({spec.repo}: {spec.checkpoint}) are a pickle; pickles are "
                           "loaded only when asked", "pass {allow_pickle} (tensors only, never code)")
    if weights is not None:
        where, model_id, rev = Path(weights).expanduser(), str(Path(weights).expanduser().resolve()), None
    else:
        patterns = spec.hub_files or encoder_weights.HUB_FILES + (list(encoder_weights.PICKLED) if allow_pickle else [])
        where = download(spec.repo, revision or spec.revision, token, "{weights}", patterns, spec.name)
        model_id, rev = spec.repo, where.name  # snapshots/<commit>
        if not allow_pickle and not spec.checkpoint and not any(where.rglob("*.safetensors")):
            raise EncoderError(f"{spec.name} ({spec.repo}): its hub snapshot {rev} has no safetensors weights, and "
                               "pickled ones are fetched only when asked",
                               "pass {allow_pickle} to fetch and load its pickle (tensors only, never code)")
    file = encoder_weights.weight_file(where, allow_pickle)
    state = encoder_weights.to_vit(encoder_weights.read_checkpoint(file), spec)
    net = build(spec, "meta")
    problems = _mismatches(net.state_dict(), state)
    if problems:
        raise EncoderError(f"{file}: not {spec.name}'s weights ({problems})",
                           f"point {{weights}} at {spec.name}'s checkpoint" + (f" ({spec.page})" if spec.page else ""))
    net.load_state_dict(state, assign=True)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    net = net.to(dev, torch.float32).eval()
    marker = (where if where.is_dir() else where.parent) / UNTRAINED_MARKER
    if bf16 is None:
        bf16 = spec.precision == "bf16" and native_bf16(dev)
    digest = encoder_weights.file_hash(file)
    return TorchModel(spec, net, model_id, rev or digest, digest, bf16,
                      marker.read_text() if marker.is_file() else None)


def _mismatches(want: dict, have: dict) -> str:
    missing = [k for k in want if k not in have]
    extra = [k for k in have if k not in want]
    shapes = [f"{k} {tuple(have[k].shape)} != {tuple(want[k].shape)}" for k in want
              if k in have and have[k].shape != want[k].shape]
    parts = [f"{label}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
             for label, keys in (("missing", missing), ("unexpected", extra), ("shapes", shapes)) if keys]
    return "; ".join(parts)
