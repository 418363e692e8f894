"""The one scoring path and the engines under it: PairScorer (tokenise, length-sort, batch, restore
order, bi-encoder de-duplication) over a PyTorch model (torch_engine), an ONNX bundle on ONNX Runtime
(onnx_bundle: no torch needed) or OpenVINO (openvino_engine), the choice between them on this machine
(runtimes), and the metrics and plots of predictions against gold scores."""
