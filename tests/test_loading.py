"""Model loading safety: CVE-2026-4372 configs, custom code, pickled weights, hub ids."""
from __future__ import annotations

import json
import shutil

import pytest

from toolkit.common.errors import ToolkitError
from toolkit.model.safe_loading import check_model_folder, load_adapter_model, resolve_model


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


@pytest.mark.parametrize("value,refused", [
    ({"text_config": "sdpa", "vision_config": "eager"}, False),  # transformers 4.57: one per sub-config
    ({"text_config": "sdpa", "vision_config": "attacker/evil-kernel"}, True),
    ({"": {"deeper": "kernels-community/flash"}}, True),
    (["attacker/evil-kernel"], True),
    (7, True),
])
def test_dict_valued_attention_is_checked_not_crashed_on(model_copy, value, refused):
    edit_config(model_copy, attn_implementation=value)
    if refused:
        with pytest.raises(ToolkitError, match=r"config.json: refusing attn_implementation=.*CVE-2026-4372"):
            check_model_folder(model_copy)
    else:
        check_model_folder(model_copy)


def test_attention_keys_inside_lists_of_sub_configs_are_refused(model_copy):
    edit_config(model_copy, sub_configs=[{"model_type": "bert"}, {"_attn_implementation": "org/kernel"}])
    with pytest.raises(ToolkitError, match=r"refusing sub_configs\.1\._attn_implementation='org/kernel'"):
        check_model_folder(model_copy)
    edit_config(model_copy, sub_configs=[{"auto_map": {"AutoModel": "evil.Model"}}])
    with pytest.raises(ToolkitError, match=r"sub_configs\.0\.auto_map asks to run custom code"):
        check_model_folder(model_copy)


def test_refusal_messages_stay_on_one_line(model_copy):
    edit_config(model_copy, **{"attn_implementation": "evil\nkernel\u2028" + "x" * 500})
    with pytest.raises(ToolkitError) as e:
        check_model_folder(model_copy)
    assert "\n" not in str(e.value) and "\u2028" not in str(e.value) and len(str(e.value)) < 300


def test_a_run_directory_cannot_turn_on_remote_code(tmp_path, small_stsb):
    """trust_remote_code comes from the caller: a run whose config.json asks for it (a run copied from
    elsewhere, or trained with the flag) is refused by every command that loads it, unless the caller
    passes the flag."""
    import subprocess
    import sys

    from toolkit.model.config import ModelConfig
    from toolkit.sources import SourceOptions
    from toolkit.training.config import TrainConfig
    from toolkit.training.loop import resume, train
    from toolkit.training.run_data import DataConfig
    from toolkit.training.run_dir import load_run

    data = DataConfig(str(small_stsb["train"]), str(small_stsb["dev"]), SourceOptions(limit=16))
    train(tmp_path / "run", data, ModelConfig(max_length=32), TrainConfig(epochs=1, batch_size=8, patience=0,
                                                                          keep_checkpoint=True))
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["model"]["trust_remote_code"] is False
    config["model"]["trust_remote_code"] = True
    (tmp_path / "run" / "config.json").write_text(json.dumps(config))
    message = r"run/config.json: model.trust_remote_code is set, and a run directory cannot turn on code execution"
    with pytest.raises(ToolkitError, match=message):
        load_run(tmp_path / "run")
    with pytest.raises(ToolkitError, match=message):
        resume(tmp_path / "run")
    for args in (["predict", str(tmp_path / "run"), "a b", "c d"],
                 ["eval", str(tmp_path / "run"), "--data", str(small_stsb["dev"])]):
        proc = subprocess.run([sys.executable, "-m", "toolkit.cli", *args], capture_output=True, text=True)
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
        assert "model.trust_remote_code is set" in proc.stderr
    assert load_run(tmp_path / "run", trust_remote_code=True).model.cfg.trust_remote_code is True
