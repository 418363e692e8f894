"""The model: bi-encoder zero-shot equivalence (against sentence-transformers), save/load, sizes."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import stsb_rows

from toolkit.common.choices import ADAPTERS
from toolkit.common.errors import ToolkitError
from toolkit.model.batching import PairTokenizer
from toolkit.model.label_scale import LabelScale
from toolkit.model.config import ModelConfig
from toolkit.model.regressor import PairRegressor
from toolkit.model.safe_loading import load_tokenizer, resolve_model
from toolkit.scoring.torch_engine import Predictor

FOLDER = resolve_model("all-MiniLM-L6-v2")[1]


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(FOLDER)


@pytest.fixture(scope="module")
def pairs():
    rows = stsb_rows("dev", 60)
    return [r[5] for r in rows], [r[6] for r in rows]


def predictor(model, tokenizer):
    return Predictor(model, PairTokenizer(tokenizer, model.cfg.arch, model.cfg.max_length),
                     LabelScale.from_range(0, 5), batch_size=16)


@pytest.fixture(scope="module")
def zero_shot_cosines(pairs):
    """The independent reference: sentence-transformers' own encoding of the same model."""
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(FOLDER), device="cpu")
    a = st.encode(pairs[0], convert_to_numpy=True, normalize_embeddings=True)
    b = st.encode(pairs[1], convert_to_numpy=True, normalize_embeddings=True)
    return (a * b).sum(1)


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_fresh_bi_encoder_is_the_zero_shot_model(adapter, tokenizer, pairs, zero_shot_cosines):
    model = PairRegressor.create(ModelConfig(arch="bi", adapter=adapter), FOLDER)
    cos = predictor(model, tokenizer).predict_normalized(*pairs)
    np.testing.assert_allclose(cos, zero_shot_cosines, atol=2e-6)


def perturb(model: PairRegressor, seed: int = 0) -> None:
    """Move every trainable weight so that a save/load test cannot pass on initial values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.02)


@pytest.mark.parametrize("adapter", ["seq_bn", "lora"])
def test_trained_bi_encoder_with_adapter_switched_off_is_zero_shot(adapter, tokenizer, pairs, zero_shot_cosines):
    model = PairRegressor.create(ModelConfig(arch="bi", adapter=adapter), FOLDER)
    perturb(model)
    changed = predictor(model, tokenizer).predict_normalized(*pairs)
    assert np.abs(changed - zero_shot_cosines).max() > 1e-3
    model.encoder.set_active_adapters(None)
    np.testing.assert_allclose(predictor(model, tokenizer).predict_normalized(*pairs), zero_shot_cosines, atol=2e-6)


@pytest.mark.parametrize("arch", ["bi", "cross"])
@pytest.mark.parametrize("adapter", ["seq_bn", "double_seq_bn", "par_bn", "lora", "ia3", "none"])
def test_save_then_load_gives_identical_predictions(arch, adapter, tokenizer, pairs, tmp_path):
    cfg = ModelConfig(arch=arch, adapter=adapter)
    model = PairRegressor.create(cfg, FOLDER)
    perturb(model)
    before = predictor(model, tokenizer).predict_normalized(*pairs)
    model.save_weights(tmp_path)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert all(not f.endswith((".bin", ".pt", ".pth")) for f in files)
    loaded = PairRegressor.create(cfg, FOLDER, weights=tmp_path)
    after = predictor(loaded, tokenizer).predict_normalized(*pairs)
    np.testing.assert_array_equal(before, after)
    fresh = predictor(PairRegressor.create(cfg, FOLDER), tokenizer).predict_normalized(*pairs)
    assert np.abs(fresh - before).max() > 1e-4  # the perturbation was visible: the test can fail


def test_default_adapter_trains_under_two_percent():
    for arch in ("bi", "cross"):
        counts = PairRegressor.create(ModelConfig(arch=arch), FOLDER).parameter_counts()
        assert 0 < counts["percent"] < 2.0


def test_only_safetensors_adapters_load(tmp_path):
    cfg = ModelConfig(arch="cross", adapter="lora")
    PairRegressor.create(cfg, FOLDER).save_weights(tmp_path)
    (tmp_path / "adapter.safetensors").rename(tmp_path / "pytorch_adapter.bin")
    with pytest.raises(ToolkitError, match="missing adapter.safetensors"):
        PairRegressor.create(cfg, FOLDER, weights=tmp_path)


def test_bad_model_config():
    with pytest.raises(ToolkitError, match="--adapter must be one of"):
        ModelConfig(adapter="prefix").validate()


@pytest.mark.parametrize("pooling", ["cls", "mean"])
@pytest.mark.parametrize("activation", ["identity", "sigmoid"])
def test_cross_head_reads_what_pooling_says(pooling, activation, tokenizer, pairs):
    """The cross-encoder's score against a by-hand reference: the base model's last hidden states,
    pooled ([CLS] or masked mean over the pair's tokens), then the head's Linear-tanh-Linear and the
    activation, computed here from the weights rather than by the adapters library's head."""
    model = PairRegressor.create(ModelConfig(arch="cross", adapter="seq_bn", pooling=pooling,
                                             head_activation=activation), FOLDER)
    perturb(model)
    batch = tokenizer(pairs[0][:6], pairs[1][:6], padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model.encoder.base_model(**batch)[0]
        mask = batch["attention_mask"].unsqueeze(-1).float()
        x = hidden[:, 0] if pooling == "cls" else (hidden * mask).sum(1) / mask.sum(1)
        first, last = [m for m in model.encoder.heads["pair"] if isinstance(m, torch.nn.Linear)]
        logit = (torch.tanh(x @ first.weight.T + first.bias) @ last.weight.T + last.bias)[:, 0]
        want = torch.sigmoid(logit) if activation == "sigmoid" else logit
        torch.testing.assert_close(model(**batch), want, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(model(**batch, output="logit"), logit, rtol=1e-5, atol=1e-6)
    other = "mean" if pooling == "cls" else "cls"
    with torch.no_grad():
        model.cfg.pooling = other
        assert (model(**batch, output="logit") - logit).abs().max() > 1e-3  # pooling changes the score


def test_head_options_are_for_cross_encoders():
    with pytest.raises(ToolkitError, match="--pooling and --head-activation are for cross-encoders"):
        ModelConfig(arch="bi", pooling="mean").validate()
    with pytest.raises(ToolkitError, match="--pooling must be one of cls, mean, not 'max'"):
        ModelConfig(arch="cross", pooling="max").validate()


@pytest.mark.parametrize("options,message", [
    ({"fused_kernel": "maybe"}, "--fused-kernel must be one of auto, on, off, not 'maybe'"),
    ({"arch": "cross", "head_activation": "relu"}, "--head-activation must be one of identity, sigmoid, not 'relu'"),
    ({"adapter": "prefix"}, "--adapter must be one of seq_bn, double_seq_bn, par_bn, lora, ia3, none, not 'prefix'"),
])
def test_a_closed_option_outside_its_set_is_one_line(options, message):
    """Each option typed as a closed set is checked from its type (a Python caller's string too)."""
    with pytest.raises(ToolkitError) as e:
        ModelConfig(**options).validate()
    assert str(e.value) == message
