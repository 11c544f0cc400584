"""The evaluation report: one self-contained HTML file (pictures inlined as PNG, histograms as
SVG), so it can be mailed or opened from anywhere."""
from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import numpy as np
from PIL import Image

from histogen import metrics
from histogen.images import grid

GUIDE = {
    "frechet_distance": "Fréchet distance of Gaussians fitted to encoder features; 0 for identical distributions, lower is better.",
    "precision_recall": "Precision: share of generated patches that fall on the real-patch manifold (realism). "
                        "Recall: share of real patches that the generated manifold covers (diversity). Both in 0..1, higher is better.",
    "conditioning": "Cosine similarity of each sample's embedding with the embedding it was conditioned on, against random "
                    "pairs; a positive gap means the condition is followed.",
    "memorisation": "Distance from each generated patch to its nearest training patch, against held-out real patches' distance "
                    "to the training set; a ratio well below 1, or many samples below the real 1st percentile, suggests copying.",
    "stain": "1-d Wasserstein distance between real and generated haematoxylin (H) and eosin (E) optical densities on tissue "
             "pixels (colour deconvolution, no learned model); lower is better.",
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


def _svg_hist(real: np.ndarray, gen: np.ndarray, title: str, w: int = 360, h: int = 160) -> str:
    """Two density curves (real blue, generated orange) of one stain's histogram."""
    x = metrics.bin_centres()
    k = 5  # bins per plotted point
    curves = []
    for counts in (real, gen):
        c = counts.reshape(-1, k).sum(1).astype(np.float64)
        curves.append(c / max(c.sum(), 1))
    top = max(max(c.max() for c in curves), 1e-12)
    xs = x.reshape(-1, k).mean(1)
    sx = lambda v: 30 + (v - metrics.OD_RANGE[0]) / (metrics.OD_RANGE[1] - metrics.OD_RANGE[0]) * (w - 40)  # noqa: E731
    sy = lambda v: h - 20 - v / top * (h - 40)  # noqa: E731
    lines = [f'<polyline fill="none" stroke="{col}" stroke-width="1.5" points="'
             + " ".join(f"{sx(a):.1f},{sy(b):.1f}" for a, b in zip(xs, c)) + '"/>'
             for c, col in zip(curves, ("#1f77b4", "#ff7f0e"))]
    ticks = "".join(f'<text x="{sx(t):.0f}" y="{h - 5}" font-size="10" text-anchor="middle">{t:g}</text>' for t in (0, 0.5, 1, 1.5, 2, 2.5, 3))
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}">'
            f'<text x="{w / 2}" y="12" font-size="12" text-anchor="middle">{html.escape(title)} optical density</text>'
            f'<line x1="30" y1="{h - 20}" x2="{w - 10}" y2="{h - 20}" stroke="#999"/>{ticks}{"".join(lines)}</svg>')


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, dict):
        return ", ".join(f"{k} {_fmt(x)}" for k, x in v.items())
    return html.escape(str(v))


def write_report(ev, path: Path) -> Path:
    """`ev`: a histogen.evaluate.Evaluation."""
    i = ev.info
    what = i["run"] or i["samples"]
    parts = [f"<h1>histogen eval: {html.escape(str(what))}</h1>",
             "<p>" + html.escape(f"kind {i.get('kind') or 'external samples'}, step {i.get('step')}, resolution {i['resolution']} px, "
                                 f"{i['n_generated']} generated vs {i['n_real']} real patches from {', '.join(i['real'])}; "
                                 f"features: {i['encoder']}") + "</p>"]
    parts += [f'<p class="note">{html.escape(n)}</p>' for n in ev.notes]
    rows = "".join(f"<tr><td>{k}</td><td>{_fmt(v)}</td><td>{html.escape(GUIDE.get(k, ''))}</td></tr>" for k, v in ev.metrics.items())
    rows += "".join(f'<tr class="skip"><td>{k}</td><td>skipped</td><td>{html.escape(v)}</td></tr>' for k, v in ev.skipped.items())
    parts.append(f"<h2>Numbers</h2><table><tr><th>metric</th><th>value</th><th>how to read it</th></tr>{rows}</table>")
    parts.append("<h2>Patches</h2><div class='row'>"
                 f"<figure><img src='{_png(ev.pictures['real'])}'><figcaption>real (held out)</figcaption></figure>"
                 f"<figure><img src='{_png(ev.pictures['generated'])}'><figcaption>generated</figcaption></figure></div>")
    parts.append("<h2>Stain distributions</h2><p><span style='color:#1f77b4'>real</span> vs "
                 "<span style='color:#ff7f0e'>generated</span>, tissue pixels</p><div class='row'>"
                 + "".join(_svg_hist(ev.hists["real"][c], ev.hists["generated"][c], name) for c, name in enumerate(("haematoxylin", "eosin")))
                 + "</div>")
    if "pairs" in ev.pictures:
        gen, train, dist = ev.pictures["pairs"]
        figs = "".join(f"<figure><img src='{_png(np.stack([g, t]), 128)}'><figcaption>d = {d:.3g}</figcaption></figure>"
                       for g, t, d in zip(gen, train, dist))
        parts.append("<h2>Closest to the training set</h2><p>each: generated (left), nearest training patch (right)</p>"
                     f"<div class='row'>{figs}</div>")
    style = ("body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}.skip{color:#a00}"
             ".note{color:#a60}.row{display:flex;flex-wrap:wrap;gap:12px}figure{margin:0}img{image-rendering:pixelated}")
    path.write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>histogen eval</title><style>{style}</style></head>"
                    f"<body>{''.join(parts)}</body></html>")
    return path
