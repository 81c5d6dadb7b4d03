"""The converted model files (ONNX) that Dayu ships; see MODELS.md and hack/convert_models.py."""
