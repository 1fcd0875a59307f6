"""Inference: ONNX Runtime engine, slots, dynamic batching, routing and the Open Inference Protocol codec."""
