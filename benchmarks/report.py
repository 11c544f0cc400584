"""Writing a suite's results: JSON for machines, a markdown table for RESULTS.md."""
from __future__ import annotations

import json
import os
import platform
from pathlib import Path


def machine() -> str:
    try:
        import cupy

        gpu = cupy.cuda.runtime.getDeviceProperties(0)["name"].decode()
    except Exception:
        gpu = "no GPU"
    cpu = platform.processor() or platform.machine()
    return f"{os.cpu_count()} CPU cores ({cpu}), {gpu}, Python {platform.python_version()}"


def can_run(suite: str, dry_run: bool) -> bool:
    """Whether a GPU suite can run here: on a CUDA GPU, or as a dry run with Triton interpreted (the
    variable must be set before Python starts); otherwise says why in one line."""
    import torch

    if dry_run and os.environ.get("TRITON_INTERPRET") != "1":
        print(f"{suite} --dry-run: set TRITON_INTERPRET=1 in the environment (before Python starts)")
        return False
    if not dry_run and not torch.cuda.is_available():
        print(f"{suite}: this suite needs a CUDA GPU and torch sees none; "
              "nothing was measured (--dry-run checks the code on the CPU)")
        return False
    return True


def device_name(device_type: str) -> str:
    import torch

    return torch.cuda.get_device_name() if device_type == "cuda" else "cpu (dry run: numbers mean nothing)"


def write(out: Path, suite: str, rows: list[dict], extra: dict) -> str:
    """rows: dicts with 'name', 'patches/s' and any other columns, in display order."""
    out.mkdir(parents=True, exist_ok=True)
    payload = {"suite": suite, "machine": machine(), **extra, "rows": rows}
    (out / f"{suite}.json").write_text(json.dumps(payload, indent=2))
    cols = list(dict.fromkeys(k for r in rows for k in r))

    def fmt(v) -> str:
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    lines = [f"{suite} on {payload['machine']}", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in cols) + " |" for r in rows]
    lines += [""] + [f"- {k}: {fmt(v)}" for k, v in extra.items()]
    text = "\n".join(lines) + "\n"
    (out / f"{suite}.md").write_text(text)
    return text
