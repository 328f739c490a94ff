"""Torch to ONNX export with segserve metadata, parity checks and model cards."""
