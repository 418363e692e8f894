"""Fold LoRA or IA3 into the base weights: a model plain ``transformers`` loads, no adapters library.

A merged directory holds ``model/`` (an HF folder: ``AutoModel`` for a bi-encoder,
``AutoModelForSequenceClassification`` with one regression output for a cross-encoder, safetensors,
tokenizer) and ``config.json`` (what the run's says about labels, base model and training, with
``kind: merged``). The cross-encoder's head (Linear, tanh, Linear on the CLS token) is BERT's pooler
plus classifier, so it maps onto ``BertForSequenceClassification`` exactly.
Bottleneck adapters add layers and cannot be folded; ``toolkit export`` puts them in the graph.
"""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Optional

import torch
from torch import nn

from toolkit.common.atomic_io import atomic_dir, read_json, refuse_existing, write_json
from toolkit.common.errors import ToolkitError
from toolkit.model.adapter_kinds import adapter_kind
from toolkit.model.architectures import architecture
from toolkit.model.batching import PairTokenizer
from toolkit.model.label_scale import LabelScale
from toolkit.model.regressor import NAME, PairRegressor, mean_pool
from toolkit.training.run_dir import CONFIG, METRICS, Run, load_run

MERGED_MODEL = "model"
# what the adapters library adds to the base model's state dict (none of it is a base weight)
_ADAPTER_KEYS = (".loras.", ".adapters.", "prompt_tuning", "prefix_tuning", "invertible_adapters",
                 "shared_parameters", ".refts.", "adapter_fusion_layer")


def is_merged(folder: Path) -> bool:
    return (folder / CONFIG).is_file() and read_json(folder / CONFIG).get("kind") == "merged"


def _base_state(encoder: nn.Module) -> dict[str, torch.Tensor]:
    prefix = encoder.base_model_prefix + "."
    return {k[len(prefix):]: v for k, v in encoder.state_dict().items()
            if k.startswith(prefix) and not any(s in k for s in _ADAPTER_KEYS)}


def plain_model(model: PairRegressor, base_folder: Path) -> nn.Module:
    """The (merged) encoder as a plain transformers model with the run's weights."""
    import transformers

    config = transformers.AutoConfig.from_pretrained(str(base_folder), local_files_only=True)
    state = _base_state(model.encoder)
    arch = architecture(model.cfg.arch)
    if not arch.has_head:
        plain = getattr(transformers, arch.hf_auto_class).from_config(config)
        target = plain
    else:
        head = model.encoder.config.prediction_heads[NAME]
        if head["layers"] != 2 or head["activation_function"] != "tanh" or head.get("use_pooler") or \
                model.cfg.pooling == "mean":
            pooled = ", on the mean of the token states" if model.cfg.pooling == "mean" else ""
            raise ToolkitError(f"the cross-encoder head ({head['layers']} layers, {head['activation_function']}"
                               f"{pooled}) has no transformers equivalent (BERT's reads [CLS]); export the run "
                               "directly: toolkit export RUN --onnx")
        config.num_labels, config.problem_type = 1, "regression"
        plain = getattr(transformers, arch.hf_auto_class).from_config(config)
        target = getattr(plain, plain.base_model_prefix)
        weights = dict(model.encoder.heads[NAME].named_parameters())
        plain.classifier.load_state_dict({"weight": weights["4.weight"], "bias": weights["4.bias"]})
        state["pooler.dense.weight"], state["pooler.dense.bias"] = weights["1.weight"], weights["1.bias"]
    missing, unexpected = target.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ToolkitError(f"cannot map the merged weights onto {type(plain).__name__}: "
                           f"missing {missing[:3]}, unexpected {unexpected[:3]}")
    return plain.eval()


def _ia3_layers(encoder: nn.Module):
    for module in encoder.modules():
        loras = getattr(module, "loras", None)
        if isinstance(loras, nn.ModuleDict) and NAME in loras and loras[NAME].composition_mode == "scale" \
                and getattr(module, "bias", None) is not None:
            yield module, (loras[NAME].delta_w * loras[NAME].scaling).reshape(-1)


def merge_into_base(encoder: nn.Module) -> None:
    """The adapters library's merge, plus what it lacks for IA3 (adapters 1.3.0): IA3 scales a
    layer's whole output, (W x + b) * l, but the library folds l into W only and leaves b as it was,
    so its merged model differs (by ~1e-3 on MiniLM embeddings). The bias is scaled here."""
    encoder.merge_adapter(NAME)
    with torch.no_grad():
        for module, scale in _ia3_layers(encoder):
            module.bias.mul_(scale.to(module.bias.dtype))


def unmerge_from_base(encoder: nn.Module) -> None:
    """Undo ``merge_into_base`` (the library's reset, and the IA3 bias scaling)."""
    with torch.no_grad():
        for module, scale in _ia3_layers(encoder):
            if getattr(module, "merged", None):
                module.bias.div_(scale.to(module.bias.dtype))
    encoder.reset_adapter()


def merge_run(run_dir: str | Path, out: str | Path, overwrite: bool = False) -> Path:
    """Write the merged model of a LoRA, IA3 (or fully fine-tuned) run to ``out``."""
    run_dir, out = Path(run_dir), Path(out)
    refuse_existing(out, overwrite)
    if is_merged(run_dir):
        raise ToolkitError(f"{run_dir}: already a merged model")
    run_config, plain, tokenizer = merged_plain(run_dir)
    adapter = run_config["model"]["adapter"]
    config = {**run_config, "kind": "merged", "merged_from": {"run": str(run_dir.resolve()), "adapter": adapter}}
    if (run_dir / METRICS).is_file():
        config["metrics"] = {"dev": read_json(run_dir / METRICS).get("dev")}
    with atomic_dir(out) as tmp:
        plain.save_pretrained(str(tmp / MERGED_MODEL), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp / MERGED_MODEL))
        write_json(tmp / CONFIG, config)
    return out


def merged_plain(run_dir: Path) -> tuple[dict, nn.Module, object]:
    """(the run's config, its model as plain transformers with the adapter folded in, tokenizer)
    of a LoRA, IA3 or fully fine-tuned run."""
    from toolkit.model.safe_loading import resolve_model

    run = load_run(run_dir, fused_kernel="off")
    adapter = run.model.cfg.adapter
    if not adapter_kind(adapter).folds:
        raise ToolkitError(f"{run_dir}: {adapter} adapters add layers and cannot be folded into the base weights; "
                           f"export the run directly: toolkit export {run_dir} --onnx --out BUNDLE")
    if not adapter_kind(adapter).full:
        merge_into_base(run.model.encoder)
    _, base_folder = resolve_model(run.config["base_model"]["name"])
    return run.config, plain_model(run.model, base_folder), run.tokens.tokenizer


class MergedRegressor(nn.Module):
    """A merged directory's model with the calls of ``PairRegressor`` that ``Predictor`` and the
    exporter make (``cfg.arch``, ``embed``, ``forward``), with the same outputs."""

    def __init__(self, plain: nn.Module, arch: str, head_activation: Optional[str] = None):
        super().__init__()
        self.plain = plain
        self.cfg = SimpleNamespace(arch=arch, head_activation=head_activation)

    def embed(self, input_ids, attention_mask, token_type_ids=None) -> torch.Tensor:
        out = self.plain(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
        return mean_pool(out[0], attention_mask)

    def forward(self, input_ids, attention_mask, token_type_ids=None) -> torch.Tensor:
        """The cross-encoder's normalised score."""
        out = self.plain(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
        logits = out.logits[:, 0].float()
        return torch.sigmoid(logits) if self.cfg.head_activation == "sigmoid" else logits


def load_merged_run(folder: str | Path) -> Run:
    """A merged folder as a ``Run`` (its model a ``MergedRegressor``): eval, predict and score take it."""
    folder = Path(folder)
    config, scorer, tokenizer = load_merged(folder)
    tokens = PairTokenizer(tokenizer, config["model"]["arch"], config["model"]["max_length"])
    return Run(folder, config, scorer, tokens, LabelScale.from_dict(config["labels"]))


def load_merged(folder: str | Path) -> tuple[dict, MergedRegressor, object]:
    """(config, scorer, tokenizer) of a merged directory, with plain transformers."""
    import transformers

    from toolkit.model.safe_loading import check_model_folder, load_tokenizer

    folder = Path(folder)
    config = read_json(folder / CONFIG)
    model_dir = folder / MERGED_MODEL
    check_model_folder(model_dir, False)
    cls = getattr(transformers, architecture(config["model"]["arch"]).hf_auto_class)
    plain = cls.from_pretrained(str(model_dir), local_files_only=True, use_safetensors=True)
    scorer = MergedRegressor(plain.eval(), config["model"]["arch"], config["model"].get("head_activation"))
    return config, scorer, load_tokenizer(model_dir, False)
