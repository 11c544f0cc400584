"""PSNR and SSIM of an autoencoder's reconstructions of the real draw A."""
from __future__ import annotations

import numpy as np

from histogen.evaluation.comparison import Comparison
from histogen.evaluation.record import Evaluation


def measure(ev: Evaluation, c: Comparison) -> None:
    if c.generated.recon is None:
        return  # not an autoencoder's reconstructions
    psnr, ssim = c.generated.recon
    ev.record("reconstruction", {"psnr_db": float(np.mean(psnr)), "ssim": float(np.mean(ssim)), "n": len(psnr)},
              why_no_floor="a real patch against itself has no finite counterpart")
