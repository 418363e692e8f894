"""Where the toolkit keeps what it measured or built on this machine, to be reused by later processes:
the runtime each bundle is served with (runtimes.json) and torch's ONNX exports (onnx-graphs/).
``TOOLKIT_CACHE_DIR`` moves it; anything in it may be deleted at any time."""
from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "TOOLKIT_CACHE_DIR"


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or os.path.join(os.environ.get("XDG_CACHE_HOME") or
                                                          os.path.expanduser("~/.cache"), "toolkit"))
