"""python -m benchmarks SUITE [options]: run a throughput suite and write its JSON and table."""
from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

# Suite name -> module, imported only when it runs: some suites need packages that a bare GPU
# machine lacks (histosynth needs imagecodecs), and `gpu` must start there.
SUITES = {name: f"benchmarks.{module}" for name, module in (
    ("cluster", "cluster"), ("decode", "decode"), ("embed", "embed"), ("gpu", "gpu"), ("gpu-bundle", "bundle"),
    ("kernels", "kernels"), ("quality", "quality"), ("realism", "realism"), ("tiling", "tiling"), ("train", "train"))}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    p.add_argument("suite", choices=sorted(SUITES))
    p.add_argument("--work", type=Path, default=Path(".bench"), help="inputs and stores (reused between runs)")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"), help="where the JSON and markdown go")
    a, rest = p.parse_known_args(argv)
    suite = importlib.import_module(SUITES[a.suite])
    return suite.main(rest, work=a.work, out=a.out)


if __name__ == "__main__":
    sys.exit(main())
