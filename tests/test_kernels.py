"""The fused adapter kernel against a float64 PyTorch reference, on the CPU through the Triton
interpreter (TRITON_INTERPRET=1, set in conftest before Triton is imported): forward and every
gradient, shapes that do not fill the blocks, outputs poisoned with NaN before each run, and the
swap into a real model (equal outputs and gradients, saved and loaded in the adapters format)."""
from __future__ import annotations

import json
import os

import pytest
import torch

pytest.importorskip("triton")
if os.environ.get("TRITON_INTERPRET") != "1" and not torch.cuda.is_available():
    pytest.skip("needs a GPU or TRITON_INTERPRET=1 (set by conftest)", allow_module_level=True)

from toolkit.kernels.adapter_bottleneck import ACTIVATIONS, FusedAdapterFunction, adapter_bottleneck_reference  # noqa: E402
from toolkit.kernels.adapter_module import FusedBottleneckAdapter, fusable, unfuse_adapters  # noqa: E402
from toolkit.kernels.selfcheck import TOLERANCE  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# (dtype: atol, rtol); atol is relative to the largest reference value of the tensor compared. The
# kernel's first-use self-check holds it to the same ones.


@pytest.fixture
def poisoned(monkeypatch):
    """Every tensor the host functions allocate starts as NaN: an element the kernels fail to
    write shows up in the comparison instead of passing as leftover memory."""
    empty, empty_like = torch.empty, torch.empty_like

    def nan(t: torch.Tensor) -> torch.Tensor:
        return t.fill_(float("nan")) if t.is_floating_point() else t

    monkeypatch.setattr(torch, "empty", lambda *a, **k: nan(empty(*a, **k)))
    monkeypatch.setattr(torch, "empty_like", lambda *a, **k: nan(empty_like(*a, **k)))


def _inputs(T: int, H: int, r: int, dtype: torch.dtype, separate_residual: bool, seed: int):
    g = torch.Generator().manual_seed(seed)  # fresh random inputs for every case, never zeros

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(DEVICE, dtype)

    x = rand(T, H)
    residual = rand(T, H) if separate_residual else None
    w_down, b_down = rand(r, H, scale=H ** -0.5), rand(r, scale=0.5)
    w_up, b_up = rand(H, r, scale=r ** -0.5), rand(H, scale=0.5)
    dy = rand(T, H)
    return x, residual, w_down, b_down, w_up, b_up, dy


def _close(name: str, got: torch.Tensor, want: torch.Tensor, dtype: torch.dtype) -> None:
    atol, rtol = TOLERANCE[dtype]
    assert not torch.isnan(got).any(), f"{name}: NaN (an element was never written)"
    torch.testing.assert_close(got.double().cpu(), want.cpu(), atol=atol * want.abs().max().item(), rtol=rtol,
                               msg=lambda m: f"{name}: {m}")


def _check(T, H, r, dtype, activation, separate_residual, seed, scale=0.75):
    x, residual, w_down, b_down, w_up, b_up, dy = _inputs(T, H, r, dtype, separate_residual, seed)
    leaves = [t.clone().requires_grad_() for t in (x, w_down, b_down, w_up, b_up)]
    res_leaf = residual.clone().requires_grad_() if residual is not None else None
    y = FusedAdapterFunction.apply(leaves[0], res_leaf, *leaves[1:], scale, activation)
    y.backward(dy)

    ref = [t.detach().double().requires_grad_() for t in (x, w_down, b_down, w_up, b_up)]
    ref_res = residual.double().requires_grad_() if residual is not None else None
    y_ref = adapter_bottleneck_reference(ref[0], ref_res, *ref[1:], scale, activation)
    y_ref.backward(dy.double())

    assert y.dtype == dtype and y.shape == (T, H)
    _close("y", y.detach(), y_ref.detach(), dtype)
    for name, got, want in zip(("dx", "dW_down", "db_down", "dW_up", "db_up"), leaves, ref):
        assert got.grad.dtype == dtype
        _close(name, got.grad, want.grad, dtype)
    if residual is not None:
        _close("d_residual", res_leaf.grad, ref_res.grad, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("r", [8, 16, 64])
@pytest.mark.parametrize("H,T", [(384, 130), (768, 100), (1024, 67)])  # T: not a multiple of the 64-row block
def test_forward_and_gradients_match_float64_reference(poisoned, H, T, r, dtype):
    for separate_residual in (False, True):  # the residual is x (double_seq_bn) or another tensor (seq_bn)
        _check(T, H, r, dtype, "relu", separate_residual, seed=hash((H, T, r, str(dtype), separate_residual)) % 2**31)


@pytest.mark.parametrize("activation", [a for a in ACTIVATIONS if a != "relu"])
def test_other_activations(poisoned, activation):
    for dtype in (torch.float32, torch.bfloat16):
        _check(77, 384, 16, dtype, activation, True, seed=len(activation))


@pytest.mark.parametrize("shape", [(32, 64, 4), (64, 128, 4), (128, 64, 8)], ids=lambda s: "x".join(map(str, s)))
def test_every_launch_shape_the_tuning_sweep_tries_is_correct(poisoned, shape):
    """The suite's sweep (benchmarks/gpu_suite.py) times these shapes; the defaults came from it."""
    from toolkit.kernels.adapter_bottleneck import launch_shape

    with launch_shape(*shape):
        for dtype in (torch.float32, torch.bfloat16):
            _check(100, 384, 24, dtype, "relu", True, seed=shape[0] + shape[1])


def test_tiny_and_single_row_inputs(poisoned):
    _check(1, 384, 8, torch.float32, "relu", False, seed=3)
    _check(5, 100, 3, torch.float32, "silu", True, seed=4)  # H and r far from any block size


def test_inference_keeps_no_activation_and_needs_no_grad():
    x, residual, w_down, b_down, w_up, b_up, _ = _inputs(40, 384, 16, torch.float32, True, seed=5)
    with torch.inference_mode():
        y = FusedAdapterFunction.apply(x, residual, w_down, b_down, w_up, b_up, 1.0, "relu")
    want = adapter_bottleneck_reference(*(t.double() for t in (x, residual, w_down, b_down, w_up, b_up)), 1.0)
    _close("y", y, want, torch.float32)


def test_bad_shapes_are_refused():
    x, residual, w_down, b_down, w_up, b_up, _ = _inputs(8, 384, 16, torch.float32, True, seed=6)
    with pytest.raises(ValueError, match="adapter shapes do not fit"):
        FusedAdapterFunction.apply(x, residual, w_down, b_down, w_up.t(), b_up, 1.0, "relu")
    with pytest.raises(ValueError, match="unsupported activation"):
        FusedAdapterFunction.apply(x, residual, w_down, b_down, w_up, b_up, 1.0, "softplus")


# -- in the model --------------------------------------------------------------------------------------

def _models(adapter: str):
    from toolkit.model.config import ModelConfig
    from toolkit.model.regressor import PairRegressor
    from toolkit.model.safe_loading import resolve_model

    _, folder = resolve_model("all-MiniLM-L6-v2")
    fused = PairRegressor.create(ModelConfig(adapter=adapter, fused_kernel="on", dropout=0.0), folder)
    plain = PairRegressor.create(ModelConfig(adapter=adapter, fused_kernel="off", dropout=0.0), folder)
    g = torch.Generator().manual_seed(7)  # trained-looking adapters: the fresh ones are the identity
    weights = {k: torch.randn(v.shape, generator=g) * 0.05 for k, v in plain.state_dict().items() if ".adapters." in k}
    assert weights
    for m in (fused, plain):
        m.load_state_dict(weights, strict=False)
        m.train()
    return fused, plain


@pytest.mark.parametrize("adapter,layers", [("seq_bn", 6), ("double_seq_bn", 12)])
def test_fused_model_equals_library_model(adapter, layers):
    fused, plain = _models(adapter)
    assert sum(isinstance(m, FusedBottleneckAdapter) for m in fused.modules()) == layers
    assert not any(isinstance(m, FusedBottleneckAdapter) for m in plain.modules())
    assert list(fused.state_dict()) == list(plain.state_dict())  # same weights, same adapters-format keys
    ids = torch.randint(1000, 20000, (3, 21), generator=torch.Generator().manual_seed(8))
    mask = torch.ones_like(ids)
    mask[1, 13:] = 0
    a, b = fused.embed(ids, mask), plain.embed(ids, mask)
    torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4)
    a.square().sum().backward()
    b.square().sum().backward()
    for (name, p), q in zip(fused.named_parameters(), plain.parameters()):
        if p.requires_grad:
            torch.testing.assert_close(p.grad, q.grad, atol=1e-5 * q.grad.abs().max().item(), rtol=1e-3,
                                       msg=lambda m, name=name: f"{name}: {m}")
    assert unfuse_adapters(fused) == layers and not any(isinstance(m, FusedBottleneckAdapter) for m in fused.modules())


def test_unsupported_layers_stay_with_the_library():
    from adapters import ParBnConfig, SeqBnConfig

    from toolkit.model.safe_loading import load_adapter_model, resolve_model

    _, folder = resolve_model("all-MiniLM-L6-v2")
    model = load_adapter_model(folder)
    model.add_adapter("ln", config=SeqBnConfig(ln_after=True))
    model.add_adapter("par", config=ParBnConfig())
    reasons = {fusable(m) for m in model.modules() if type(m).__name__ in ("Adapter", "ParallelAdapter")}
    assert reasons == {"adapter layer norm", "not a sequential bottleneck Adapter"}


def test_fused_training_run_saves_and_loads_in_adapters_format(tmp_path, small_stsb):
    from safetensors.numpy import load_file

    from toolkit.model.config import ModelConfig
    from toolkit.scoring.metrics import evaluate_predictions
    from toolkit.sources import SourceOptions, read_pairs
    from toolkit.training.config import TrainConfig
    from toolkit.training.loop import train
    from toolkit.training.run_data import DataConfig
    from toolkit.training.run_dir import load_run

    data = DataConfig(str(small_stsb["train"]), str(small_stsb["dev"]), SourceOptions(limit=16))
    result = train(tmp_path / "fused", data, ModelConfig(max_length=32, fused_kernel="on"),
                   TrainConfig(epochs=1, batch_size=8, lr=3e-3, metric="mse", patience=0))
    assert sum(isinstance(m, FusedBottleneckAdapter) for m in result.model.modules()) == 6
    keys = set(load_file(tmp_path / "fused" / "adapter" / "adapter.safetensors"))
    assert keys and all("adapter" in k for k in keys)
    dev, _ = read_pairs(small_stsb["dev"], SourceOptions(limit=16))
    for mode, layers in (("auto", 0), ("on", 6)):  # auto on the CPU: the library's own layers
        run = load_run(tmp_path / "fused", fused_kernel=mode)
        assert sum(isinstance(m, FusedBottleneckAdapter) for m in run.model.modules()) == layers
        pred = run.predictor(device="cpu").predict(dev.s1, dev.s2)
        metrics, _ = evaluate_predictions(pred, dev.scores, ci=False)
        assert metrics["mse"] == pytest.approx(result.summary["dev"]["mse"], abs=1e-5)


# -- the first-use self-check --------------------------------------------------------------------------

@pytest.fixture
def fresh_verdicts(monkeypatch):
    """Each test starts as a new process would: nothing checked yet."""
    from toolkit.kernels import selfcheck

    monkeypatch.setattr(selfcheck, "_verdicts", {})
    return selfcheck


def test_float32_on_a_gpu_is_left_to_cublas(fresh_verdicts, capfd):
    """Measured slower than eager there (RESULTS.md, issue 20): refused without running, one line said."""
    call = fresh_verdicts.CallClass("cuda:0", torch.float32, 384, 24, "relu", True)
    got = fresh_verdicts.verdict(call)
    assert not got.ok and "float32 on a GPU" in got.reason
    assert fresh_verdicts.verdict(call) is got  # once per process
    err = capfd.readouterr().err
    assert err.count("fused adapter kernel not used for cuda:0 float32") == 1 and err.count("\n") == 1


def test_kernel_that_passes_its_self_check_serves(fresh_verdicts):
    fused, plain = _models("seq_bn")
    ids = torch.randint(1000, 20000, (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        fused.embed(ids, torch.ones_like(ids))
    (call, verdict), = fresh_verdicts.verdicts().items()
    assert verdict.ok and "matches the PyTorch reference" in verdict.reason
    assert (call.hidden, call.bottleneck, call.activation, call.dtype) == (384, 24, "relu", torch.float32)


@pytest.mark.parametrize("breakage", ["drift", "compile"])
def test_failing_self_check_falls_back_to_pytorch_with_one_warning(fresh_verdicts, monkeypatch, capfd, breakage):
    """A kernel that computes the wrong thing, or does not compile: the check catches it at first use,
    the layers run the library's PyTorch code (same outputs as unfused), one warning line is printed."""
    import toolkit.kernels.adapter_bottleneck as ab

    if breakage == "drift":
        real = ab.adapter_forward

        def wrong(*args, **kwargs):
            y, z = real(*args, **kwargs)
            return y + 1e-3 * y.abs().max(), z
        monkeypatch.setattr(ab, "adapter_forward", wrong)
    else:
        class Uncompilable:
            def __getitem__(self, grid):
                raise RuntimeError("PassManager::run failed\nmore compiler output")
        monkeypatch.setattr(ab, "_forward_kernel", Uncompilable())
    fused, plain = _models("seq_bn")
    fused.eval(), plain.eval()
    ids = torch.randint(1000, 20000, (3, 11), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        for _ in range(3):
            a = fused.embed(ids, torch.ones_like(ids))
        b = plain.embed(ids, torch.ones_like(ids))
    torch.testing.assert_close(a, b, atol=0, rtol=0)  # the library's own forward, exactly
    (verdict,) = fresh_verdicts.verdicts().values()
    expected = "y drifts from the PyTorch reference" if breakage == "drift" else \
        "failed to run (RuntimeError: PassManager::run failed)"
    assert not verdict.ok and expected in verdict.reason
    warnings = [line for line in capfd.readouterr().err.splitlines() if "fused adapter kernel" in line]
    assert len(warnings) == 1 and warnings[0].startswith("warning: fused adapter kernel not used for cpu float32 "
                                                         "H=384 r=24 relu residual")


def test_fallback_is_recorded_in_the_run(tmp_path, small_stsb, fresh_verdicts, monkeypatch):
    import toolkit.kernels.adapter_bottleneck as ab

    from toolkit.model.config import ModelConfig
    from toolkit.sources import SourceOptions
    from toolkit.training.config import TrainConfig
    from toolkit.training.loop import train
    from toolkit.training.run_data import DataConfig

    real = ab.adapter_backward

    def wrong(*args, **kwargs):  # forward right, gradients wrong: only a check of both catches it
        dx, *rest = real(*args, **kwargs)
        return (dx * 1.01, *rest)
    monkeypatch.setattr(ab, "adapter_backward", wrong)
    data = DataConfig(str(small_stsb["train"]), str(small_stsb["dev"]), SourceOptions(limit=16))
    result = train(tmp_path / "run", data, ModelConfig(max_length=32, fused_kernel="on", dropout=0.0),
                   TrainConfig(epochs=1, batch_size=8, metric="mse", patience=0))
    report = result.summary["fused_kernel"]
    assert report["requested"] == "on" and report["fused_layers"] == 6
    assert report["decisions"] and all("PyTorch (dx drifts" in d for d in report["decisions"])
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["fused_kernel"] == report
    log = (tmp_path / "run" / "train.log").read_text()
    assert "fused kernel: on (Triton interpreter)" in log
    assert "fused kernel: cpu float32 H=384 r=24 relu residual: PyTorch (dx drifts" in log
