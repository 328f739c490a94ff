"""The benchmark's peers: the same shipped ONNX models served the way BentoML and LitServe
users write it (bench/peers_benchmark.py starts them from .venv-bench)."""
