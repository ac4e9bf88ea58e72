"""Converters and exporters for PQ-VAE checkpoints (see convert_checkpoint.py, export_onnx.py)."""
