"""TensorBoard summaries of the bitlengths: what ``BitBudget(log_dir=...)`` writes
to ``log_dir/bitpruning`` every epoch."""

from __future__ import annotations

import math
from typing import Dict, List

import numpy as np
import tensorflow as tf

from tf_bitpruning import costs

# Bytes per kB in the logged model size (as larq's summary: 1 kB = 1024 bytes).
KB = 1024.0


def tag(t: costs.QuantizedTensor) -> str:
    """``bits/weights/conv2d``, or ``bits/weights/sep/depthwise_kernel`` for a layer with two kernels."""
    suffix = t.layer if t.name == f"{t.layer}/{t.kind}" else t.name
    return f"bits/{t.kind}/{suffix}"


def write_bitlengths(writer, tensors: List[costs.QuantizedTensor], epoch: int, values: Dict[str, float],
                     lam: float, target_bits: float) -> None:
    """Per-tensor bitlengths, bitlength histograms (weights and activations apart),
    the averages in ``values`` (``avg_bits``, ``avg_weight_bits``,
    ``avg_activation_bits``), λ, the target and the kernels' size in kB."""
    per_kind: Dict[str, list] = {"weights": [], "activations": []}
    size_bits = 0.0
    with writer.as_default(step=epoch):
        for t in tensors:
            n = np.asarray(t.quantizer.bitlength(t.variables), np.float32).ravel()
            tf.summary.scalar(tag(t), float(n.mean()))
            per_kind[t.kind].append(n)
            if t.kind == "weights":
                size_bits += t.elements * float(n.mean())
        for kind, arrays in per_kind.items():
            if arrays:
                tf.summary.histogram(f"bits_histogram/{kind}", np.concatenate(arrays))
        tf.summary.scalar("avg_bits", values["avg_bits"])
        for key, kind in (("avg_weight_bits", "weights"), ("avg_activation_bits", "activations")):
            if math.isfinite(values[key]):
                tf.summary.scalar(f"avg_bits/{kind}", values[key])
        tf.summary.scalar("bit_lambda", lam)
        tf.summary.scalar("target_bits", target_bits)
        tf.summary.scalar("model_size_kb", size_bits / 8.0 / KB)
    writer.flush()
