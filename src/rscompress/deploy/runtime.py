"""The one way an ONNX Runtime CPU session is opened: parity, latency and the memory probe agree.

Imports no torch, so the memory probe (rss.py) can measure an ONNX Runtime process as deployed.
"""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort

INPUT_NAME = "images"
OUTPUT_NAME = "logits"


def cpu_session(onnx_path: Path | str, threads: int = 1) -> ort.InferenceSession:
    """A CPU session with all graph optimisations and ``threads`` intra-op threads."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads > 1:
        # Idle pool threads otherwise spin-wait after each run; timed interleaved with another
        # session (latency.py) they would steal the cores that session is measured on.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
