"""The encoder registry: every entry built at full size on the meta device against its published
parameter count and width; the small ones run for real on two patches with random weights;
weights load from a --weights folder, from the hub's local cache laid out as the hub lays it out,
from transformers' names, and from a pickle only when asked; offline without weights is one line."""
from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest
import torch

from engine.encoder_registry import ENCODERS, EncoderError, spec
from engine.encoder_weights import weight_file
from engine.pipeline import make_resizer
from engine.torch_encoder import TorchModel, build, load
from engine.vit import pool
from histosynth.standin_model import save_torch_standin

TORCH = [name for name, e in ENCODERS.items() if e.vit is not None]
SMALL = ["standin-vit", "phikon", "h0-mini"]  # under 100M parameters: a real forward costs seconds


def published(text: str) -> tuple[float, float]:
    """'1.1B' -> (1100e6, 50e6): the figure and half a unit of its last digit (its rounding), at least 0.5 %."""
    number, unit = text[:-1], {"M": 1e6, "B": 1e9}[text[-1]]
    decimals = len(number.partition(".")[2])
    value = float(number) * unit
    return value, max(0.5 * 10 ** -decimals * unit, 0.005 * value)


@pytest.mark.parametrize("name", TORCH)
def test_full_size_architecture_matches_published_figures(name):
    e = spec(name)
    net = build(e, "meta")
    count = sum(p.numel() for p in net.parameters())
    value, tolerance = published(e.params)
    assert abs(count - value) <= tolerance, f"{name}: {count / 1e6:.1f}M parameters, published {e.params}"
    with torch.device("meta"):
        tokens = net(torch.zeros(2, 3, e.input_size, e.input_size))
    assert tokens.shape == (2, e.vit.prefix + e.vit.grid ** 2, e.vit.dim)
    assert pool(tokens, e.vit.prefix, e.pooling, net).shape == (2, e.width)
    assert e.transform.size == e.vit.image and e.transform.layout == "NCHW"


def test_the_input_size_is_stated_once():
    """The ViT's position grid follows the entry's input size (CONCH v1.5: 448 px, a 28 x 28 grid)."""
    assert spec("conch-v1.5").vit.grid == 28 and spec("uni").vit.grid == 14
    smaller = dataclasses.replace(spec("standin-vit"), input_size=112)
    assert smaller.vit.image == 112 and smaller.vit.grid == 7


def test_published_widths_and_poolings():
    widths = {n: (e.width, e.pooling) for n, e in ENCODERS.items()}
    assert widths["virchow2"] == (2560, "cls+mean") and widths["midnight-12k"] == (3072, "cls+mean")
    assert widths["h0-mini"] == (1536, "cls+mean") and widths["uni2-h"] == (1536, "cls")
    assert widths["path-foundation"] == (384, "cls") and ENCODERS["path-foundation"].framework == "tensorflow"
    assert widths["conch-v1.5"] == (768, "attn") and spec("conch-v1.5").input_size == 448


def test_conch_v1_is_one_line_pointing_at_v1_5():
    from engine.encoder_registry import named

    for call in (lambda: spec("conch"), lambda: named("conch"), lambda: named("conch=/weights")):
        with pytest.raises(EncoderError) as err:
            call()
        line = err.value.message()
        assert "\n" not in line and "not on the package index" in line and "MahmoodLab/CONCH" in line
        assert "--encoder conch-v1.5" in line


def patches(n=2, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 96, 96, 3), dtype=np.uint8)


@pytest.mark.parametrize("name", SMALL)
def test_small_encoders_run_on_two_patches(name):
    e = spec(name)
    torch.manual_seed(0)
    model = TorchModel(e, build(e).eval(), name, "random", "", bf16=False)
    x = make_resizer(e.transform, "torch")(patches())
    assert x.shape == (2, 3, 224, 224)
    y = model(x)
    assert y.shape == (2, e.width) and y.dtype == np.float32 and np.isfinite(y).all()
    assert np.abs(y[0] - y[1]).max() > 1e-3  # two different patches, two different embeddings


def test_bf16_autocast_stays_close_to_fp32():
    e = spec("standin-vit")
    torch.manual_seed(0)
    net = build(e).eval()
    x = make_resizer(e.transform, "torch")(patches(4))
    full, half = (TorchModel(e, net, "t", "r", "", bf16=b)(x) for b in (False, True))
    cos = (full * half).sum(1) / np.linalg.norm(full, axis=1) / np.linalg.norm(half, axis=1)
    assert cos.min() > 0.99


@pytest.fixture(scope="module")
def standin(tmp_path_factory):
    return save_torch_standin(tmp_path_factory.mktemp("standin-vit"), seed=3)


def reference_output(x, seed=3, name="standin-vit") -> np.ndarray:
    torch.manual_seed(seed)
    net = build(spec(name)).eval()
    with torch.no_grad():
        return pool(net(x), net.config.prefix, spec(name).pooling).numpy()


def test_weights_folder_loads_the_same_network(standin):
    model = load(spec("standin-vit"), weights=standin, device="cpu", bf16=False)
    x = make_resizer(model.spec.transform, "torch")(patches())
    np.testing.assert_allclose(model(x), reference_output(x), atol=1e-5)
    assert model.marker and "random weights" in model.marker
    attrs = model.attrs()
    assert attrs["encoder"] == "standin-vit" and attrs["revision"] == attrs["weights_hash"] and attrs["width"] == 192
    assert re.fullmatch(r"sha256:[0-9a-f]{16}", attrs["weights_hash"])
    assert attrs["mean"] == [0.485, 0.456, 0.406] and attrs["input_size"] == 224
    same_file = load(spec("standin-vit"), weights=standin / "model.safetensors", device="cpu", bf16=False)
    assert same_file.weights_hash == model.weights_hash


def hub_cache(root, repo: str, files: dict, commit: str = "0" * 39 + "1"):
    """A repo in huggingface_hub's cache layout: refs/main -> snapshots/<commit>/<files>."""
    folder = root / f"models--{repo.replace('/', '--')}"
    snapshot = folder / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for name, source in files.items():
        (snapshot / name).write_bytes(source.read_bytes())
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(commit)
    return commit


@pytest.fixture
def offline(monkeypatch, tmp_path):
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def test_loads_from_the_hub_cache_with_its_commit(standin, offline):
    e = dataclasses.replace(spec("standin-vit"), repo="histogen-test/tiny-vit")
    commit = hub_cache(offline, e.repo, {"model.safetensors": standin / "model.safetensors",
                                         "config.json": standin / "config.json"})
    model = load(e, device="cpu", bf16=False)
    assert model.id == "histogen-test/tiny-vit" and model.revision == commit
    x = make_resizer(e.transform, "torch")(patches())
    np.testing.assert_allclose(model(x), reference_output(x), atol=1e-5)
    assert model.attrs()["weights_hash"] == load(e, weights=standin, device="cpu", bf16=False).weights_hash


@pytest.mark.parametrize("name", ["uni2-h", "virchow2"])
def test_offline_without_weights_is_one_line(name, offline):
    with pytest.raises(EncoderError) as err:
        load(spec(name))
    line = err.value.message({"weights": "--weights PATH"})
    e = spec(name)
    assert "\n" not in line
    assert f"{name} ({e.repo})" in line and "cannot reach the Hugging Face Hub" in line
    assert f"https://huggingface.co/{e.repo}" in line and "--weights PATH" in line


def test_a_stand_in_without_weights_says_how_to_make_them():
    with pytest.raises(EncoderError, match="standin_model --arch torch-vit"):
        load(spec("standin-vit"))


def test_pickles_only_when_asked(standin, tmp_path):
    from safetensors.torch import load_file

    folder = tmp_path / "pickled"
    folder.mkdir()
    torch.save(load_file(str(standin / "model.safetensors")), folder / "pytorch_model.bin")
    with pytest.raises(EncoderError) as err:
        weight_file(folder)
    assert "only pickled weights (pytorch_model.bin)" in err.value.message({"allow_pickle": "--allow-pickle"})
    assert "--allow-pickle" in err.value.message({"allow_pickle": "--allow-pickle"})
    with pytest.raises(EncoderError, match="pickles are loaded only when asked"):
        load(spec("standin-vit"), weights=folder / "pytorch_model.bin")
    model = load(spec("standin-vit"), weights=folder, allow_pickle=True, device="cpu", bf16=False)
    assert model.weights_hash != load(spec("standin-vit"), weights=standin, device="cpu", bf16=False).weights_hash
    x = make_resizer(model.spec.transform, "torch")(patches())
    np.testing.assert_allclose(model(x), reference_output(x), atol=1e-5)


def to_transformers_dinov2(state: dict) -> dict:
    """timm names -> transformers' Dinov2Model names (the inverse of what loading does), by hand."""
    out = {"embeddings.cls_token": state["cls_token"], "embeddings.position_embeddings": state["pos_embed"],
           "embeddings.mask_token": torch.zeros(1, state["cls_token"].shape[-1]),
           "layernorm.weight": state["norm.weight"], "layernorm.bias": state["norm.bias"],
           "pooler.dense.weight": torch.zeros(1)}
    for key in ("weight", "bias"):
        out[f"embeddings.patch_embeddings.projection.{key}"] = state[f"patch_embed.proj.{key}"]
    blocks = {int(k.split(".")[1]) for k in state if k.startswith("blocks.")}
    for i in blocks:
        b, h = f"blocks.{i}.", f"encoder.layer.{i}."
        for key in ("weight", "bias"):
            q, k, v = state[b + f"attn.qkv.{key}"].chunk(3)
            out.update({h + f"attention.attention.query.{key}": q, h + f"attention.attention.key.{key}": k,
                        h + f"attention.attention.value.{key}": v,
                        h + f"attention.output.dense.{key}": state[b + f"attn.proj.{key}"],
                        h + f"norm1.{key}": state[b + f"norm1.{key}"], h + f"norm2.{key}": state[b + f"norm2.{key}"],
                        h + f"mlp.fc1.{key}": state[b + f"mlp.fc1.{key}"],
                        h + f"mlp.fc2.{key}": state[b + f"mlp.fc2.{key}"]})
        out[h + "layer_scale1.lambda1"] = state[b + "ls1.gamma"]
        out[h + "layer_scale2.lambda1"] = state[b + "ls2.gamma"]
    return out


def test_transformers_dinov2_checkpoints_load_under_timm_names(tmp_path):
    from safetensors.torch import save_file

    base = spec("standin-vit")
    e = dataclasses.replace(base, layout="hf-dinov2", vit=dataclasses.replace(base.vit, layer_scale=True))
    torch.manual_seed(5)
    net = build(e).eval()
    for block in net.blocks:  # LayerScale weights that matter, so a swapped name would show
        block.ls1.gamma.data.uniform_(0.5, 1.5)
        block.ls2.gamma.data.uniform_(0.5, 1.5)
    hf = to_transformers_dinov2(net.state_dict())
    save_file({"dinov2." + k: v.contiguous() for k, v in hf.items()}, str(tmp_path / "model.safetensors"))
    model = load(e, weights=tmp_path, device="cpu", bf16=False)
    x = make_resizer(e.transform, "torch")(patches())
    with torch.no_grad():
        want = pool(net(x), e.vit.prefix, e.pooling).numpy()
    np.testing.assert_allclose(model(x), want, atol=1e-5)


def test_weights_of_another_encoder_are_refused(standin):
    with pytest.raises(EncoderError, match="not h0-mini's weights.*missing: reg_token.*shapes"):
        load(spec("h0-mini"), weights=standin)
    with pytest.raises(EncoderError, match="no embeddings.cls_token.*not phikon's weights"):
        load(spec("phikon"), weights=standin)


def test_a_position_embedding_for_another_grid_is_resampled(standin, tmp_path):
    """A checkpoint laid out for 448 px (a 28 x 28 grid, as DINOv2-style repos often are) loads into the
    registry's 224 px model: the class token's entry kept, a smooth field resampled to 14 x 14."""
    from safetensors.torch import load_file, save_file

    state = load_file(str(standin / "model.safetensors"))
    ramp = torch.linspace(0, 1, 28).repeat(28, 1).reshape(1, 784, 1).expand(1, 784, 192)  # rises along x
    state["pos_embed"] = torch.cat([torch.full((1, 1, 192), 7.0), ramp], dim=1).contiguous()
    save_file(state, str(tmp_path / "model.safetensors"))
    model = load(spec("standin-vit"), weights=tmp_path, device="cpu", bf16=False)
    pos = model.net.pos_embed.detach()
    assert pos.shape == (1, 197, 192) and torch.all(pos[0, 0] == 7.0)
    grid = pos[0, 1:, 0].reshape(14, 14)
    assert torch.allclose(grid[0], grid[5]) and torch.all(grid[:, 1:] > grid[:, :-1])  # still rises along x only
    assert 0 <= grid.min() < 0.05 and 0.95 < grid.max() <= 1


def conch_like(width=48):
    """CONCH v1.5's entry at a tiny size: the same layout, trunk, pooler and checkpoint file."""
    from engine.vit import ViTConfig

    return dataclasses.replace(spec("conch-v1.5"), input_size=64, width=width,
                               vit=ViTConfig(64, 2, 4, 128, patch=16, layer_scale=True, attn_pool=width))


def reference_attentional_pooler(tokens, state, heads=8):
    """CoCa's pooler as MahmoodLab's code computes it (einsum, max subtracted), written out here."""
    ln = torch.nn.functional.layer_norm
    p = "attn_pool_contrast."
    x = ln(tokens, tokens.shape[-1:], state[p + "ln_k.weight"], state[p + "ln_k.bias"])
    q = ln(state[p + "query"], state[p + "query"].shape[-1:], state[p + "ln_q.weight"], state[p + "ln_q.bias"])
    q = (q @ state[p + "to_q.weight"].T).expand(len(x), -1, -1)
    k, v = (x @ state[p + "to_kv.weight"].T).chunk(2, dim=-1)
    split = lambda t: t.reshape(t.shape[0], t.shape[1], heads, -1).permute(0, 2, 1, 3)  # noqa: E731
    q, k, v = split(q), split(k), split(v)
    sim = torch.einsum("bhid,bhjd->bhij", q * q.shape[-1] ** -0.5, k)
    out = torch.einsum("bhij,bhjd->bhid", (sim - sim.amax(-1, keepdim=True)).softmax(-1), v)
    out = out.permute(0, 2, 1, 3).reshape(len(x), -1, q.shape[1] * q.shape[-1]) @ state[p + "to_out.weight"].T
    w = state["ln_contrast.weight"]
    return ln(out[:, 0], w.shape, w, state["ln_contrast.bias"])


def test_conch_v1_5_checkpoint_loads_with_its_pooler(tmp_path):
    """A pickled checkpoint laid out as MahmoodLab/conchv1_5's (trunk.*, attn_pool_contrast.*, ln_contrast.*)
    loads only with --allow-pickle, and embeds as the trunk then CoCa's pooler and LayerNorm do."""
    e = conch_like()
    torch.manual_seed(4)
    net = build(e).eval()
    state = {("" if k.startswith(("attn_pool_contrast.", "ln_contrast.")) else "trunk.") + k: v
             for k, v in net.state_dict().items()}
    torch.save(state, tmp_path / e.checkpoint)
    with pytest.raises(EncoderError, match="only pickled weights"):
        load(e, weights=tmp_path)
    model = load(e, weights=tmp_path, allow_pickle=True, device="cpu", bf16=False)
    x = make_resizer(e.transform, "torch")(patches())
    with torch.no_grad():
        want = reference_attentional_pooler(net(x), net.state_dict()).numpy()
    y = model(x)
    assert y.shape == (2, 48) and model.attrs()["pooling"] == "attn"
    np.testing.assert_allclose(y, want, atol=1e-5)


def test_conch_v1_5_from_the_hub_asks_for_allow_pickle_before_downloading(offline):
    with pytest.raises(EncoderError) as err:
        load(spec("conch-v1.5"))
    line = err.value.message({"allow_pickle": "--allow-pickle"})
    assert "MahmoodLab/conchv1_5: pytorch_model_vision.bin" in line and "--allow-pickle" in line
    assert spec("conch-v1.5").hub_files == ["*.json", "pytorch_model_vision.bin"]


def test_path_foundations_contract_is_read_from_the_registry_by_every_consumer(tmp_path, monkeypatch, offline):
    """Path Foundation's entry changed (hub id, input size, width) reaches engine.embed's default model,
    its SavedModel check and store record, the stand-in's interface, the dataset's defaults for older
    stores and tables, and evaluation's encoder, with nothing else edited (the stand-in ViT's chain
    through training is tests/histogen/test_encoder_chain.py)."""
    import pyarrow.parquet as pq

    import engine.embed
    from engine import encoder_registry
    from engine.dataset import schema
    from engine.dataset.export import export_parquet
    from engine.dataset.table import _input_sizes
    from engine.store import PatchStore
    from histogen.encoders import load_encoder
    from histosynth.standin_model import save_standin
    from tests.support.stores import make_store

    changed = dataclasses.replace(spec("path-foundation"), repo="histogen-test/pf-next", input_size=112, width=64)
    monkeypatch.setitem(encoder_registry.ENCODERS, "path-foundation", changed)

    assert engine.embed.DEFAULT_MODEL == "histogen-test/pf-next"
    with pytest.raises(EncoderError, match="histogen-test/pf-next.*cannot reach the Hugging Face Hub"):
        engine.embed.load_encoder(engine.embed.EmbedConfig())  # the default model is the registry's, read now
    pf = save_standin(tmp_path / "pf")  # the stand-in takes the changed interface
    model = engine.embed.load_model(str(pf))
    assert (model.input_size, model.width, model.spec.transform.size) == (112, 64, 112)

    store = make_store(tmp_path / "p.zarr", {"s1": 5, "s2": 4}, patch=32, embeddings=False)
    assert engine.embed.main(["--store", str(store), "--weights", str(pf), "--quiet", "--pipeline", "torch"]) == 0
    s = PatchStore.open(store)
    assert s.embedding_width() == 64 and s.embeddings_attrs("s1")["input_size"] == 112

    assert (schema.model_id(), schema.input_size()) == ("histogen-test/pf-next", 112)
    assert _input_sizes(np.array(["path-foundation", "uni"])).tolist() == [[112, 112], [224, 224]]
    for sid in s.slide_ids():  # an older record: no input size, no model id
        s.slide(sid).attrs.update(level=0, read_size=32)
        attrs = {k: v for k, v in s.embeddings_attrs(sid).items() if k not in ("input_size", "model", "status")}
        s.write_embeddings(sid, s.embeddings(sid), attrs, "path-foundation")
    out = tmp_path / "out"
    table = pq.read_table(export_parquet(store, out))
    assert table["resize"][0].as_py() == [112, 112] and len(table["image_embedding_vector"][0].as_py()[0]) == 64
    assert "path-foundation (histogen-test/pf-next)" in (out / "README.md").read_text()

    encoder = load_encoder(f"path-foundation={pf}", pipeline="torch")
    assert (encoder.transform.size, encoder.width) == (112, 64)
    assert encoder(s.read_patches("s1", [0, 1])).shape == (2, 64)


def test_the_readme_table_is_the_registry():
    """README's encoder table is `python -m engine.encoder_registry`'s output, entry for entry."""
    from pathlib import Path

    from engine.encoder_registry import markdown_table

    lines = (Path(__file__).parents[2] / "README.md").read_text().splitlines()
    start = lines.index("  | name | hub repo | architecture | input | width | pooling | params | licence | gated |")
    end = next(i for i in range(start, len(lines)) if not lines[i].startswith("  |"))
    assert [line.strip() for line in lines[start:end]] == markdown_table().splitlines(), \
        "README's encoder table differs from the registry: paste `python -m engine.encoder_registry` into it"


def test_a_hub_repo_without_safetensors_asks_for_allow_pickle(standin, offline, tmp_path):
    """A repo whose weights are only a pickle (pytorch_model.bin, as many of these are): one line
    asking for --allow-pickle, and with it the pickle loads from the cache."""
    from safetensors.torch import load_file

    e = dataclasses.replace(spec("standin-vit"), repo="histogen-test/pickled-vit")
    pickle = tmp_path / "pytorch_model.bin"
    torch.save(load_file(str(standin / "model.safetensors")), pickle)
    commit = hub_cache(offline, e.repo, {"config.json": standin / "config.json", "pytorch_model.bin": pickle})
    with pytest.raises(EncoderError) as err:
        load(e)
    line = err.value.message({"allow_pickle": "--allow-pickle"})
    assert f"histogen-test/pickled-vit): its hub snapshot {commit} has no safetensors weights" in line
    assert "pass --allow-pickle" in line and "\n" not in line
    model = load(e, allow_pickle=True, device="cpu", bf16=False)
    assert model.revision == commit
    x = make_resizer(e.transform, "torch")(patches())
    np.testing.assert_allclose(model(x), reference_output(x), atol=1e-5)


def test_conch_v1_5_positions_are_interpolated_as_trident_does(tmp_path):
    """CONCH v1.5's positions as TRIDENT computes them at every forward: the checkpoint's resampled to
    the 224 px grid on loading (timm's resample_abs_pos_embed: bilinear), then to the input's grid
    (DINO's interpolate_pos_encoding: bicubic, scale factor (grid + 0.1) / 14); here done once."""
    import torch.nn.functional as F
    from engine.vit import ViTConfig

    full = spec("conch-v1.5")
    assert (full.vit.pos_grid, full.vit.grid) == (14, 28)
    e = dataclasses.replace(conch_like(), vit=ViTConfig(64, 2, 4, 128, patch=16, layer_scale=True, attn_pool=48,
                                                      pos_grid=2))  # 64 px: a 4 x 4 grid from 2 x 2
    torch.manual_seed(6)
    net = build(e).eval()
    state = {("" if k.startswith(("attn_pool_contrast.", "ln_contrast.")) else "trunk.") + k: v
             for k, v in net.state_dict().items()}
    stored = torch.randn(1, 1 + 3 * 3, 64)  # the checkpoint's positions: a 3 x 3 grid and the class entry
    state["trunk.pos_embed"] = stored
    torch.save(state, tmp_path / e.checkpoint)
    model = load(e, weights=tmp_path, allow_pickle=True, device="cpu", bf16=False)

    grid = stored[:, 1:].reshape(1, 3, 3, 64).permute(0, 3, 1, 2)
    on_224 = F.interpolate(grid, size=(2, 2), mode="bilinear", antialias=False)
    at_input = F.interpolate(on_224, scale_factor=(4.1 / 2, 4.1 / 2), mode="bicubic")
    want = torch.cat([stored[:, :1], at_input.permute(0, 2, 3, 1).reshape(1, 16, 64)], dim=1)
    torch.testing.assert_close(model.net.pos_embed.detach(), want)


@pytest.mark.gpu
def test_the_gpu_path_loads_on_cuda_in_bf16_and_matches_the_cpu(standin):
    """On a CUDA device `load` puts the encoder there and autocasts to bf16 (native there), and its
    embeddings stay those of the fp32 CPU forward. CPU twin: test_bf16_autocast_stays_close_to_fp32."""
    x = make_resizer(spec("standin-vit").transform, "torch")(patches(8))
    gpu = load(spec("standin-vit"), weights=standin, device="cuda")
    assert gpu.device.type == "cuda" and gpu.bf16
    cpu = load(spec("standin-vit"), weights=standin, device="cpu", bf16=False)
    a, b = gpu(x), cpu(x)
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert a.shape == b.shape == (8, gpu.width) and cos.min() > 0.99
