"""`python -m engine.fetch seed|--manifest FILE --out DIR`: the command line of engine.fetch."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from engine.errors import run_command, setup_logging
from engine.fetch import __doc__ as DOC
from engine.fetch.manifest import load, study
from engine.fetch.slides import FetchConfig, fetch_slides

log = logging.getLogger("engine.fetch")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m engine.fetch", description=DOC.split("\n\n")[0])
    p.add_argument("what", nargs="?", choices=["seed"],
                   help="seed: the study's 40 slides (CAMELYON16 and IDC's TCIA slides)")
    p.add_argument("--manifest", type=Path, default=None,
                   help="your own list of slides: CSV or YAML with name, organ, source, location, size, checksum")
    p.add_argument("--out", required=True, type=Path,
                   help="folder for the slides (made if needed); a re-run fetches only what is missing")
    p.add_argument("--workers", type=int, default=FetchConfig().workers, help="slides fetched at once")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--debug", action="store_true")
    a = p.parse_args(argv)
    if (a.what is None) == (a.manifest is None):
        p.error("give either seed or --manifest FILE")
    return a


def main(argv=None) -> int:
    a = parse_args(argv)
    setup_logging(a.debug)
    if not a.debug:  # botocore says where it found credentials and endpoint at INFO, per client
        for name in ("botocore", "aiobotocore", "s3fs"):
            logging.getLogger(name).setLevel(logging.WARNING)

    def job() -> int:
        entries = study() if a.what == "seed" else load(a.manifest)
        summary = fetch_slides(entries, a.out, FetchConfig(workers=a.workers), show_progress=False if a.quiet else None)
        print(summary.text())
        return 1 if summary.count("failed") else 0

    return run_command(job, log, "whole files are kept and partial ones resume: run the same command again")
