"""Model loading safety: CVE-2026-4372 configs, custom code, pickled weights, hub ids."""
from __future__ import annotations

import json
import shutil

import pytest

from toolkit.errors import ToolkitError
from toolkit.loading import check_model_folder, load_adapter_model, resolve_model


@pytest.fixture
def model_copy(tmp_path):
    _, folder = resolve_model("all-MiniLM-L6-v2")
    dst = tmp_path / "model"
    shutil.copytree(folder, dst)
    return dst


def edit_config(folder, **changes):
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(changes)
    (folder / "config.json").write_text(json.dumps(cfg))


def test_short_names_and_local_folders(model_copy):
    name, folder = resolve_model("minilm-l6")
    assert name == "all-MiniLM-L6-v2" and (folder / "model.safetensors").is_file()
    assert resolve_model(str(model_copy))[1] == model_copy.resolve()


def test_hub_ids_are_refused():
    with pytest.raises(ToolkitError, match="neither a known short name .* toolkit loads models offline only"):
        resolve_model("sentence-transformers/all-MiniLM-L6-v2")


@pytest.mark.parametrize("key", ["_attn_implementation_internal", "attn_implementation"])
def test_hub_kernel_attention_is_refused_before_loading(model_copy, key, monkeypatch):
    edit_config(model_copy, **{key: "attacker/evil-kernel"})
    import adapters

    def boom(*a, **k):
        raise AssertionError("from_pretrained must not be reached")
    monkeypatch.setattr(adapters.AutoAdapterModel, "from_pretrained", boom)
    with pytest.raises(ToolkitError, match=r"refusing .*'attacker/evil-kernel'.*CVE-2026-4372"):
        load_adapter_model(model_copy)
    # also refused with the trust flag: this path is not remote code the user can opt into
    with pytest.raises(ToolkitError, match="CVE-2026-4372"):
        check_model_folder(model_copy, trust_remote_code=True)


def test_nested_attention_key_is_refused(model_copy):
    edit_config(model_copy, text_config={"_attn_implementation_internal": "org/kernel"})
    with pytest.raises(ToolkitError, match="text_config._attn_implementation_internal"):
        check_model_folder(model_copy)


def test_builtin_attention_is_accepted(model_copy):
    edit_config(model_copy, _attn_implementation_internal="sdpa")
    assert check_model_folder(model_copy)["_attn_implementation_internal"] == "sdpa"


def test_custom_code_needs_the_trust_flag(model_copy):
    edit_config(model_copy, auto_map={"AutoModel": "modeling_evil.EvilModel"})
    with pytest.raises(ToolkitError, match="auto_map asks to run custom code .* --trust-remote-code"):
        check_model_folder(model_copy)
    check_model_folder(model_copy, trust_remote_code=True)


def test_pickled_weights_are_never_loaded(model_copy):
    (model_copy / "model.safetensors").rename(model_copy / "pytorch_model.bin")
    with pytest.raises(ToolkitError, match=r"no safetensors weights \(found pytorch_model.bin"):
        load_adapter_model(model_copy)


def test_missing_or_broken_config(tmp_path, model_copy):
    with pytest.raises(ToolkitError, match="no config.json"):
        check_model_folder(tmp_path)
    (model_copy / "config.json").write_text("{not json")
    with pytest.raises(ToolkitError, match="config.json: not valid JSON"):
        check_model_folder(model_copy)
