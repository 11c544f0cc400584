"""Every patch encoder histogen can embed with, condition on and evaluate in: the one place each
encoder's facts live (source, architecture, input, output, licence). engine.embed, the store's
`embeddings/<name>`, the dataset export, `histogen train --set data.embedding=NAME`,
`histogen eval --encoder NAME` and `benchmarks quality --encoder NAME` all read them from here.

Published figures (`params`, `width`) are what the model cards and papers state; the tests build
each architecture on the meta device and hold it to them. `revision` pins a hub commit where one is
known to this file; where it is None the hub's `main` is used and the commit it resolved to is
recorded beside the embeddings (pin one with --revision). No public loader we could read (TRIDENT,
LazySlide, eva) pins a commit of these repos, so none is pinned here.

CONCH v1's image tower is not an entry: its code is on GitHub only (MahmoodLab/CONCH, installed with
`pip install git+https://github.com/Mahmoodlab/CONCH.git` in TRIDENT's own instructions), not on
the package index, which has only an unofficial fork (conch-fork 0.1.0) built on timm, and timm does
not import beside the pinned torch (README, "Embedding patches"). `--encoder conch` says so in one
line (NOT_HERE) and points at `conch-v1.5`, CONCH v1.5 (TITAN's patch encoder), which engine.vit builds.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from engine.errors import UserError
from engine.pipeline import Transform
from engine.vit import ViTConfig

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
BIOPTIMUS = ((0.707223, 0.578729, 0.703617), (0.211883, 0.230117, 0.177517))
HALF = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
UNIT = ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))  # [0, 1] as resized: Path Foundation's contract

# How a checkpoint names its tensors: timm's names load as they are; transformers' are renamed
# (engine.encoder_weights); a TensorFlow SavedModel is a folder TensorFlow loads.
LAYOUTS = ("timm", "hf-vit", "hf-dinov2", "savedmodel")


@dataclass(frozen=True)
class EncoderSpec:
    name: str
    repo: str | None  # Hugging Face repo id; None: local weights only (the stand-ins)
    layout: str  # one of LAYOUTS
    input_size: int
    norm: tuple[tuple[float, float, float], tuple[float, float, float]]  # mean, std on [0, 1]
    width: int  # output width, published
    params: str | None  # parameter count as published ("303M", "1.1B"); None: a TensorFlow graph, not built here
    vit: ViTConfig | None = None  # the torch architecture; None for SavedModels
    pooling: str = "cls"  # engine.vit.POOLINGS
    precision: str = "bf16"  # what the authors run it in: bf16/fp16-safe, or fp32
    licence: str = ""
    gated: bool = False  # the hub asks for accepted terms (and a token) before download
    revision: str | None = None  # pinned hub commit
    trained: bool = True  # False: random weights (a stand-in); its space means nothing
    checkpoint: str | None = None  # the hub repo's weights file; None: its one safetensors file

    def __post_init__(self):
        # The input size is stated once: the ViT's position grid is laid out for it.
        if self.vit is not None and self.vit.image != self.input_size:
            object.__setattr__(self, "vit", replace(self.vit, image=self.input_size))

    @property
    def framework(self) -> str:
        return "tensorflow" if self.layout == "savedmodel" else "torch"

    @property
    def transform(self) -> Transform:
        """The model input engine.pipeline makes from uint8 patches."""
        mean, std = self.norm
        return Transform(self.input_size, mean, std, "NHWC" if self.framework == "tensorflow" else "NCHW")

    @property
    def hub_files(self) -> list[str] | None:
        """What a download fetches: the configs and the named checkpoint; None: the configs and the
        safetensors (engine.encoder_weights.HUB_FILES)."""
        return ["*.json", self.checkpoint] if self.checkpoint else None

    @property
    def page(self) -> str:
        return f"https://huggingface.co/{self.repo}" if self.repo else ""


def _vit_l16() -> ViTConfig:
    return ViTConfig(1024, 24, 16, 4096, patch=16, layer_scale=True)


def _vit_g14(**kw) -> ViTConfig:  # DINOv2's giant with SwiGLU: 1536 wide, 40 blocks, 24 heads
    return ViTConfig(**{"dim": 1536, "depth": 40, "heads": 24, "mlp_hidden": 8192, "patch": 14, "mlp": "swiglu",
                        "layer_scale": True, **kw})


ENCODERS: dict[str, EncoderSpec] = {e.name: e for e in (
    EncoderSpec("path-foundation", "google/path-foundation", "savedmodel", 224, UNIT, 384, None,
                precision="fp32", licence="Health AI Developer Foundations terms", gated=True),
    EncoderSpec("uni", "MahmoodLab/UNI", "timm", 224, IMAGENET, 1024, "303M", _vit_l16(),
                licence="CC-BY-NC-ND-4.0", gated=True),
    EncoderSpec("uni2-h", "MahmoodLab/UNI2-h", "timm", 224, IMAGENET, 1536, "681M",
                _vit_g14(depth=24, registers=8, pos_on_prefix=False), licence="CC-BY-NC-ND-4.0", gated=True),
    EncoderSpec("virchow2", "paige-ai/Virchow2", "timm", 224, IMAGENET, 2560, "632M",
                ViTConfig(1280, 32, 16, 6832, patch=14, mlp="swiglu", registers=4, layer_scale=True),
                pooling="cls+mean", licence="CC-BY-NC-ND-4.0", gated=True),
    EncoderSpec("h-optimus-0", "bioptimus/H-optimus-0", "timm", 224, BIOPTIMUS, 1536, "1.1B",
                _vit_g14(registers=4, pos_on_prefix=False), licence="Apache-2.0"),
    EncoderSpec("h-optimus-1", "bioptimus/H-optimus-1", "timm", 224, BIOPTIMUS, 1536, "1.1B",
                _vit_g14(registers=4, pos_on_prefix=False), licence="Bioptimus non-commercial (model card)",
                gated=True),
    EncoderSpec("h0-mini", "bioptimus/H0-mini", "timm", 224, BIOPTIMUS, 1536, "86M",
                ViTConfig(768, 12, 12, 4096, patch=14, mlp="swiglu", registers=4, pos_on_prefix=False,
                          layer_scale=True),
                pooling="cls+mean", licence="CC-BY-NC-ND-4.0", gated=True),
    EncoderSpec("phikon", "owkin/phikon", "hf-vit", 224, IMAGENET, 768, "86M",
                ViTConfig(768, 12, 12, 3072, patch=16, norm_eps=1e-12), licence="Owkin non-commercial"),
    EncoderSpec("phikon-v2", "owkin/phikon-v2", "hf-dinov2", 224, IMAGENET, 1024, "0.3B", _vit_l16(),
                licence="Owkin non-commercial"),
    EncoderSpec("prov-gigapath", "prov-gigapath/prov-gigapath", "timm", 224, IMAGENET, 1536, "1.13B",
                _vit_g14(patch=16), licence="Apache-2.0", gated=True),
    EncoderSpec("midnight-12k", "kaiko-ai/midnight", "hf-dinov2", 224, HALF, 3072, "1.1B", _vit_g14(),
                pooling="cls+mean", licence="MIT"),
    # CONCH v1.5 (TITAN's patch encoder), as TRIDENT builds it (trident/patch_encoder_models/model_zoo/conchv1_5/
    # conchv1_5.py, CONCHVisionTower): a ViT-L/16 trunk (qkv bias, LayerScale, eps 1e-6, GELU MLP 4096) at
    # 448 px, ImageNet mean/std, then CoCa's contrastive attentional pooler (one query of width 768, 8 heads,
    # over every token) and a LayerNorm: 768 wide. Its weights are a pickle (pytorch_model_vision.bin, keys
    # trunk.*, attn_pool_contrast.*, ln_contrast.*), so it loads with --allow-pickle. TRIDENT runs it in fp16.
    # TRIDENT builds the trunk for 224 px (positions on a 14 x 14 grid, the checkpoint's resampled to it)
    # and interpolates them to 448 px's 28 x 28 at every forward (DINO's way): pos_grid=14 does the same once.
    # The model card names the architecture (ViT-L/16), not a count: ViT-L's 0.3B is the published figure.
    EncoderSpec("conch-v1.5", "MahmoodLab/conchv1_5", "timm", 448, IMAGENET, 768, "0.3B",
                ViTConfig(1024, 24, 16, 4096, patch=16, layer_scale=True, attn_pool=768, pos_grid=14), pooling="attn",
                licence="CC-BY-NC-ND-4.0", gated=True, checkpoint="pytorch_model_vision.bin"),
    # A ViT-Ti/16 with random weights (histosynth.standin_model --arch torch-vit writes one) for tests and
    # benchmarks of the torch path; Path Foundation's stand-ins are SavedModels given as its --weights.
    EncoderSpec("standin-vit", None, "timm", 224, IMAGENET, 192, "5.5M",
                ViTConfig(192, 12, 3, 768, patch=16), trained=False),
)}
DEFAULT = "path-foundation"

# Encoders a researcher will ask for by name that histogen does not build, and why: one line each
# (the problem and the hint of the error `--encoder NAME` gives).
NOT_HERE: dict[str, tuple[str, str]] = {
    "conch": ("conch (MahmoodLab/CONCH, CONCH v1's image tower): its code is on GitHub only (MahmoodLab/CONCH), "
              "not on the package index (which has an unofficial fork, conch-fork, built on timm, which does not "
              "import beside this torch), so histogen does not build it",
              "use --encoder conch-v1.5 (CONCH v1.5, TITAN's patch encoder, "
              "https://huggingface.co/MahmoodLab/conchv1_5), or embed with CONCH's own code"),
}


class EncoderError(UserError):
    """An encoder that is unknown or cannot be loaded; the message says what to do."""


def spec(name: str) -> EncoderSpec:
    """The registry's entry, read now (not at import): the one place the encoder's facts live."""
    try:
        return ENCODERS[name]
    except KeyError:
        if name in NOT_HERE:
            raise EncoderError(*NOT_HERE[name]) from None
        raise EncoderError(f"unknown encoder {name!r}", f"choose one of {', '.join(ENCODERS)}") from None



def named(ref: str) -> tuple[str, str | None] | None:
    """A command line's encoder reference `NAME` or `NAME=WEIGHTS` as (name, local weights or None);
    None where `ref` names no registry encoder (a SavedModel folder, a hub id, a TorchScript file);
    an encoder of NOT_HERE raises its one line."""
    name, _, weights = ref.partition("=")
    if name in NOT_HERE:
        spec(name)
    return (name, weights or None) if name in ENCODERS else None


class SpecShape:
    """A loaded encoder's input size and output width, read from its registry entry (`spec`)."""

    spec: EncoderSpec

    @property
    def input_size(self) -> int:
        return self.spec.input_size

    @property
    def width(self) -> int:
        return self.spec.width


_VIT_NAMES = {(192, 12): "ViT-Ti", (384, 12): "ViT-S", (768, 12): "ViT-B", (1024, 24): "ViT-L", (1280, 32): "ViT-H",
              (1536, 24): "ViT-H", (1536, 40): "ViT-g"}
_POOLINGS = {"cls": "class token", "cls+mean": "class + mean of patch tokens", "attn": "attentional pooler"}


def architecture(e: EncoderSpec) -> str:
    """What the entry builds, in words: `ViT-L/16`, `ViT-g/14, SwiGLU, 4 registers`, ..."""
    if e.vit is None:
        return "TensorFlow SavedModel"
    c = e.vit
    parts = [f"{_VIT_NAMES.get((c.dim, c.depth), f'ViT {c.dim}x{c.depth}')}/{c.patch}"]
    parts += ["SwiGLU"] * (c.mlp == "swiglu") + [f"{c.registers} registers"] * bool(c.registers)
    return ", ".join(parts)


def markdown_table() -> str:
    """The registry as the README shows it (a test holds the README to it):
    `python -m engine.encoder_registry` prints it."""
    rows = ["| name | hub repo | architecture | input | width | pooling | params | licence | gated |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for e in ENCODERS.values():
        repo = e.repo or "none: `python -m histosynth.standin_model DIR --arch torch-vit`"
        licence = e.licence or ("random weights" if not e.trained else "")
        rows.append(f"| `{e.name}` | {repo} | {architecture(e)} | {e.input_size} px | {e.width} | "
                    f"{_POOLINGS.get(e.pooling, e.pooling) if e.vit else '(its signature)'} | {e.params or ''} | "
                    f"{licence} | {'yes' if e.gated else 'no'} |")
    for name in NOT_HERE:
        rows.append(f"| `{name}` | not built: its code is not on the package index (use `conch-v1.5`) "
                    "| | | | | | | |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(markdown_table())
