"""The evaluation report: one self-contained HTML file (pictures inlined as PNG, histograms as
SVG), so it can be mailed or opened from anywhere; and the console's one line per metric. Every
number is shown beside its floor (the same number between two disjoint real draws), and the
model-free measures come first."""
from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import numpy as np
from PIL import Image

from histogen import metrics
from histogen.images import grid
from histogen.nuclei import FEATURES

MODEL_FREE = ("c2st", "nuclei", "stain", "diversity")  # hold whatever the encoder: they lead the report
GUIDE = {
    "c2st": "Classifier two-sample test: out-of-fold accuracy (k-fold, 95 % Wilson interval) of a small CNN trained "
            "fresh to tell real from generated patches. 0.5 = indistinguishable, 1 = always told apart; compare with "
            "the floor.",
    "nuclei": "Nuclei segmented on the haematoxylin channel: per feature, the 1-d Wasserstein distance between real "
              "and generated distributions divided by the real standard deviation (0 = same; count is per patch, the "
              "rest per nucleus), and the generated means.",
    "frechet_distance": "Fréchet distance of Gaussians fitted to encoder features; 0 for identical distributions, "
                        "lower is better.",
    "precision_recall": "Precision: share of generated patches that fall on the real-patch manifold (realism). Recall: "
                        "share of real patches that the generated manifold covers (diversity). Both in 0..1, higher is "
                        "better.",
    "conditioning": "Cosine similarity of each sample's embedding with the embedding it was conditioned on, against "
                    "random pairs; a positive gap means the condition is followed.",
    "memorisation": "Distance from each generated patch to its nearest training patch, against held-out real patches' "
                    "distance to the training set; a ratio well below 1, or many samples below the real 1st "
                    "percentile, suggests copying.",
    "stain": "1-d Wasserstein distance between real and generated haematoxylin (H) and eosin (E) optical densities on "
             "tissue pixels (colour deconvolution, no learned model); lower is better.",
    "diversity": "Mean L1 distance between every two patches of the generated pixel-level draw (the c2st's, up to "
                 "1000; each area-averaged to 16 px, values on 0..1), and its ratio to the same within the real draw: "
                 "1 = the real spread, near 0 = one image repeated (mode collapse).",
    "reconstruction": "PSNR (dB) and SSIM of autoencoder reconstructions of held-out patches; higher is better.",
}


def _png(images: np.ndarray, scale_to: int = 96) -> str:
    """A grid of uint8 images as a data: URI, each image shown at least `scale_to` px."""
    im = grid(images)
    factor = max(1, scale_to // images.shape[1])
    if factor > 1:
        im = im.resize((im.width * factor, im.height * factor), Image.NEAREST)
    buf = io.BytesIO()
    im.save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


COLOURS = {"real": "#1f77b4", "generated": "#ff7f0e", "real_b": "#999999"}  # real B: the floor's second real draw


def _svg_curves(curves: dict, xs: np.ndarray, lo: float, hi: float, title: str, w: int = 360, h: int = 160) -> str:
    """Density curves (name -> counts on the points xs) normalised to one, on one axis."""
    curves = {k: c.astype(np.float64) / max(c.sum(), 1) for k, c in curves.items()}
    top = max(max(c.max() for c in curves.values()), 1e-12)
    span = hi - lo if hi > lo else 1.0
    sx = lambda v: 30 + (v - lo) / span * (w - 40)  # noqa: E731
    sy = lambda v: h - 20 - v / top * (h - 40)  # noqa: E731
    dash = {"real_b": ' stroke-dasharray="4 3"'}
    lines = [f'<polyline fill="none" stroke="{COLOURS[k]}" stroke-width="1.5"{dash.get(k, "")} points="'
             + " ".join(f"{sx(a):.1f},{sy(b):.1f}" for a, b in zip(xs, c)) + '"/>' for k, c in curves.items()]
    ticks = "".join(f'<text x="{sx(t):.0f}" y="{h - 5}" font-size="10" text-anchor="middle">{t:.3g}</text>'
                    for t in np.linspace(lo, hi, 5))
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}">'
            f'<text x="{w / 2}" y="12" font-size="12" text-anchor="middle">{html.escape(title)}</text>'
            f'<line x1="30" y1="{h - 20}" x2="{w - 10}" y2="{h - 20}" stroke="#999"/>{ticks}{"".join(lines)}</svg>')


def _svg_hist(hists: dict, c: int, title: str) -> str:
    """One stain's optical-density histograms (name -> (2, OD_BINS) counts), 5 bins per point."""
    k = 5
    xs = metrics.bin_centres().reshape(-1, k).mean(1)
    return _svg_curves({n: h[c].reshape(-1, k).sum(1) for n, h in hists.items()}, xs, *metrics.OD_RANGE,
                       f"{title} optical density")


def _svg_samples(samples: dict, title: str, bins: int = 30) -> str:
    """Histograms of 1-d samples (name -> values) on common bins."""
    values = [v for v in samples.values() if len(v)]
    if not values:
        return ""
    lo, hi = min(float(np.min(v)) for v in values), max(float(np.max(v)) for v in values)
    edges = np.linspace(lo, hi if hi > lo else lo + 1, bins + 1)
    return _svg_curves({n: np.histogram(v, edges)[0] for n, v in samples.items()}, (edges[1:] + edges[:-1]) / 2,
                       edges[0], edges[-1], title)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, dict):
        return ", ".join(f"{k} {_fmt(x)}" for k, x in v.items())
    return html.escape(str(v))


def _order(ev) -> list[str]:
    return [k for k in MODEL_FREE if k in ev.metrics] + [k for k in ev.metrics if k not in MODEL_FREE]


def console_lines(ev) -> list[str]:
    """One line per metric: each number with its floor in brackets; the stand-in warning first."""
    lines = [f"WARNING: {n}" for n in ev.notes[:1] if ev.info.get("encoder_untrained")]
    meaningless = set(ev.info.get("meaningless", []))
    for k in _order(ev):
        v, f, data = ev.metrics[k], ev.floor.get(k), ev.train_floor.get(k, {})
        if isinstance(v, dict):
            floored = f if isinstance(f, dict) else {}
            body = ", ".join(f"{k2} {_num(x)}"
                             + (f" [floor {_num(floored[k2])}]" if k2 in floored and k2 != "space" else "")
                             + (f" [training patches {_num(data[k2])}]" if k2 in data else "")
                             for k2, x in v.items())
        else:
            body = _num(v) + (f" [floor {_num(f)}]" if f is not None else "")
        lines.append(f"{k}: {body}" + (" (MEANINGLESS: untrained encoder)" if k in meaningless else "")
                     + ("" if f is not None else f" (no floor: {ev.floor_skipped.get(k, '')})"))
    for name, d in ev.per_label.items():
        floor = d["floor"] or {}
        lines.append(f"label {name}: " + ", ".join(
            f"{k} {_num(v)}" + (f" [floor {_num(floor[k])}]" if k in floor and k != "patches" else "")
            for k, v in d["metrics"].items()))
    lines += [f"{k}: skipped ({why})" for k, why in ev.skipped.items()]
    return lines


def _num(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def write_report(ev, path: Path) -> Path:
    """`ev`: a histogen.evaluate.Evaluation."""
    i = ev.info
    what = i["run"] or i["samples"]
    parts = [f"<h1>histogen eval: {html.escape(str(what))}</h1>",
             "<p>" + html.escape(f"kind {i.get('kind') or 'external samples'}, step {i.get('step')}, "
                                 f"resolution {i['resolution']} px, {i['n_generated']} generated vs {i['n_real']} real "
                                 f"patches from {', '.join(i['real'])}; features: {i['encoder']}") + "</p>"]
    if ev.info.get("encoder_untrained"):
        parts.append(f'<p class="warn">{html.escape(ev.notes[0])}</p>')
    parts += [f'<p class="note">{html.escape(n)}</p>' for n in ev.notes[1 if ev.info.get("encoder_untrained") else 0 :]]
    meaningless = set(ev.info.get("meaningless", []))

    def row(k, data=False):
        floor = _fmt(ev.floor[k]) if k in ev.floor else f"<i>none: {html.escape(ev.floor_skipped.get(k, ''))}</i>"
        flag = "<br><b>meaningless: untrained encoder</b>" if k in meaningless else ""
        trained_on = f"<td>{_fmt(ev.train_floor.get(k, ''))}</td>" if data else ""
        return (f"<tr{' class=bad' if k in meaningless else ''}><td>{k}{flag}</td><td>{_fmt(ev.metrics[k])}</td>"
                f"<td>{floor}</td>{trained_on}<td>{html.escape(GUIDE.get(k, ''))}</td></tr>")

    def header(data=False):
        return ("<tr><th>metric</th><th>real vs generated</th><th>floor: real vs real (disjoint draws)</th>"
                + ("<th>the run's training patches vs real (no model of them is expected to beat this)</th>"
                   if data else "") + "<th>how to read it</th></tr>")
    held = [k for k in _order(ev) if k in MODEL_FREE]
    rest = [k for k in _order(ev) if k not in MODEL_FREE]
    skipped = "".join(f'<tr class="skip"><td>{k}</td><td>skipped</td><td></td><td>{html.escape(v)}</td></tr>'
                      for k, v in ev.skipped.items())
    parts.append("<h2>Model-free measures</h2><p>No learned encoder involved. A value near its floor is as close as "
                 "two draws of real patches are to each other.</p>"
                 f"<table>{header(bool(ev.train_floor))}{''.join(row(k, bool(ev.train_floor)) for k in held)}</table>")
    parts.append(f"<h2>In the encoder's space ({html.escape(i['encoder'])})</h2>"
                 f"<table>{header()}{''.join(row(k) for k in rest)}{skipped}</table>")
    if ev.per_label:
        def cells(d):
            return "".join(f"<td>{_fmt(d.get(k, '')) if d else ''}</td>" for k in cols)
        cols = list(dict.fromkeys(k for d in ev.per_label.values() for k in d["metrics"]))
        rows = "".join(f"<tr><td rowspan=2>{html.escape(n)}</td><td>generated</td>{cells(d['metrics'])}</tr>"
                       f"<tr class=bad><td>floor (real B)</td>{cells(d['floor'])}</tr>"
                       for n, d in ev.per_label.items())
        parts.append("<h2>Per label</h2><p>each class's samples against the held-out real patches of that class; "
                     "the floor row: real against real of that class</p><table><tr><th>label</th><th></th>"
                     + "".join(f"<th>{html.escape(k)}</th>" for k in cols) + f"</tr>{rows}</table>")
    parts.append("<h2>Patches</h2><div class='row'>"
                 f"<figure><img src='{_png(ev.pictures['real'])}'><figcaption>real (held out)</figcaption></figure>"
                 f"<figure><img src='{_png(ev.pictures['generated'])}'><figcaption>generated</figcaption></figure>"
                 "</div>")
    if "c2st" in ev.pictures:
        fake, real = ev.pictures["c2st"]
        parts.append("<h2>What the classifier saw</h2><div class='row'>"
                     f"<figure><img src='{_png(fake)}'><figcaption>generated patches it found most fake</figcaption>"
                     f"</figure><figure><img src='{_png(real)}'><figcaption>real patches it found most real"
                     "</figcaption></figure></div>")
    legend = ("<p>" + ", ".join(f"<span style='color:{c}'>{n.replace('_b', ' (floor draw B, dashed)')}</span>"
                                for n, c in COLOURS.items() if n in ev.hists) + "</p>")
    parts.append(f"<h2>Stain distributions</h2>{legend}<p>tissue pixels</p><div class='row'>"
                 + "".join(_svg_hist(ev.hists, c, name) for c, name in enumerate(("haematoxylin", "eosin"))) + "</div>")
    if ev.nuclei:
        parts.append(f"<h2>Nuclei</h2>{legend}<p>haematoxylin optical density above "
                     f"{ev.info['nucleus_threshold_od']:.3g} (Otsu on the real draw's tissue pixels unless set); count "
                     "per patch, the rest per nucleus wholly inside its patch</p><div class='row'>"
                     + "".join(_svg_samples({k: n.feature(f) for k, n in ev.nuclei.items()}, f) for f in FEATURES)
                     + "</div>")
    if "pairs" in ev.pictures:
        gen, train, dist = ev.pictures["pairs"]
        figs = "".join(f"<figure><img src='{_png(np.stack([g, t]), 128)}'><figcaption>d = {d:.3g}</figcaption></figure>"
                       for g, t, d in zip(gen, train, dist))
        parts.append("<h2>Closest to the training set</h2><p>each: generated (left), nearest training patch (right)</p>"
                     f"<div class='row'>{figs}</div>")
    style = ("body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}.skip{color:#a00}"
             ".note{color:#a60}.warn{color:#fff;background:#b00;padding:8px;font-weight:bold}.bad{color:#999}"
             ".row{display:flex;flex-wrap:wrap;gap:12px}figure{margin:0}img{image-rendering:pixelated}")
    path.write_text("<!doctype html><html><head><meta charset='utf-8'><title>histogen eval</title>"
                    f"<style>{style}</style></head>"
                    f"<body>{''.join(parts)}</body></html>")
    return path
