"""This machine as scoring speed depends on it: the CPU model and the vector/matrix extensions that
decide int8, bf16 and GEMM speed (machines differ between sessions and between a cluster's nodes).
Benchmarks record it with every figure; ``runtimes`` keys what it measured and remembered by it."""
from __future__ import annotations

import os
import platform
from functools import lru_cache
from pathlib import Path

EXTENSIONS = {"avx2": "AVX2", "avx512f": "AVX-512", "avx512_vnni": "AVX512-VNNI", "avx_vnni": "AVX-VNNI",
              "avx512_bf16": "AVX512-BF16", "amx_int8": "AMX-INT8", "amx_bf16": "AMX-BF16"}


@lru_cache(maxsize=1)
def cpu() -> tuple[str, tuple[str, ...]]:
    """(CPU model, the extensions of ``EXTENSIONS`` it has, by /proc/cpuinfo's names)."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return model, tuple(flag for flag in EXTENSIONS if flag in flags)


def cores() -> int:
    """CPUs this process may run on (a container's or taskset's limit, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def cpu_info() -> str:
    """CPU model, cores and extensions, as one line."""
    model, have = cpu()
    names = [EXTENSIONS[f] for f in have]
    lacks = [name for flag, name in EXTENSIONS.items() if flag not in have]
    return f"{model}, {cores()} cores, {'/'.join(names) or 'no AVX2'} (no {', '.join(lacks) or '-'})"
