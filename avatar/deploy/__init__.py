"""Deployment of the neural generator: ONNX export and the onnxruntime runner."""
