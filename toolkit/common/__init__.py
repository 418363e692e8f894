"""Plumbing every other package uses, and that imports nothing else of the toolkit: one-line errors
and the escaping of input they echo (errors), atomic and locked outputs (atomic_io), the closed sets of
option values (choices) and option types with their own spelling (option_types), config dataclasses read
from JSON/YAML (config_io), what changed between two settings (settings_diff), the progress bar
(progress), this machine's CPU and extensions (machine), the folder where what was measured or built on
it is kept (cache_dir) and the crash points of the crash tests (failpoints)."""
