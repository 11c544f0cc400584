"""Classifier two-sample test (C2ST, Lopez-Paz & Oquab 2017): can a small CNN, trained fresh, tell
two sets of patches apart? k-fold: each fold's classifier is trained on the other folds and
predicts its held-out patches, so every patch gets one out-of-fold prediction. The accuracy of
those predictions is the statistic: 0.5 means indistinguishable, 1.0 perfectly separable. Its
95 % interval is Wilson's binomial interval over the 2m out-of-fold predictions.

The network sees the patches at their own resolution (no resize), with random flips and quarter
turns (tissue has no orientation), so it judges texture, colour and structure, not pose."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn


@dataclass(frozen=True)
class TwoSampleConfig:
    folds: int = 5
    steps: int = 300  # per fold, batches of batch_size: the cost does not grow with the set...
    max_epochs: int = 30  # ...except that small sets stop after this many passes...
    min_steps: int = 100  # ...but never before this many (30 steps cannot tell noise from tissue)
    batch_size: int = 64
    lr: float = 2e-3
    width: int = 16  # channels of the first block; doubled at the second, again at the third
    max_per_class: int = 1000  # patches per side (the larger side is subsampled, seeded)
    seed: int = 0


@dataclass
class TwoSampleResult:
    accuracy: float
    ci95: tuple[float, float]
    fold_accuracies: list[float]
    n_per_class: int
    p_second: np.ndarray  # (2m,) out-of-fold probability of "second set", first set's patches first
    index_first: np.ndarray  # (m,) the patches of each set used, as indices into what was passed
    index_second: np.ndarray

    def to_dict(self) -> dict:
        return {"accuracy": self.accuracy, "ci95_low": self.ci95[0], "ci95_high": self.ci95[1],
                "n_per_class": self.n_per_class, "folds": len(self.fold_accuracies)}

    def extremes(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Indices (into what was passed) of the k second-set patches most confidently called
        second, and the k first-set patches most confidently called first."""
        m = self.n_per_class
        second = self.index_second[np.argsort(-self.p_second[m:], kind="stable")[:k]]
        first = self.index_first[np.argsort(self.p_second[:m], kind="stable")[:k]]
        return second, first


def wilson(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson's 95 % score interval of a binomial proportion."""
    if n == 0:
        return float("nan"), float("nan")
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def classifier(width: int) -> nn.Module:
    """Four strided conv blocks (the first reads every pixel, so blur and noise are visible to it),
    global average pooling, one logit: ~3.5 M multiply-adds per 64 px patch."""
    layers, c_in = [], 3
    for c in (width, 2 * width, 4 * width, 4 * width):
        layers += [nn.Conv2d(c_in, c, 3, stride=2, padding=1), nn.BatchNorm2d(c), nn.ReLU()]
        c_in = c
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, 1))


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """The same random flip and quarter turn for the whole batch (cheap, and enough over epochs)."""
    k, flip = torch.randint(0, 4, (2,), generator=gen).tolist()
    x = torch.rot90(x, k, (2, 3))
    return x.flip(3) if flip % 2 else x


def _fit_predict(x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor, cfg: TwoSampleConfig,
                 seed: int) -> np.ndarray:
    with torch.random.fork_rng():  # seeded initialisation without disturbing the caller's RNG
        torch.manual_seed(seed)
        net = classifier(cfg.width)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    batch = min(cfg.batch_size, len(x_train))  # a tiny set is not drawn 64 times per step
    steps = min(cfg.steps, max(cfg.min_steps, cfg.max_epochs * math.ceil(len(x_train) / batch)))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, cfg.lr, total_steps=steps)
    net.train()
    for _ in range(steps):
        b = torch.randint(0, len(x_train), (batch,), generator=gen)
        loss = nn.functional.binary_cross_entropy_with_logits(net(_augment(x_train[b], gen)).squeeze(1), y_train[b])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    net.eval()
    with torch.no_grad():
        return torch.cat([torch.sigmoid(net(x_test[i : i + 256]).squeeze(1))
                          for i in range(0, len(x_test), 256)]).numpy()


def _tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1


def two_sample_test(first: np.ndarray, second: np.ndarray, cfg: TwoSampleConfig = TwoSampleConfig(),
                    progress=None) -> TwoSampleResult:
    """C2ST of uint8 (n, R, R, 3) patch sets of one size; m = min(len(first), len(second),
    cfg.max_per_class) patches of each, drawn by the seed. `progress(k)` is called after each fold."""
    if first.shape[1:] != second.shape[1:]:
        raise ValueError(f"the two sets differ in patch shape: {first.shape[1:]} vs {second.shape[1:]}")
    m = min(len(first), len(second), cfg.max_per_class)
    if m < cfg.folds:
        raise ValueError(f"a {cfg.folds}-fold test needs at least {cfg.folds} patches per set, got {m}")
    rng = np.random.default_rng(cfg.seed)
    i1 = np.sort(rng.choice(len(first), m, replace=False))
    i2 = np.sort(rng.choice(len(second), m, replace=False))
    x = torch.cat([_tensor(first[i1]), _tensor(second[i2])])
    y = torch.cat([torch.zeros(m), torch.ones(m)])
    fold = np.empty(2 * m, np.int64)  # stratified: each fold holds as many of each set
    for side in (0, 1):
        fold[side * m : (side + 1) * m] = rng.permutation(np.arange(m) % cfg.folds)
    p = np.empty(2 * m)
    accs = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # convolutions this small run 10x+ slower on two threads of a busy CPU than on one
    try:
        for k in range(cfg.folds):
            test, train = np.flatnonzero(fold == k), np.flatnonzero(fold != k)
            p[test] = _fit_predict(x[train], y[train], x[test], cfg, cfg.seed * 1000 + k)
            accs.append(float(((p[test] > 0.5) == (y[test].numpy() > 0.5)).mean()))
            if progress is not None:
                progress(k)
    finally:
        torch.set_num_threads(threads)
    correct = int(((p > 0.5) == y.numpy().astype(bool)).sum())
    return TwoSampleResult(correct / (2 * m), wilson(correct, 2 * m), accs, m, p, i1, i2)
