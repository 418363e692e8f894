"""What a finished run becomes and how it is opened again: any saved model as one scorer
(open_model), LoRA/IA3 folded into the base (merge), a verified ONNX bundle (onnx_export, checked
against PyTorch by export_gate; graph_cache spares a second export of the same model), a
sentence-transformers folder (st_export), and evaluation of a saved model on a pair file (evaluate)."""
