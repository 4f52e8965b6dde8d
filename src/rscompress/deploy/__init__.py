"""Deployment: ONNX export with a parity check (onnx.py), CPU latency and memory (latency.py).

Nothing is imported here on purpose: ``python -m rscompress.deploy.rss`` measures the peak
memory of an ONNX Runtime process, and importing torch on the way in would inflate it.
"""
