"""How a run computes on its device: autocast precision, memory format and CPU threads, decided once
from the config and the hardware, and said in the log.

bf16 autocast pays on CUDA and on CPUs with native bf16 arithmetic (AVX512-BF16 or AMX): measured
1.6-2.1x on the 64 px UNet's training step on a 2-core EPYC (benchmarks/RESULTS.md). Without it,
oneDNN emulates bf16 and is slower than fp32, so such a CPU trains in fp32. Weights, optimizer
state and checkpoints stay fp32 either way: autocast only lowers the matmuls and convolutions.
"""
from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

log = logging.getLogger("histogen.compute")

CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo flags of native bf16 arithmetic


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    """The CPU's feature flags (Linux); empty where /proc/cpuinfo cannot be read."""
    try:
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("flags"):
                return set(line.partition(":")[2].split())
    except OSError:
        pass
    return set()


def cpu_has_bf16(flags: set[str] | None = None) -> bool:
    return any(f in (cpu_flags() if flags is None else flags) for f in CPU_BF16_FLAGS)


def cpu_threads(local_world: int = 1) -> int:
    """The cores this process may use, shared among the processes of this machine."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, local_world))


@dataclass(frozen=True)
class Compute:
    device: torch.device
    bf16: bool  # autocast to bf16 in the forward pass
    channels_last: bool
    threads: int | None  # CPU threads set for this process; None on CUDA

    def autocast(self):
        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def images(self, x: torch.Tensor) -> torch.Tensor:
        """A 4-d batch in the memory format the nets were put in."""
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.dim() == 4 else x

    def nets(self, module: torch.nn.Module) -> torch.nn.Module:
        return module.to(memory_format=torch.channels_last) if self.channels_last else module

    def describe(self) -> str:
        where = f"{self.device.type}" + (f", {self.threads} threads" if self.threads else "")
        layout = "channels_last" if self.channels_last else "NCHW"
        return f"{where}, {'bf16 autocast' if self.bf16 else 'fp32'}, {layout}"


def decide(device: torch.device, bf16: bool, channels_last: bool, threads: int = 0, local_world: int = 1) -> Compute:
    """The Compute of a run asking for `bf16` and `channels_last` on `device`. threads: CPU threads, 0 =
    OMP_NUM_THREADS where set, else the cores divided among the local processes."""
    n = None
    if device.type == "cpu":
        n = threads or int(os.environ.get("OMP_NUM_THREADS", 0)) or cpu_threads(local_world)
        torch.set_num_threads(n)
    use_bf16 = bf16 and (device.type == "cuda" or cpu_has_bf16())
    c = Compute(device, use_bf16, channels_last, n)
    why = "" if use_bf16 == bf16 else " (this CPU has no native bf16: AVX512-BF16 or AMX; fp32 is faster here)"
    log.info("computing on %s%s", c.describe(), why)
    return c
