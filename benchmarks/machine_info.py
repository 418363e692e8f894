"""The machine line every benchmark records (kept in ``toolkit.machine``, which the engine choice uses too)."""
from toolkit.machine import cpu_info  # noqa: F401
