"""``toolkit export --sentence-transformers``: a run or merged folder as a folder that
``SentenceTransformer(path)`` (bi-encoder) or ``CrossEncoder(path)`` (cross-encoder) loads.

The folder is written by sentence-transformers itself (its ``save``), from the merged model (LoRA
and IA3 folded into the base weights, merge.py): the files are what that library expects in every
version that reads them, not a copy of its format kept here.
- bi-encoder: Transformer (the run's max_length) + mean Pooling, cosine similarity; ``encode``
  gives the toolkit's embeddings. Its cosine is the normalised score: the user's scale is
  ``offset + scale * cosine``, recorded in ``toolkit.json``.
- cross-encoder: the label scale is folded into the classifier (``scale * W``, ``scale * b +
  offset``) and the activation is the identity, so ``CrossEncoder.predict`` gives the toolkit's
  scores on the user's scale; a sigmoid head (``--loss bce``) keeps its classifier and gets
  CrossEncoder's Sigmoid, so ``predict`` gives the score scaled to 0..1 (as sentence-transformers'
  own STS-B cross-encoders do), and ``toolkit.json`` says how to map it back.
Bottleneck adapters add layers that a plain transformers model has no place for: such a run is
refused (export it to ONNX, or train it with LoRA/IA3 for a sentence-transformers folder).
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from toolkit.artifacts.merge import is_merged, load_merged, merged_plain
from toolkit.common.atomic_io import atomic_dir, refuse_existing, write_json
from toolkit.model.architectures import architecture
from toolkit.model.label_scale import LabelScale

INFO = "toolkit.json"


def export_sentence_transformers(source_dir: str | Path, out: str | Path, overwrite: bool = False,
                                 say=print) -> Path:
    """Write the sentence-transformers folder of a run or merged folder to ``out``."""
    from sentence_transformers import CrossEncoder, SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer

    source_dir, out = Path(source_dir), Path(out)
    refuse_existing(out, overwrite)
    if is_merged(source_dir):
        config, scorer, tokenizer = load_merged(source_dir)
        plain = scorer.plain
    else:
        config, plain, tokenizer = merged_plain(source_dir)
    arch, max_length = architecture(config["model"]["arch"]), config["model"]["max_length"]
    labels = LabelScale.from_dict(config["labels"])
    sigmoid = config["model"].get("head_activation") == "sigmoid"
    with tempfile.TemporaryDirectory(prefix="toolkit-st-") as work, atomic_dir(out) as tmp:
        if arch.has_head and not sigmoid:
            with torch.no_grad():
                plain.classifier.weight.mul_(labels.scale)
                plain.classifier.bias.mul_(labels.scale).add_(labels.offset)
        plain.save_pretrained(work, safe_serialization=True)
        tokenizer.save_pretrained(work)
        if not arch.joint:
            body = Transformer(work, max_seq_length=max_length)
            pooling = Pooling(body.get_embedding_dimension(), pooling_mode="mean")
            SentenceTransformer(modules=[body, pooling], similarity_fn_name="cosine", device="cpu").save(str(tmp))
        else:
            activation = torch.nn.Sigmoid() if sigmoid else torch.nn.Identity()
            CrossEncoder(work, num_labels=1, max_length=max_length, activation_fn=activation,
                         device="cpu").save(str(tmp))
        write_json(tmp / INFO, {"arch": arch.name, "labels": labels.to_dict(), "max_length": max_length,
                                "score": "offset + scale * cosine(embeddings)" if not arch.joint else
                                "offset + scale * CrossEncoder.predict" if sigmoid else
                                "CrossEncoder.predict, on the user's scale", "base_model": config.get("base_model"),
                                "adapter": config["model"].get("adapter")})
    say(f"sentence-transformers folder written to {out}: load it with {arch.st_class}({str(out)!r})")
    return out
