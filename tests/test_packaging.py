"""What the project installs, and under which names: the kernels/ folder is the package
toolkit.kernels (a top-level `kernels` is Hugging Face's package's name, and one would shadow the
other), in a wheel, in the editable install and in a source checkout run without an install."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# what another project's top-level `kernels` package might define; nothing of ours
FOREIGN = '"""Another project\'s kernels package."""\nFOREIGN = True\n\n\ndef get_kernel(name):\n    return name\n'
# drops the editable install's finder, as a checkout on PYTHONPATH without an install would be
NO_INSTALL = "import sys; sys.meta_path[:] = [f for f in sys.meta_path if " \
             "not getattr(f, '__module__', '').startswith('__editable__')]\n"


def _foreign_site(tmp_path: Path) -> Path:
    site = tmp_path / "foreign-site"
    (site / "kernels").mkdir(parents=True)
    (site / "kernels" / "__init__.py").write_text(FOREIGN)
    return site


def _python(code: str, *args: str, cwd: Path, pythonpath: list[Path],
            timeout: int = 600) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter, run outside the repo (its root is not on sys.path) with
    ``pythonpath`` first."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(map(str, pythonpath)), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_a_foreign_top_level_kernels_package_does_not_shadow_ours(tmp_path, small_stsb):
    """Another `kernels` first on sys.path: the toolkit still imports its own kernel modules, swaps
    the fused kernel in (``--fused-kernel on``: on the CPU in Triton's interpreter, set by conftest),
    passes its self-check and trains."""
    pytest.importorskip("triton")
    run = tmp_path / "run"
    code = ("import sys, kernels\n"
            "assert getattr(kernels, 'FOREIGN', False), kernels.__file__  # the foreign one is what `kernels` is\n"
            "from toolkit.cli import main\n"
            "sys.exit(main(sys.argv[1:]))\n")
    proc = _python(code, "train", "--train", str(small_stsb["train"]), "--dev", str(small_stsb["dev"]),
                   "--out", str(run), "--limit", "8", "--epochs", "1", "--batch-size", "8", "--max-length", "32",
                   "--fused-kernel", "on", cwd=tmp_path, pythonpath=[_foreign_site(tmp_path)])
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    report = json.loads((run / "metrics.json").read_text())["fused_kernel"]
    assert report["fused_layers"] == 6  # one per layer of MiniLM-L6
    assert report["decisions"] and all(": fused kernel (" in d for d in report["decisions"]), report


def test_a_source_checkout_without_an_install_finds_toolkit_kernels(tmp_path):
    """The repo root on PYTHONPATH and no install (how the GPU suite runs on a lent machine):
    toolkit.kernels is the root's kernels/ folder, still behind a foreign `kernels`."""
    code = NO_INSTALL + ("import importlib.util as u, kernels\n"
                         "import toolkit.kernels.adapter_module as m, toolkit.kernels.selfcheck as s\n"
                         "print(kernels.FOREIGN, m.__file__, s.ab.__name__, u.find_spec('toolkit.kernels.nothing'))\n")
    proc = _python(code, cwd=tmp_path, pythonpath=[_foreign_site(tmp_path), REPO])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["True", str(REPO / "kernels" / "adapter_module.py"),
                                   "toolkit.kernels.adapter_bottleneck", "None"]


def test_every_package_folder_is_listed_for_the_install():
    """pyproject.toml lists the packages (a mapped folder cannot be found by setuptools' discovery):
    a package folder added later must be added there, or a wheel would lack it (the editable
    install would not show it)."""
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert setuptools["package-dir"] == {"toolkit.kernels": "kernels"}
    found = {".".join(("toolkit", *init.parent.relative_to(REPO / "toolkit").parts))
             for init in (REPO / "toolkit").rglob("__init__.py")}
    found |= {".".join(("toolkit.kernels", *init.parent.relative_to(REPO / "kernels").parts))
              for init in (REPO / "kernels").rglob("__init__.py")}
    assert sorted(setuptools["packages"]) == sorted(found)


def _wheel_build_isolation() -> list[str]:
    """Build with this environment's setuptools where it can build wheels itself (70.1 or newer):
    no index needed; otherwise pip fetches the build requirements, as `pip install .` does."""
    try:
        from importlib.metadata import version

        major, minor = (int(x) for x in version("setuptools").split(".")[:2])
    except Exception:  # absent, or a version string of another form
        return []
    return ["--no-build-isolation"] if (major, minor) >= (70, 1) else []


def test_the_wheel_installs_toolkit_kernels_and_no_top_level_kernels(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    for name in ("toolkit", "kernels"):
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", *_wheel_build_isolation(),
                           "-w", str(tmp_path / "dist"), "./src"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    assert wheel.name.startswith("sentence_pair_toolkit-")
    names = zipfile.ZipFile(wheel).namelist()
    dist_info = "-".join(wheel.name.split("-")[:2]) + ".dist-info"
    assert {n.split("/")[0] for n in names} == {"toolkit", dist_info}  # no top-level kernels/
    kernels = sorted(p.name for p in (REPO / "kernels").glob("*.py"))
    assert sorted(n.rsplit("/", 1)[1] for n in names if n.startswith("toolkit/kernels/")) == kernels
    sources = sorted(p.name for p in (REPO / "toolkit" / "sources").glob("*.py"))
    assert sorted(n.rsplit("/", 1)[1] for n in names if n.startswith("toolkit/sources/")) == sources


def test_the_model_stack_imports_no_scikit_learn_under_the_toolkit():
    """transformers imports scikit-learn (installed with sentence-transformers, which imports it
    itself where it needs it) only for assisted generation; under the toolkit it is left out."""
    stack = "import adapters, transformers.generation; from adapters import AutoAdapterModel; import sys; "
    probe = [sys.executable, "-c"]
    plain = subprocess.run([*probe, stack + "print('sklearn' in sys.modules)"], capture_output=True, text=True)
    ours = subprocess.run([*probe, "import toolkit; " + stack + "from transformers.utils import is_sklearn_available; "
                           "print('sklearn' in sys.modules, is_sklearn_available())"], capture_output=True, text=True)
    assert plain.stdout.split() == ["True"], plain.stderr[-2000:]  # without the toolkit: imported
    assert ours.stdout.split() == ["False", "False"], ours.stderr[-2000:]
