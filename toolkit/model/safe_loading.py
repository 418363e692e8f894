"""The one door through which pretrained models come in: local folders, safetensors, no hub code.

transformers 4.57.6 (pinned by adapters 1.3.0) has CVE-2026-4372: a config.json whose
``_attn_implementation_internal`` (or ``attn_implementation``) names a hub repository makes
``from_pretrained`` download and import kernel code, bypassing ``trust_remote_code``. The fix landed
only in transformers 5.3, which adapters does not support, so every config is checked here first.
"""
from __future__ import annotations

import hashlib
import json
import logging
import warnings
from pathlib import Path
from typing import Any, Iterator, Optional

from toolkit.common.errors import ToolkitError, first_line, show, show_path
from toolkit.model.known_models import SHORT_NAMES

BUILTIN_ATTENTION = {"eager", "sdpa", "flash_attention_2", "flash_attention_3", "flex_attention"}
ATTENTION_KEYS = ("_attn_implementation_internal", "_attn_implementation", "attn_implementation")
CODE_KEYS = ("auto_map", "custom_pipelines")


def resolve_model(name_or_path: str) -> tuple[str, Path]:
    """(name to record, local folder) for a short name (known_models) or a local folder; never a hub id."""
    known = SHORT_NAMES.get(name_or_path.lower())
    if known is not None:
        name, folder = known
        return name, folder()
    folder = Path(name_or_path).expanduser()
    if not folder.is_dir():
        raise ToolkitError(
            f"model {name_or_path!r} is neither a known short name ({', '.join(SHORT_NAMES)}) nor a local "
            "folder; toolkit loads models offline only")
    return str(folder.resolve()), folder.resolve()


def _walk(obj: Any, path: str = "") -> Iterator[tuple[str, str, Any]]:
    """(dotted path, key, value) of every entry, through nested objects and lists of them
    (sub-configs such as ``text_config``, or lists of configs)."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield f"{path}{k}", str(k), v
            yield from _walk(v, f"{path}{k}.")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _walk(v, f"{path}{i}.")


def _builtin_attention(value: Any) -> bool:
    """None, a built-in implementation's name, or (transformers 4.57) a dict of them per sub-config."""
    if value is None:
        return True
    if isinstance(value, str):
        return value in BUILTIN_ATTENTION
    if isinstance(value, dict):
        return all(_builtin_attention(v) for v in value.values())
    return False


def caller_trust(config_file: Path, model_section: dict, caller: bool) -> bool:
    """``trust_remote_code`` comes from the caller (flag or argument) only: a run directory, perhaps
    copied from elsewhere, whose own config asks for it is refused unless the caller allows it."""
    if model_section.get("trust_remote_code") and not caller:
        raise ToolkitError(f"{show_path(config_file)}: model.trust_remote_code is set, and a run directory cannot "
                           "turn on code execution by itself; pass --trust-remote-code if you trust where it "
                           "came from")
    return caller


def check_model_folder(folder: Path, trust_remote_code: bool = False) -> dict:
    """Refuse a folder that would run code or unpickle weights; return its config."""
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ToolkitError(f"{folder}: no config.json, not a Hugging Face model folder")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ToolkitError(f"{config_file}: not valid JSON ({e})") from None
    if not isinstance(config, dict):
        raise ToolkitError(f"{config_file}: expected a JSON object")
    for path, key, value in _walk(config):
        if key in ATTENTION_KEYS and not _builtin_attention(value):
            raise ToolkitError(
                f"{show_path(config_file)}: refusing {show_path(path)}={show(value)}: not a built-in attention "
                "implementation (a hub kernel reference would download and run code, CVE-2026-4372)")
    if not trust_remote_code:
        for name in ("config.json", "tokenizer_config.json"):
            path = folder / name
            if not path.is_file():
                continue
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise ToolkitError(f"{path}: not valid JSON ({e})") from None
            for key_path, key, _ in _walk(data):
                if key in CODE_KEYS:
                    raise ToolkitError(
                        f"{show_path(path)}: {show_path(key_path)} asks to run custom code from the model folder; "
                        "refused (pass --trust-remote-code only if you trust its author)")
    if not weight_files(folder):
        found = sorted(p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt", ".h5"))
        extra = f" (found {', '.join(found)}: pickled weights are never loaded)" if found else ""
        raise ToolkitError(f"{folder}: no safetensors weights{extra}")
    return config


def weight_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.safetensors"))


def weights_sha256(folder: Path) -> str:
    """One digest over the folder's safetensors files, to notice a base model that changed."""
    h = hashlib.sha256()
    for path in weight_files(folder):
        h.update(path.name.encode())
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def quiet_libraries() -> None:
    """Keep transformers/adapters chatter (expected missing heads, inactive adapters) off the console."""
    import transformers

    transformers.logging.set_verbosity_error()
    logging.getLogger("adapters").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*There are adapters available but none are activated.*")


def load_tokenizer(folder: Path, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    check_model_folder(folder, trust_remote_code)
    quiet_libraries()
    try:
        tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise ToolkitError(f"{folder}: cannot load the tokenizer ({first_line(e)})") from None
    if not tok.is_fast:
        raise ToolkitError(f"{folder}: only fast (Rust) tokenizers are supported")
    return tok


def unknown_to_adapters(folder: Path) -> Optional[str]:
    """The folder's model type where the adapters library has no model class for it (1.3 has BERT,
    RoBERTa, DeBERTa, ...; not MPNet), else None (an unreadable config: the library says what is wrong)."""
    from adapters.models.auto.adapter_model import ADAPTER_MODEL_MAPPING_NAMES

    try:
        model_type = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None
    return None if model_type in ADAPTER_MODEL_MAPPING_NAMES else str(model_type)


def load_adapter_model(folder: Path, trust_remote_code: bool = False, plain_ok: bool = False):
    """The encoder with the adapters library's flexible heads, from safetensors only. ``plain_ok`` (full
    fine-tuning of a bi-encoder, which needs neither adapters nor a head): a model type the library does
    not know loads as transformers' plain ``AutoModel`` instead."""
    check_model_folder(folder, trust_remote_code)
    quiet_libraries()
    model_type = unknown_to_adapters(folder)
    if model_type is None:
        from adapters import AutoAdapterModel as Auto
    elif plain_ok:
        from transformers import AutoModel as Auto
    else:
        raise ToolkitError(f"{show_path(folder)}: the adapters library has no {model_type} models (adapters, heads); "
                           "fine-tune it in full as a bi-encoder: --adapter none --arch bi")
    try:
        return Auto.from_pretrained(
            str(folder), local_files_only=True, use_safetensors=True, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError) as e:
        raise ToolkitError(f"{folder}: cannot load the model ({first_line(e)})") from None
