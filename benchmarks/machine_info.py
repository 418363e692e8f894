"""The machine line every benchmark records: CPU model and the vector/matrix extensions that decide
int8 and GEMM speed (machines differ between sessions), plus the GPU where there is one."""
from __future__ import annotations

import os
import platform
from pathlib import Path

EXTENSIONS = {"avx2": "AVX2", "avx512f": "AVX-512", "avx512_vnni": "AVX512-VNNI", "avx_vnni": "AVX-VNNI",
              "amx_int8": "AMX-INT8", "amx_bf16": "AMX-BF16"}


def cpu_info() -> str:
    """CPU model and its vector/matrix extensions, as /proc/cpuinfo names them."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    have = [name for flag, name in EXTENSIONS.items() if flag in flags]
    lacks = [name for flag, name in EXTENSIONS.items() if flag not in flags]
    return f"{model}, {os.cpu_count()} cores, {'/'.join(have) or 'no AVX2'} (no {', '.join(lacks) or '-'})"
