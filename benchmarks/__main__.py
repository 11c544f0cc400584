"""python -m benchmarks SUITE [options]: run a throughput suite and write its JSON and table."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from benchmarks import cluster, embed, kernels, tiling

SUITES = {"cluster": cluster, "embed": embed, "kernels": kernels, "tiling": tiling}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    p.add_argument("suite", choices=sorted(SUITES))
    p.add_argument("--work", type=Path, default=Path(".bench"), help="inputs and stores (reused between runs)")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"), help="where the JSON and markdown go")
    a, rest = p.parse_known_args(argv)
    suite = SUITES[a.suite]
    return suite.main(rest, work=a.work, out=a.out)


if __name__ == "__main__":
    sys.exit(main())
