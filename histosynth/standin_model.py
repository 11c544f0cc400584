"""TensorFlow SavedModels with Path Foundation's serving interface and random weights.

Path Foundation is gated on the Hugging Face Hub and cannot be downloaded everywhere; these models
let the demo, the tests and the benchmarks run the real loading and inference path:
`tf.saved_model.load(dir).signatures["serving_default"]`, input float32 (N, size, size, 3) in
[0, 1], output `{"output_0": (N, width)}`, with Path Foundation's size and width as
engine.encoder_registry states them when the model is saved. `vit-s16` costs what the real model
(a ViT-S/16) costs per patch; `tiny` is for tests. The other arguments build deliberately wrong models for tests.

`torch-vit` is the registry's `standin-vit` instead (engine.encoder_registry): a ViT-Ti/16 with
random weights in a folder laid out as a timm repo on the hub (config.json, model.safetensors),
for `--encoder standin-vit --weights OUT_DIR`.

Every stand-in carries the untrained marker, untrained.json (in assets.extra/ of a SavedModel; the
name is histogen.encoders.UNTRAINED_MARKER; histosynth imports nothing of histogen), so
`histogen eval` says that Fréchet distance and precision/recall in its space mean nothing.

    python -m histosynth.standin_model OUT_DIR [--arch vit-s16|tiny|torch-vit]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ARCHS = ("tiny", "vit-s16")
TORCH_ARCH = "torch-vit"


def save_standin(out: Path, arch: str = "tiny", width: int | None = None, input_size: int | None = None,
                 output_key: str = "output_0", nan: bool = False, seed: int = 0) -> Path:
    """`width` and `input_size`: Path Foundation's, as engine.encoder_registry states them, unless given."""
    import tensorflow as tf

    from engine.encoder_registry import DEFAULT, spec

    width, input_size = width or spec(DEFAULT).width, input_size or spec(DEFAULT).input_size

    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose {', '.join(ARCHS)}")
    g = tf.random.Generator.from_seed(seed)
    var = lambda *shape, scale=0.02: tf.Variable(g.normal(shape) * scale)  # noqa: E731

    class Model(tf.Module):
        def __init__(self):
            super().__init__()
            if arch == "tiny":
                self.conv = var(8, 8, 3, 32, scale=0.1)
                self.head = var(32, width, scale=0.3)
            else:  # ViT-S/16: 384 wide, 12 blocks, 6 heads, MLP 1536, mean-pooled tokens
                d, tokens = 384, (input_size // 16) ** 2
                self.patch = var(16, 16, 3, d)
                self.pos = var(1, tokens, d)
                self.blocks = [dict(qkv=var(d, 3 * d), proj=var(d, d), fc1=var(d, 4 * d), fc2=var(4 * d, d))
                               for _ in range(12)]
                self.head = var(d, width)

        def _forward(self, x):
            if arch == "tiny":
                h = tf.nn.relu(tf.nn.conv2d(x, self.conv, 8, "VALID"))
                return tf.reduce_mean(h, axis=(1, 2)) @ self.head
            h = tf.nn.conv2d(x, self.patch, 16, "VALID")
            n = tf.shape(h)[0]
            h = tf.reshape(h, (n, -1, self.pos.shape[-1])) + self.pos
            def norm(t):
                return (t - tf.reduce_mean(t, -1, keepdims=True)) * tf.math.rsqrt(
                    tf.math.reduce_variance(t, -1, keepdims=True) + 1e-6)

            for b in self.blocks:
                q, k, v = tf.split(tf.reshape(norm(h) @ b["qkv"], (n, -1, 3 * 6, 64)), 3, axis=2)
                a = tf.nn.softmax(tf.einsum("nqhd,nkhd->nhqk", q, k) / 8.0)
                h = h + tf.reshape(tf.einsum("nhqk,nkhd->nqhd", a, v), (n, -1, self.pos.shape[-1])) @ b["proj"]
                h = h + tf.nn.gelu(norm(h) @ b["fc1"]) @ b["fc2"]
            return norm(tf.reduce_mean(h, axis=1)) @ self.head

        @tf.function(input_signature=[tf.TensorSpec([None, input_size, input_size, 3], tf.float32)])
        def serve(self, x):
            y = self._forward(x)
            if nan:
                y = y * float("nan")
            return {output_key: y}

    m = Model()
    out = Path(out)
    tf.saved_model.save(m, str(out), signatures={"serving_default": m.serve.get_concrete_function()})
    extra = out / "assets.extra"  # TensorFlow's place for files it does not read
    extra.mkdir(exist_ok=True)
    _mark_untrained(extra, arch, seed)
    return out


def _mark_untrained(folder: Path, arch: str, seed: int) -> None:
    (folder / "untrained.json").write_text(json.dumps({"what": "a stand-in with random weights "
                                                               f"(histosynth.standin_model, {arch}, seed {seed})"}))


def save_torch_standin(out: Path, name: str = "standin-vit", seed: int = 0) -> Path:
    """The registry encoder `name`'s architecture with random weights, as its hub repo would hold it."""
    import torch
    from safetensors.torch import save_file

    from engine.encoder_registry import spec
    from engine.torch_encoder import build

    torch.manual_seed(seed)
    net = build(spec(name))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(out / "model.safetensors"))
    (out / "config.json").write_text(json.dumps({"encoder": name, "architecture": "vit", "seed": seed}))
    _mark_untrained(out, TORCH_ARCH, seed)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m histosynth.standin_model", description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path)
    p.add_argument("--arch", choices=ARCHS + (TORCH_ARCH,), default="vit-s16")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    if a.arch == TORCH_ARCH:
        save_torch_standin(a.out, seed=a.seed)
        print(f"stand-in encoder standin-vit (random weights): {a.out}; use --encoder standin-vit --weights {a.out}")
        return 0
    save_standin(a.out, a.arch, seed=a.seed)
    print(f"stand-in model with Path Foundation's interface (random weights, {a.arch}): {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
