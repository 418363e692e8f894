"""toolkit: adapter fine-tuning of pretrained encoders for sentence-pair regression.

Packages by role, imported one way: common → sources → model → scoring → training → artifacts →
batch → robustness, and on top api (every command as a function), options (which config dataclasses
hold each command's options) and cli (the ``toolkit`` command, generated from both).
No package shares a name with an API function, so ``toolkit.train`` is always the function.

Nothing is fetched from a model hub at run time: the offline switch is set before any Hugging Face
library is imported, and every load passes ``local_files_only`` as well.
"""
import os
import sys
import types
from typing import TYPE_CHECKING

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
        from toolkit import api

        return getattr(api, name)
    raise AttributeError(f"module 'toolkit' has no attribute {name!r}")


if TYPE_CHECKING:
    import importlib.machinery


class _SourceKernels:
    """Finds ``toolkit.kernels`` in a source checkout run without an install (the repo root on
    PYTHONPATH, as the GPU suite runs on a lent machine): the kernels live in the root's kernels/
    folder, which an install maps to toolkit.kernels. Last on sys.meta_path, so an install (wheel
    or editable) always answers first; never used outside a checkout (pyproject.toml beside it)."""

    @staticmethod
    def find_spec(fullname: str, path: "list[str] | None" = None,
                  target: "types.ModuleType | None" = None) -> "importlib.machinery.ModuleSpec | None":
        if fullname != f"{__name__}.kernels":
            return None
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        folder = os.path.join(root, "kernels")
        if not (os.path.isfile(os.path.join(root, "pyproject.toml"))
                and os.path.isfile(os.path.join(folder, "__init__.py"))):
            return None
        from importlib.util import spec_from_file_location

        return spec_from_file_location(fullname, os.path.join(folder, "__init__.py"),
                                       submodule_search_locations=[folder])


if not any(isinstance(f, type) and f.__name__ == "_SourceKernels" for f in sys.meta_path):
    sys.meta_path.append(_SourceKernels)


class _TransformersWithoutSklearn:
    """transformers imports scikit-learn whenever it is installed (sentence-transformers requires it)
    for one use, tuning assisted generation's confidence threshold, which an encoder never runs: 1.1 s
    of the ~6 s each command that loads a model spends importing (2-core CPU). transformers has no
    switch for it: its import utilities are marked, as they load, as finding no scikit-learn."""

    @staticmethod
    def find_spec(fullname: str, path: "list[str] | None" = None,
                  target: "types.ModuleType | None" = None) -> "importlib.machinery.ModuleSpec | None":
        if fullname != "transformers.utils.import_utils":
            return None
        from importlib.machinery import PathFinder

        spec = PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        load = spec.loader.exec_module

        def exec_module(module: types.ModuleType) -> None:
            load(module)
            module._sklearn_available = False

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


if "transformers.utils.import_utils" not in sys.modules and not any(
        isinstance(f, type) and f.__name__ == "_TransformersWithoutSklearn" for f in sys.meta_path):
    sys.meta_path.insert(0, _TransformersWithoutSklearn)
