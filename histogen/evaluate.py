"""histogen eval: how real a run's samples are, against real held-out patches.

    histogen eval --run runs/NAME --real patches.zarr --n 10000 --out report/
    histogen eval --samples DIR --real patches.zarr --out report/     (images made elsewhere)

Real patches come from the --real stores' slides that the run did not train on, drawn at random
(seeded) and resized to the run's resolution exactly as training resized them (without --run, the
samples' own size is the resolution); generated patches are the run's EMA samples (autoencoders:
reconstructions of those real patches; conditional models: conditioned on those patches' stored
embeddings). Both sides then go through the same encoder preprocessing. Features of the real side
are cached per store, slides, encoder, resolution and draw. Metrics that need a learned encoder
are skipped, with the reason, when none can be loaded; the rest still run.

Every metric has a noise floor: the same number computed between two disjoint draws of real
patches (A, the real side of every comparison, and B, of A's size), in metrics.json's "floor"
beside "metrics", key for key. Model-free measures lead: the classifier two-sample test
(histogen.two_sample), nuclear morphology (histogen.nuclei), stain distributions and diversity;
Fréchet distance and precision/recall are flagged as meaningless when the encoder is untrained
(the stand-in of the demo).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import zarr
from PIL import Image

from engine.embed import DEFAULT_MODEL, EmbedError
from engine.errors import UserError
from engine.pipeline import Transform, make_resizer
from engine.progress import Progress
from engine.store import SlideRef
from histogen import metrics, nuclei
from histogen.batches import list_slides, open_store
from histogen.encoders import Encoder, PixelEncoder, load_encoder
from histogen.labels import slide_labels
from histogen.nuclei import NucleiParams
from histogen.report import write_report
from histogen.run import RunSampler
from histogen.two_sample import TwoSampleConfig, two_sample_test

log = logging.getLogger("histogen.evaluate")
CACHE_VERSION = 3
LEARNED_SPACE = ("frechet_distance", "precision_recall")  # meaningless in an untrained encoder's space


class EvalError(UserError):
    """Inputs that cannot be evaluated; the message says what to do."""


@dataclass(frozen=True)
class EvalConfig:
    n: int = 10000  # generated samples, and at most this many real and training patches
    k: int = 3  # neighbourhood size of precision/recall (the paper's default)
    batch_size: int = 32
    seed: int = 0
    steps: int = 50  # DDIM steps
    guidance: float = 1.0
    encoder: str = DEFAULT_MODEL  # SavedModel dir / hub id, or a TorchScript file
    revision: str | None = None
    pipeline: str = "auto"
    pairs: int = 8  # closest generated/training pairs shown
    grid: int = 64  # patches per picture grid
    cache: Path | None = None  # default: $HISTOGEN_CACHE or ~/.cache/histogen
    two_sample: TwoSampleConfig = TwoSampleConfig()  # its max_per_class is also how many patches nuclei are measured on
    nuclei: NucleiParams = NucleiParams()
    extremes: int = 16  # patches shown per side of the classifier's most confident calls


@dataclass
class Side:
    """What evaluation keeps of one set of patches."""

    features: np.ndarray  # (n, D), D = the encoder's width
    stats: metrics.GaussianStats  # of the features, accumulated batch by batch
    hist: np.ndarray  # (2, OD_BINS) haematoxylin, eosin
    grid: np.ndarray  # uint8 (g, R, R, 3), spread over the set
    sample: np.ndarray  # uint8 (s, R, R, 3), a seeded random subset for the pixel-level tests (C2ST, nuclei, diversity)
    sample_idx: np.ndarray  # (s,) where the subset's patches are in the set (for evaluation per label)

    @property
    def n(self) -> int:
        return len(self.features)


@dataclass
class Patches:
    """A seeded draw of patches from slides: rows of (slide index, store row), in read order."""

    refs: list[SlideRef]
    rows: np.ndarray

    @classmethod
    def draw(cls, refs: list[SlideRef], n: int, seed: int) -> "Patches":
        starts = np.cumsum([0] + [r.n for r in refs])
        flat = np.sort(np.random.default_rng(seed).choice(starts[-1], min(n, int(starts[-1])), replace=False))
        k = np.searchsorted(starts, flat, side="right") - 1  # then each ref's i-th patch in use to its store row
        return cls(refs, np.array([(s, refs[s].store_rows(i)) for s, i in zip(k, flat - starts[k])], np.int64).reshape(-1, 2))

    def split(self, seed: int) -> tuple["Patches", "Patches"]:
        """Two disjoint halves (the larger first when odd), each in read order, chosen by the seed."""
        perm = np.random.default_rng(seed).permutation(len(self.rows))
        half = (len(perm) + 1) // 2
        a, b = (Patches(self.refs, self.rows[np.sort(p)]) for p in (perm[:half], perm[half:]))
        if {tuple(r) for r in a.rows} & {tuple(r) for r in b.rows}:
            raise AssertionError("the floor's real draws overlap")  # cannot happen: the draw has no repeats
        return a, b

    def classes(self, slide_classes: np.ndarray) -> np.ndarray:
        """Each drawn patch's class id, from its slide's (slide_classes[i]: the class of refs[i])."""
        return slide_classes[self.rows[:, 0]]

    def embeddings(self) -> np.ndarray:
        """The stored embeddings of the drawn patches, in read order."""
        return np.concatenate([open_store(self.refs[k].store).embeddings(self.refs[k].slide)[self.rows[self.rows[:, 0] == k, 1]]
                               for k in np.unique(self.rows[:, 0])])

    def key(self) -> list:
        out = []
        for r in self.refs:
            attrs = open_store(r.store).attrs(r.slide)
            out.append([str(Path(r.store).resolve()), r.slide, r.n, attrs.get("fingerprint")])
        return out

    def _open(self, k: int, with_cond: bool) -> tuple:
        """Slide k's store, and its embeddings when `with_cond`."""
        ref = self.refs[k]
        store = open_store(ref.store)
        if not with_cond:
            return store, None
        if store.embeddings_attrs(ref.slide) is None:
            raise EvalError(f"{ref.store}: slide {ref.slide} has no embeddings to condition on; "
                            f"run python -m engine.embed --store {ref.store}")
        return store, store.embeddings(ref.slide)

    def batches(self, resolution: int, batch_size: int, with_cond: bool = False, cycle_to: int | None = None,
                pipeline: str = "auto") -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        """(uint8 (b, R, R, 3), embeddings (b, D) or None), resized as training resizes (no
        augmentation); `cycle_to` repeats the draw up to that many rows."""
        resize = make_resizer(Transform(resolution), pipeline, max_batch=batch_size)
        rows = self.rows if cycle_to is None else self.rows[np.arange(cycle_to) % len(self.rows)]
        current, store, emb = None, None, None  # one slide open at a time: rows are sorted by slide
        for i in range(0, len(rows), batch_size):
            chunk = rows[i : i + batch_size]
            images, conds = None, None
            for k in np.unique(chunk[:, 0]):
                if k != current:
                    current, store, emb = k, *self._open(k, with_cond)
                sel = chunk[:, 0] == k
                got = store.read_patches(self.refs[k].slide, chunk[sel, 1])
                if images is None:
                    images = np.empty((len(chunk),) + got.shape[1:], np.uint8)
                images[sel] = got
                if with_cond:
                    if conds is None:
                        conds = np.empty((len(chunk), emb.shape[1]), np.float32)
                    conds[sel] = emb[chunk[sel, 1]]
            x = resize(images)
            yield (x * 255).round().clamp(0, 255).to(torch.uint8).numpy(), conds


def summarise(batches, encoder: Encoder, n: int, grid: int, keep: int, seed: int) -> Side:
    """Features, stain histograms, a spread-out grid and a random subset of `keep` of a stream of
    uint8 batches (n in all)."""
    show = set(np.linspace(0, max(n - 1, 0), min(grid, n)).astype(int).tolist())
    sample_idx = np.sort(np.random.default_rng(seed).choice(n, min(keep, n), replace=False))
    sample = set(sample_idx.tolist())
    feats, hist, shown, kept, seen = [], np.zeros((2, metrics.OD_BINS), np.int64), [], [], 0
    stats = metrics.GaussianStats(encoder.width)
    for b in batches:
        feats.append(encoder(b))
        stats.update(feats[-1])
        hist += metrics.stain_histograms(b)
        shown += [im for i, im in enumerate(b, seen) if i in show]
        kept += [im for i, im in enumerate(b, seen) if i in sample]
        seen += len(b)
    if not feats:
        raise EvalError("no patches to evaluate")
    return Side(np.concatenate(feats), stats, hist, np.stack(shown), np.stack(kept), sample_idx)


def cache_dir(cfg: EvalConfig) -> Path:
    return Path(cfg.cache or os.environ.get("HISTOGEN_CACHE") or Path.home() / ".cache" / "histogen") / "eval"


def cached_side(patches: Patches, resolution: int, encoder: Encoder, cfg: EvalConfig) -> Side:
    """The Side of stored patches, from the cache when the same draw of the same slides was
    already encoded by the same encoder at the same resolution."""
    key = json.dumps({"v": CACHE_VERSION, "slides": patches.key(), "rows": hashlib.sha256(patches.rows.tobytes()).hexdigest(),
                      "resolution": resolution, "encoder": encoder.key, "grid": cfg.grid, "keep": cfg.two_sample.max_per_class,
                      "seed": cfg.seed}, sort_keys=True)
    path = cache_dir(cfg) / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.npz"
    if path.is_file():
        try:
            with np.load(path) as z:
                if str(z["key"]) == key:
                    log.info("real-patch features from the cache (%s)", path)
                    return Side(z["features"], metrics.GaussianStats.from_arrays({k: z[k] for k in ("n", "mean", "m2")}),
                                z["hist"], z["grid"], z["sample"], z["sample_idx"])
        except (OSError, ValueError, KeyError) as e:
            log.warning("%s: unreadable cache entry (%s); recomputing", path, e)
    images = (b for b, _ in patches.batches(resolution, cfg.batch_size, pipeline=cfg.pipeline))
    side = summarise(images, encoder, len(patches.rows), cfg.grid, cfg.two_sample.max_per_class, cfg.seed)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, key=key, features=side.features, hist=side.hist, grid=side.grid, sample=side.sample,
                 sample_idx=side.sample_idx, **side.stats.to_arrays())
        tmp.replace(path)  # atomic: a killed run never leaves half an entry
    except OSError as e:
        log.warning("cannot cache real-patch features in %s (%s)", path.parent, e)
    return side


def load_samples(path: Path, n: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Images made elsewhere: DIR/samples.zarr (uint8 (n, R, R, 3)) or DIR/*.png; and
    DIR/conditions.npy when there is one."""
    path = Path(path)
    if (path / "samples.zarr").exists():
        images = np.asarray(zarr.open_array(str(path / "samples.zarr"), mode="r")[:n])
    else:
        files = sorted(p for p in path.glob("*.png") if p.name != "grid.png")[:n]
        if not files:
            raise EvalError(f"{path}: no samples.zarr and no PNG files; point --samples at the --out of histogen sample")
        try:
            images = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])
        except ValueError as e:
            raise EvalError(f"{path}: the PNG files differ in size ({e}); evaluate images of one size") from e
    if images.ndim != 4 or images.shape[-1] != 3 or images.shape[1] != images.shape[2] or images.dtype != np.uint8:
        raise EvalError(f"{path}: samples must be square uint8 RGB images, got {images.dtype} {images.shape}")
    cond = np.load(path / "conditions.npy")[: len(images)] if (path / "conditions.npy").is_file() else None
    return images, cond


@dataclass
class Evaluation:
    """metrics.json's content, and the pictures of the report."""

    info: dict
    metrics: dict = field(default_factory=dict)
    skipped: dict = field(default_factory=dict)  # metric -> why it was not computed
    notes: list = field(default_factory=list)
    floor: dict = field(default_factory=dict)  # metric -> the same numbers between two disjoint real draws
    floor_skipped: dict = field(default_factory=dict)  # metric -> why it has no floor
    pictures: dict = field(default_factory=dict)  # name -> uint8 images (not in metrics.json)
    hists: dict = field(default_factory=dict)  # "real" / "generated" / "real_b" -> (2, OD_BINS)
    nuclei: dict = field(default_factory=dict)  # "real" / "generated" / "real_b" -> histogen.nuclei.Nuclei
    per_label: dict = field(default_factory=dict)  # class -> {"metrics": {...}, "floor": {...}} of a run conditioned on labels

    def to_json(self) -> dict:
        return {"info": self.info, "metrics": self.metrics, "floor": self.floor, "floor_skipped": self.floor_skipped,
                "skipped": self.skipped, "notes": self.notes, **({"per_label": self.per_label} if self.per_label else {})}

    def record(self, name: str, value, floor=None, why_no_floor: str | None = None) -> None:
        self.metrics[name] = value
        if floor is not None:
            self.floor[name] = floor
        else:
            self.floor_skipped[name] = why_no_floor or "no second real draw"


def evaluate(real: list[Path], out: Path, run: Path | None = None, samples: Path | None = None,
             cfg: EvalConfig = EvalConfig(), encoder: Encoder | None = None) -> Evaluation:
    """Evaluate a run's samples (or images in `samples`) against the real stores; writes
    out/samples.zarr (when sampling), out/metrics.json and out/report.html."""
    if run is None and samples is None:
        raise EvalError("nothing to evaluate: pass --run RUN, --samples DIR, or both")
    if cfg.n < 2:
        raise EvalError("--n must be at least 2")
    sampler = RunSampler(run) if run is not None else None
    given, given_cond = load_samples(samples, cfg.n) if samples is not None else (None, None)
    resolution = int(given.shape[1]) if given is not None else sampler.cfg.resolution
    kind = sampler.task.kind if sampler else None
    conditional = sampler.conditional if sampler else given_cond is not None
    ev = Evaluation({"run": str(run) if run else None, "step": sampler.step if sampler else None, "kind": kind,
                     "samples": str(samples) if samples else None, "real": [str(s) for s in real],
                     "resolution": resolution, "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()}})

    # Real patches: the --real slides the run did not train on, those of their patches that pass the run's check.
    refs = list_slides(real, qc=sampler.cfg.data.qc if sampler else None, strict=False)
    vocab = sampler.vocabulary if sampler else None
    if vocab is not None:  # a run conditioned on labels: real slides of its classes, samples of their classes
        refs, class_of = known_classes(refs, vocab, ev)
    split = sampler.split() if sampler else {"train": [], "val": []}
    trained = {r.slide for r in split["train"]}  # by id: the same slide in another store is not held out
    held = [r for r in refs if r.slide not in trained]
    ev.info["real_is_training"] = not held
    if not held:
        held = refs
        ev.notes.append("every --real slide was used in training: the real set is not held out, and memorisation has no baseline")
    # Two disjoint draws of one size: A is the real side of every comparison, B measures the floor.
    real_patches, floor_patches = Patches.draw(held, 2 * cfg.n, cfg.seed).split(cfg.seed)
    if len(real_patches.rows) < cfg.n:
        ev.notes.append(f"the held-out real slides have {len(real_patches.rows) + len(floor_patches.rows)} patches: "
                        f"{len(real_patches.rows)} per real draw (two disjoint draws, for the floor), fewer than --n {cfg.n}")

    # The encoder: a learned one if it loads, else pixels (memorisation only).
    if encoder is None:
        try:
            encoder = load_encoder(cfg.encoder, cfg.revision, cfg.pipeline)
        except EmbedError as e:
            reason = f"no encoder: {e.message({'model': '--encoder'})}"  # engine.embed's {model} is our --encoder
            for m in LEARNED_SPACE + (("conditioning",) if conditional else ()):
                ev.skipped[m] = reason
            log.warning("%s; the metrics that need it are skipped", reason)
    features = encoder if encoder is not None and encoder.learned else PixelEncoder(pipeline=cfg.pipeline)
    ev.info["encoder"] = features.key
    ev.info["encoder_untrained"] = features.untrained
    if features.learned and features.untrained:
        ev.notes.insert(0, f"the encoder {features.key} is {features.untrained}: Fréchet distance and precision/recall in its "
                           "space mean nothing here, whatever their values; judge by the classifier two-sample test, nuclei and stain")
    r = cached_side(real_patches, resolution, features, cfg)
    b = cached_side(floor_patches, resolution, features, cfg) if len(floor_patches.rows) >= 2 else None

    # Generated patches.
    slide_classes = np.array([class_of[r] for r in held], np.int64) if vocab else None
    classes = {"real": real_patches.classes(slide_classes), "real_b": floor_patches.classes(slide_classes)} if vocab else {}
    g = generated(sampler, given, given_cond, real_patches, resolution, features, cfg, out, classes.get("real"))
    gen_side = g.side
    ev.info.update(n_real=r.n, n_generated=gen_side.n, n_real_floor=b.n if b else 0)
    ev.pictures.update(real=r.grid, generated=gen_side.grid)
    ev.hists.update(real=r.hist, generated=gen_side.hist, **({"real_b": b.hist} if b else {}))
    against = lambda fn: (fn(gen_side), fn(b) if b is not None else None)  # noqa: E731  (value, floor)

    two_sample(ev, r, gen_side, b, cfg)
    nuclear_morphology(ev, r, gen_side, b, cfg)
    tissue = lambda s: {"tissue_pixels_real": int(r.hist[0].sum()), "tissue_pixels_generated": int(s.hist[0].sum())}  # noqa: E731
    if min(tissue(gen_side).values()) == 0:
        ev.skipped["stain"] = f"no tissue pixels to compare ({tissue(gen_side)})"
    else:
        ev.record("stain", *against(lambda s: {**{f"{name}_w1": metrics.wasserstein_hist(r.hist[c], s.hist[c])
                                                 for c, name in enumerate(("haematoxylin", "eosin"))}, **tissue(s)}))
    diversity(ev, r, gen_side, b)
    if features.learned:
        if min(r.n, gen_side.n) < 2:  # a covariance needs two samples
            ev.skipped["frechet_distance"] = f"needs at least 2 patches on each side (real {r.n}, generated {gen_side.n})"
        else:
            fd = lambda s: metrics.frechet_of(r.stats, s.stats)  # noqa: E731
            ev.record("frechet_distance", fd(gen_side), fd(b) if b is not None and b.n >= 2 else None)
        if min(r.n, gen_side.n) > cfg.k:
            pr = lambda s: dict(zip(("precision", "recall"), metrics.precision_recall(r.features, s.features, cfg.k)), k=cfg.k)  # noqa: E731
            ev.record("precision_recall", pr(gen_side), pr(b) if b is not None and b.n > cfg.k else None)
        else:
            ev.skipped["precision_recall"] = f"needs more than k={cfg.k} patches on each side"
        if features.untrained:
            ev.info["meaningless"] = [m for m in LEARNED_SPACE if m in ev.metrics]
    if conditional:
        conditioning(ev, gen_side, g.cond, held, features, cfg, b, floor_patches)
    if g.recon is not None:
        ev.record("reconstruction", {"psnr_db": float(np.mean(g.recon[0])), "ssim": float(np.mean(g.recon[1])), "n": len(g.recon[0])},
                  why_no_floor="a real patch against itself has no finite counterpart")
    memorisation(ev, split, r, g, b, features, resolution, cfg)
    if vocab is not None:
        per_label(ev, vocab.classes, {"real": r, "generated": gen_side, "real_b": b}, {**classes, "generated": g.classes}, features, cfg)

    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(ev.to_json(), indent=1, allow_nan=False, default=float))
    write_report(ev, out / "report.html")
    return ev


def two_sample(ev: Evaluation, real: Side, gen: Side, floor: Side | None, cfg: EvalConfig) -> None:
    """The classifier two-sample test of real against generated, and of real against real (the floor);
    the generated patches it found most fake and the real ones it found most real."""
    c = cfg.two_sample
    if min(len(real.sample), len(gen.sample)) < c.folds:
        ev.skipped["c2st"] = f"a {c.folds}-fold test needs at least {c.folds} patches per side"
        return
    pairs = [(gen, "generated")] + ([(floor, "floor")] if floor is not None and len(floor.sample) >= c.folds else [])
    results = []
    with Progress(total=len(pairs) * c.folds, desc="two-sample test", unit="fold") as bar:
        for side, _ in pairs:
            results.append(two_sample_test(real.sample, side.sample, c, progress=lambda _: bar.update(1)))
    ev.record("c2st", results[0].to_dict(), results[1].to_dict() if len(results) > 1 else None)
    lo, hi = results[0].ci95
    if hi - lo > 0.2:  # a coin's worth of evidence is not a verdict
        ev.notes.append(f"the two-sample test saw {results[0].n_per_class} patches a side: its 95 % interval ({lo:.2f} to {hi:.2f}) "
                        "is too wide to call the samples real or fake; evaluate more patches (--n, more held-out slides)")
    fake, most_real = results[0].extremes(cfg.extremes)
    ev.pictures["c2st"] = (gen.sample[fake], real.sample[most_real])


def nuclear_morphology(ev: Evaluation, real: Side, gen: Side, floor: Side | None, cfg: EvalConfig) -> None:
    """Nuclei of the pixel-level subsets, segmented with one threshold (set on the real draw)."""
    threshold = cfg.nuclei.threshold
    if threshold is None:
        if real.hist[0].sum() == 0:
            ev.skipped["nuclei"] = "the real patches have no tissue pixels to set the nucleus threshold on"
            return
        threshold = nuclei.otsu_threshold(real.hist[0], metrics.bin_centres())
    sides = {"real": real, "generated": gen, **({"real_b": floor} if floor is not None else {})}
    ev.nuclei = {k: nuclei.measure(s.sample, threshold, cfg.nuclei) for k, s in sides.items()}
    ev.info["nucleus_threshold_od"] = threshold
    cmp = lambda k: {**nuclei.compare(ev.nuclei["real"], ev.nuclei[k]), "patches": len(sides[k].sample)}  # noqa: E731
    ev.record("nuclei", cmp("generated"), cmp("real_b") if floor is not None else None)


def diversity(ev: Evaluation, real: Side, gen: Side, floor: Side | None) -> None:
    """The generated patches' mean pairwise distance, and its ratio to the real draw A's: 1 is the
    real spread, near 0 one repeated image (mode collapse). The floor puts draw B in their place."""
    if min(len(real.sample), len(gen.sample)) < 2:
        ev.skipped["diversity"] = "needs at least 2 patches on each side"
        return
    spread = metrics.pairwise_l1(real.sample)

    def score(side: Side) -> dict:
        d = metrics.pairwise_l1(side.sample)
        return {"pairwise_l1": d, "ratio": d / spread, "real_pairwise_l1": spread}

    # a floor draw exists only with 2 patches or more, and keeps as many as A: no second check
    ev.record("diversity", score(gen), score(floor) if floor is not None else None)


@dataclass
class Generated:
    side: Side
    images: object  # uint8 (n, R, R, 3): a numpy array, or the zarr array the samples were written to
    cond: np.ndarray | None  # what each sample was conditioned on
    recon: tuple | None  # autoencoders: per-image (PSNR, SSIM)
    classes: np.ndarray | None = None  # each sample's class id (runs conditioned on labels)


def generated(sampler, given, given_cond, real_patches: Patches, resolution: int, encoder: Encoder, cfg: EvalConfig,
              out: Path, real_classes: np.ndarray | None = None) -> Generated:
    """The run's samples (or the given images) summarised; a run conditioned on labels samples the
    classes of the real draw (`real_classes`, one per row), cycled, so both sides have one mix of classes."""
    if given is not None:
        batches = (given[i : i + cfg.batch_size] for i in range(0, len(given), cfg.batch_size))
        return Generated(summarise(batches, encoder, len(given), cfg.grid, cfg.two_sample.max_per_class, cfg.seed), given, given_cond, None)
    recon = sampler.reconstructs
    n = len(real_patches.rows) if recon else cfg.n
    # Autoencoders reconstruct the real draw; conditional models take its embeddings as conditions.
    source = real_patches.batches(resolution, cfg.batch_size, with_cond=sampler.conditional,
                                  cycle_to=None if recon else n, pipeline=cfg.pipeline) if sampler.conditional or recon else None
    out.mkdir(parents=True, exist_ok=True)
    arr = zarr.create_array(str(out / "samples.zarr"), shape=(n, resolution, resolution, 3), chunks=(1, resolution, resolution, 3),
                            dtype="uint8", overwrite=True)
    gen = torch.Generator(sampler.device).manual_seed(cfg.seed)
    classes = None if real_classes is None else real_classes[np.arange(n) % len(real_classes)]
    conds, psnrs, ssims = [], [], []

    def stream():
        done = 0
        with Progress(total=n, desc="sample", unit="sample") as bar:
            while done < n:
                m = min(cfg.batch_size, n - done)
                real_b, cond_b = next(source) if source is not None else (None, None)
                images = torch.from_numpy(real_b).permute(0, 3, 1, 2).float() / 127.5 - 1 if recon else None
                y = sampler(m, gen, cond=None if cond_b is None else torch.from_numpy(cond_b), images=images,
                            steps=cfg.steps, guidance=cfg.guidance,
                            label=None if classes is None else torch.from_numpy(classes[done : done + m]))
                if recon:
                    psnrs.append(metrics.psnr(real_b, y))
                    ssims.append(metrics.ssim_uint8(real_b, y))
                if cond_b is not None:
                    conds.append(cond_b)
                arr[done : done + m] = y
                done += m
                bar.update(m)
                yield y

    side = summarise(stream(), encoder, n, cfg.grid, cfg.two_sample.max_per_class, cfg.seed)
    arr.attrs.update({"run": str(sampler.run), "step": sampler.step, "seed": cfg.seed, "steps": cfg.steps, "guidance": cfg.guidance})
    cond = np.concatenate(conds) if conds else None
    if cond is not None:
        np.save(out / "conditions.npy", cond)
    if classes is not None:
        arr.attrs["labels"] = [sampler.vocabulary.classes[c] for c in classes.tolist()]
    return Generated(side, arr, cond, (np.concatenate(psnrs), np.concatenate(ssims)) if recon else None, classes)


def conditioning(ev: Evaluation, gen: Side, cond: np.ndarray | None, held: list[SlideRef], encoder: Encoder,
                 cfg: EvalConfig, floor: Side | None, floor_patches: Patches) -> None:
    """Cosine similarity of each sample's embedding with the one it was conditioned on, against
    random pairs; only meaningful when the encoder is the model that made the conditions. Its
    floor: the real draw B's patches with their own stored embeddings (a perfect generator)."""
    if not encoder.learned:
        return  # skipped above, with the reason the encoder did not load
    if cond is None:
        ev.skipped["conditioning"] = "no conditions.npy next to the samples"
        return
    store = open_store(held[0].store)
    made_by = store.embeddings_attrs(held[0].slide) or {}
    made = f"{made_by.get('model')}@{made_by.get('revision')}"
    if made != encoder.key or cond.shape[1] != gen.features.shape[1]:
        ev.skipped["conditioning"] = f"the conditions are embeddings by {made}, the encoder is {encoder.key}; evaluate with --encoder {made_by.get('model')}"
        return

    def scores(features, cond):
        matched = metrics.cosine_pairs(features, cond)
        shift = int(np.random.default_rng(cfg.seed).integers(1, len(cond))) if len(cond) > 1 else 0
        random = metrics.cosine_pairs(features, np.roll(cond, shift, axis=0))
        return {"cosine_matched": float(matched.mean()), "cosine_random": float(random.mean()), "gap": float(matched.mean() - random.mean())}

    ev.record("conditioning", scores(gen.features, cond), scores(floor.features, floor_patches.embeddings()) if floor is not None else None)


def memorisation(ev: Evaluation, split: dict, real: Side, g: Generated, floor: Side | None, encoder: Encoder, resolution: int,
                 cfg: EvalConfig) -> None:
    """Each generated patch's distance to its nearest training patch, against the same distance
    for held-out real patches (A); the floor puts the real draw B in the generated patches' place.
    The closest pairs are kept for the report."""
    if not split["train"]:
        ev.skipped["memorisation"] = "no training patches known (pass --run to compare with the run's training slides)"
        return
    train = Patches.draw(split["train"], cfg.n, cfg.seed + 1)
    t = cached_side(train, resolution, encoder, cfg)
    d_real = metrics.nearest(real.features, t.features)[0] if real.n and not ev.info.get("real_is_training") else None

    def scores(d):
        m = {"space": encoder.key, "n_train": t.n, "generated_nn_median": float(np.median(d))}
        if d_real is not None:
            m.update(real_nn_median=float(np.median(d_real)), ratio=float(np.median(d) / max(np.median(d_real), 1e-12)),
                     share_below_real_p1=float((d < np.percentile(d_real, 1)).mean()))
        return m

    d_gen, j_gen = metrics.nearest(g.side.features, t.features)
    ev.record("memorisation", scores(d_gen), scores(metrics.nearest(floor.features, t.features)[0]) if floor is not None else None)
    closest = np.argsort(d_gen, kind="stable")[: cfg.pairs]
    nearest_train = Patches(train.refs, train.rows[j_gen[closest]])
    ev.pictures["pairs"] = (np.stack([g.images[int(i)] for i in closest]),
                            np.concatenate([b for b, _ in nearest_train.batches(resolution, cfg.batch_size, pipeline=cfg.pipeline)]),
                            d_gen[closest])


def known_classes(refs: list[SlideRef], vocab, ev: Evaluation) -> tuple[list[SlideRef], dict]:
    """The --real slides whose label the run knows (the rest are left out, with a note), and each
    one's class id."""
    labels = slide_labels(refs, vocab.source)
    kept = {r: vocab.classes.index(lab) for r, lab in zip(refs, labels) if lab in vocab.classes}
    if not kept:
        raise EvalError(f"no --real slide has a label this run knows ({', '.join(vocab.classes)}) "
                        f"from {vocab.source}; give --real stores whose slides carry them")
    if len(kept) < len(refs):
        ev.notes.append(f"{len(refs) - len(kept)} --real slides have no label of the run's classes in {vocab.source} and are left out")
    return list(kept), kept


def per_label(ev: Evaluation, names: tuple, sides: dict, classes: dict, features: Encoder, cfg: EvalConfig) -> None:
    """The model-free measures (and Fréchet distance in the encoder's space) class by class: the real
    draw A's patches of a class against the samples of that class, and against draw B's of it (the floor).
    Each uses the pixel subsets of the sides (and all features for Fréchet)."""
    threshold = ev.info.get("nucleus_threshold_od")
    for c, name in enumerate(names):
        part = {k: (s.sample[classes[k][s.sample_idx] == c], s.features[classes[k] == c])
                for k, s in sides.items() if s is not None}
        real_px, real_feat = part.pop("real")
        real_nuclei = nuclei.measure(real_px, threshold, cfg.nuclei) if threshold is not None and len(real_px) else None
        real_hist = metrics.stain_histograms(real_px) if len(real_px) else None

        def measures(px, feat):
            m = {"patches": len(px)}
            if min(len(px), len(real_px)) >= cfg.two_sample.folds:
                m["c2st"] = two_sample_test(real_px, px, cfg.two_sample).accuracy
            h = metrics.stain_histograms(px) if real_hist is not None and len(px) else None
            if h is not None and min(real_hist[0].sum(), h[0].sum()) > 0:
                m.update({f"{stain}_w1": metrics.wasserstein_hist(real_hist[i], h[i]) for i, stain in enumerate(("haematoxylin", "eosin"))})
            if real_nuclei is not None and len(px):
                m.update({k: v for k, v in nuclei.compare(real_nuclei, nuclei.measure(px, threshold, cfg.nuclei)).items() if k.endswith("_w1")})
            if features.learned and min(len(feat), len(real_feat)) >= 2:
                stats = [metrics.GaussianStats(feat.shape[1]).update(f) for f in (real_feat, feat)]
                m["frechet_distance"] = metrics.frechet_of(*stats)
            return m

        ev.per_label[name] = {"metrics": measures(*part["generated"]),
                              "floor": measures(*part["real_b"]) if "real_b" in part else None}
