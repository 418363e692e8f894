"""toolkit: adapter fine-tuning of pretrained encoders for sentence-pair regression.

Nothing is fetched from a model hub at run time: the offline switch is set before any Hugging Face
library is imported, and every load passes ``local_files_only`` as well.
"""
import os
import sys
import types

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

__version__ = "0.1.0"

API = ("check", "train", "search", "load", "predict", "evaluate", "merge", "export", "score", "wise",
       "shift_splits")
__all__ = ["__version__", *API]


def __getattr__(name: str):
    """``toolkit.train`` and the rest of api.py, imported on first use: ``import toolkit`` stays
    light (a bundle scores without torch)."""
    if name in API:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'toolkit' has no attribute {name!r}")


class _Package(types.ModuleType):
    """Keeps ``toolkit.train`` (and the rest of the API) the functions once the submodules of the
    same names are imported: the import system would set the package's attribute to the module.
    Code inside the package imports from the submodules (``from .train import ...``), which is
    unaffected."""

    def __setattr__(self, name: str, value) -> None:
        if name in API and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
