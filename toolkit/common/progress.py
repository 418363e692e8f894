"""The progress bar every long command shows (rate and ETA), set up once."""
from __future__ import annotations

import sys
from typing import Any

from tqdm.auto import tqdm


def progress_bar(**options: Any) -> tqdm:
    """tqdm as the commands use it: redrawn every second on a terminal, every 30 s into a log file
    (a redirected stderr), so logs stay short."""
    return tqdm(dynamic_ncols=True, mininterval=1.0 if sys.stderr.isatty() else 30.0, **options)
