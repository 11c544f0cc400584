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
    ("kernels", "kernels"), ("nuclear-scale", "nuclear_scale"), ("quality", "quality"), ("realism", "realism"),
    ("scaling", "scaling"), ("tiling", "tiling"), ("train", "train"))}


# The options every suite takes: flag, default, help.
SHARED = (("--work", Path(".bench"), "inputs and stores (reused between runs)"),
          ("--out", Path("benchmarks/results"), "where the JSON and markdown go"))


def parser() -> argparse.ArgumentParser:
    """A subcommand per suite taking the options every suite shares. Each leaves -h and its own options
    to the suite's parser, which only exists once the suite is imported."""
    shared = argparse.ArgumentParser(add_help=False)
    for flag, default, what in SHARED:
        shared.add_argument(flag, type=Path, default=default, metavar="DIR", help=what)
    every = "; ".join(f"{flag} DIR: {what} (default {default})" for flag, default, what in SHARED)
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                epilog=f"Every suite takes {every}. "
                                       "python -m benchmarks SUITE --help: its own options.")
    suites = p.add_subparsers(dest="suite", required=True, metavar="SUITE", help=", ".join(SUITES))
    for name in SUITES:
        # No abbreviations: a suite's --only or --he must reach the suite, not match --out or --help.
        suites.add_parser(name, parents=[shared], add_help=False, allow_abbrev=False)
    return p


def main(argv=None) -> int:
    a, rest = parser().parse_known_args(argv)
    suite = importlib.import_module(SUITES[a.suite])
    return suite.main(rest, work=a.work, out=a.out)


if __name__ == "__main__":
    sys.exit(main())
