"""hls4ml export: each learned bitlength becomes the width of a fixed-point datapath.

:func:`export_hls4ml` turns a frozen bit-pruned model on power-of-two grids
(``bitprune_model(..., grid="pow2")``) into an hls4ml project (io_parallel) whose
weights, biases, accumulators and layer outputs carry ``fixed<W, I>``/``ufixed<W, I>``
types: every quantizer's grid as a ``b``-bit type that rounds half to even and
saturates (``RND_CONV``, ``SAT``: what the quantizer computes), every other tensor
in the exact type of the sums that produce it (:mod:`.hls_graph`). Its C++ emulation
(``hls_model.compile()``, ``hls_model.predict(x)``, g++ only) then computes what
the Keras model computes, except in the layers the export lists as ``inexact``
(hls4ml's table-based softmax/sigmoid/tanh, BatchNormalization factors folded into a
kernel). The precisions go to ``<output_dir>/bitpruning_precision.json``.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, Optional, Union

import numpy as np

from tf_bitpruning import costs
from tf_bitpruning.export.checks import ExportError, check_frozen
from tf_bitpruning.export.hls_graph import HlsGraph, build
from tf_bitpruning.pipeline import pipeline_for

PRECISION_FILE = "bitpruning_precision.json"
BACKENDS = ("Vitis", "Vivado")
_PRECISION_KEYS = ("result", "weight", "bias", "accum")
SOFTMAX_TABLE_SIZE = 4096


class HlsExport:
    """The result of :func:`export_hls4ml`.

    Attributes:
      hls_model: the hls4ml ``ModelGraph`` (``compile()``, ``predict(x)``, ``build()``).
      float_model: the Keras 3 model it was converted from (quantized kernels, BN folded).
      precision: ``{layer: {"result": "ufixed<3,1,RND_CONV,SAT>", ...}}``, as set in the hls config.
      bits: ``{layer: {"weight": b, "result": b}}``: the learned bitlengths behind them.
      inexact: ``{layer: reason}``: where the emulation may differ from Keras (empty: bit-exact).
      path: the JSON file of all of the above.
    """

    def __init__(self, hls_model, graph: HlsGraph, path: str):
        self.hls_model = hls_model
        self.float_model = graph.model
        self.precision = {name: {k: t.hls() for k, t in types.items()} for name, types in graph.precision.items()}
        self.bits = graph.bits
        self.inexact = dict(graph.inexact)
        self.path = path

    def to_json(self) -> Dict[str, Any]:
        return {"precision": self.precision, "bits": self.bits, "inexact": self.inexact}


def _tf_keras(model):
    """The tf_keras model to walk (a Keras 3 model's twin); checks that it is frozen."""
    check_frozen(model, "export_hls4ml")
    return pipeline_for(model).export_model(model)


def _check_grids(model) -> None:
    loose = [t.name for t in costs.quantized_tensors(model) if t.quantizer.grid != "pow2"]
    if loose:
        raise ExportError(
            f"export_hls4ml: model '{model.name}' quantizes {len(loose)} tensors on grids whose steps are not "
            f"powers of two (e.g. {loose[:3]}), which no fixed<W,I> type holds. Bit-prune with "
            f"tfbp.bitprune_model(model, grid='pow2'), train, freeze and fine-tune, then export.")


def align_to_hls4ml(model, fold_fraction_bits: int = 8) -> Dict[str, float]:
    """Moves the biases of a frozen pow2 bit-pruned ``model`` onto the grid of its hls4ml
    accumulators (input step × weight step, rounded half to even), in place, so that Keras
    adds what the fixed-point datapath adds (as :func:`align_to_tflite` does for a
    ``.tflite``). Returns, per moved layer, the largest move in bias steps (at most 0.5).
    Layers with a folded BatchNormalization keep their biases (they are inexact anyway)."""
    twin = _tf_keras(model)
    _check_grids(twin)
    graph = build(twin, fold_fraction_bits)
    moved = {}
    targets = {costs.user_layer(layer).name: costs.user_layer(layer) for layer in model.layers}
    for name, (bias, fraction) in graph.biases.items():
        inner = targets.get(name)
        if inner is None or not getattr(inner, "use_bias", False):
            continue
        codes = bias * 2.0 ** fraction
        if np.any(codes != np.round(codes)):
            inner.bias.assign((np.round(codes) / 2.0 ** fraction).reshape(tuple(inner.bias.shape)).astype(np.float32))
            moved[name] = float(np.abs(codes - np.round(codes)).max())
    return moved


def export_hls4ml(model, output_dir: Union[str, os.PathLike], *, backend: str = "Vitis",
                  project_name: str = "myproject", part: Optional[str] = None, align_biases: bool = True,
                  fold_fraction_bits: int = 8, trace: bool = False) -> HlsExport:
    """An hls4ml project of a frozen bit-pruned model on power-of-two grids.

    >>> bp = tfbp.bitprune_model(model, grid="pow2")          # doctest: +SKIP
    >>> frozen = tfbp.freeze_bitlengths(bp)                    # train, freeze, fine-tune
    >>> out = tfbp.export_hls4ml(frozen, "hls_prj")            # doctest: +SKIP
    >>> out.hls_model.compile(); y = out.hls_model.predict(x)  # doctest: +SKIP

    Args:
      model: a frozen (:func:`freeze_bitlengths`) tf_keras or Keras 3 model bit-pruned
        with ``grid="pow2"``.
      output_dir: the hls4ml project directory (written by ``compile()``/``write()``).
      backend: ``"Vitis"`` or ``"Vivado"`` (only their C++ emulation is needed here).
      project_name, part: hls4ml's; ``part`` None: the backend's default FPGA.
      align_biases: first move the model's biases onto the accumulator grid, in place
        (:func:`align_to_hls4ml`); without it a bias off that grid makes its layer inexact.
      fold_fraction_bits: fraction bits beyond the learned kernel grid kept by a kernel
        with a BatchNormalization folded in.
      trace: record every layer's output (``hls_model.trace(x)``).

    Returns:
      An :class:`HlsExport`: the hls4ml model, the precisions (also written to
      ``<output_dir>/bitpruning_precision.json``) and the layers that are not bit-exact.

    Raises:
      ValueError: the model is not bit-pruned or not frozen.
      ExportError: a grid is not a power of two, or a layer is not supported (named).
    """
    if backend not in BACKENDS:
        raise ValueError(f"export_hls4ml: backend must be one of {BACKENDS}, got {backend!r}.")
    twin = _tf_keras(model)
    _check_grids(twin)
    if align_biases:
        align_to_hls4ml(model, fold_fraction_bits)
        twin = _tf_keras(model)
    graph = build(twin, fold_fraction_bits)
    try:
        import hls4ml
    except ImportError as e:
        raise ImportError("export_hls4ml needs hls4ml: pip install 'tf_bitpruning[hls4ml]' (or hls4ml).") from e
    config = hls4ml.utils.config_from_keras_model(graph.model, granularity="name", backend=backend)
    config["Model"]["Strategy"] = "Latency"
    for name, types in graph.precision.items():
        if name not in config["LayerName"]:
            raise ExportError(f"export_hls4ml: hls4ml has no layer '{name}' in its config of the float model.")
        layer = config["LayerName"][name]
        for key, t in types.items():
            if key in _PRECISION_KEYS:
                layer["Precision"][key] = t.hls()
            else:  # a type of hls4ml's own attribute (softmax tables): set in the layer's config
                layer[f"{key}_t"] = t.hls()
        if "inp_norm" in types:  # softmax: 4096-entry tables (12 index bits of x_max - x and of Σ exp)
            layer["TableSize"] = layer["InvTableSize"] = SOFTMAX_TABLE_SIZE
        layer["Trace"] = bool(trace)
    output_dir = os.fspath(output_dir)
    kwargs = {"part": part} if part else {}
    hls_model = hls4ml.converters.convert_from_keras_model(
        graph.model, output_dir=output_dir, project_name=project_name, backend=backend,
        io_type="io_parallel", hls_config=config, **kwargs)
    os.makedirs(output_dir, exist_ok=True)
    result = HlsExport(hls_model, graph, os.path.join(output_dir, PRECISION_FILE))
    with open(result.path, "w") as f:
        json.dump(result.to_json(), f, indent=1, sort_keys=True)
    return result
