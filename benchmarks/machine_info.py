"""The machine line every benchmark records (kept in ``toolkit.common.machine``, which the engine choice uses too)."""
from toolkit.common.machine import cpu_info  # noqa: F401
