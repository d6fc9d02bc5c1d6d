"""What a bit-pruned model costs, layer by layer: a printed table and a JSON dict.

Everything comes from :func:`tf_bitpruning.costs.quantized_tensors`. Per layer:
the bitlength of its kernel(s), of its quantized output activation and of the
activation feeding its kernel; the kernel's parameters and memory at the
learned bitlength; its multiply-accumulates (MACs, per example) and
bit-operations ``BOPs = MACs · weight bits · input activation bits`` (an input
that is not quantized counts as 32 bits). Learning-phase bitlengths are real
numbers (printed with 2 decimals), frozen ones integers.

Memory covers the quantized kernels only; biases, BatchNormalization and layers
left in float are counted apart as ``float_parameters``. 1 kB = 1024 bytes.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import tf_keras as keras

from tf_bitpruning import costs, frontend
from tf_bitpruning.layout import unquantized_outputs
from tf_bitpruning.layer_kinds import (CALIBRATED_LAYERS, CALIBRATED_TENSORS, FIXED_GRID_LAYERS, INPUT_CHAIN_LAYERS,
                                       PASS_THROUGH_LAYERS, TF_OP_PASS_THROUGH, builtin_kind, op_lambda_function)

KB_BITS = 8.0 * 1024.0
# hls4ml's names for the kernels of layers with several: SeparableConv1D, and a SeparableConv2D
# annotated with a config of the user's own (bitprune_model splits the others into two convs).
_HLS_WEIGHT_KEYS = {"depthwise_kernel": "depthwise", "pointwise_kernel": "pointwise"}


def _bits(t: costs.QuantizedTensor) -> np.ndarray:
    return np.asarray(t.quantizer.bitlength(t.variables), np.float64).ravel()


def _max_abs(variable) -> float:
    return float(np.max(np.abs(np.asarray(variable)))) if variable is not None else 0.0


def _input_layer_names(model: keras.Model) -> Dict[str, str]:
    """Input quantizer name -> the name of the model input it quantizes (for hls4ml)."""
    names = {}
    for layer in model.layers:
        if costs.is_input_quantizer(layer):
            inbound = frontend.producer(layer)
            if inbound is not None and builtin_kind(inbound) == "InputLayer":
                names[layer.name] = inbound.name
    return names


def _float_parameters(model: keras.Model) -> int:
    """Parameters of the model that are not quantized kernels (biases, BN, float layers)."""
    total = 0
    for layer in model.layers:
        if costs.is_input_quantizer(layer):
            continue
        kernels = {id(weight) for weight, *_ in costs.weight_tensors(layer)}
        total += sum(int(np.prod(w.shape)) for w in costs.user_layer(layer).weights if id(w) not in kernels)
    return total


def calibrated_layers(model: keras.Model) -> List[Dict[str, str]]:
    """Layers with tensors that no learned quantizer covers, which the TFLite export calibrates
    at 8 bits: a LayerNormalization's ``"statistics"``, an LSTM's ``"gates and states"``, ``"all"``
    of a layer left in float, the ``"output"`` of one left float by ``quantize_outputs=False``; and
    those on a grid TFLite fixes (an attention's softmax output,
    ``layer_kinds.FIXED_GRID_LAYERS``)."""
    found, outputs = [], set(unquantized_outputs(model))
    for layer in model.layers:
        user = costs.user_layer(layer)
        if layer.name in outputs:
            found.append({"layer": user.name, "tensors": "output"})
        if builtin_kind(user) in FIXED_GRID_LAYERS:
            found.append({"layer": user.name, "tensors": FIXED_GRID_LAYERS[builtin_kind(user)]})
        elif user is not layer:
            if builtin_kind(user, exact=False) in CALIBRATED_LAYERS:
                found.append({"layer": user.name, "tensors": CALIBRATED_TENSORS[builtin_kind(user, exact=False)]})
        elif not (costs.is_input_quantizer(layer) or builtin_kind(layer, exact=False) in PASS_THROUGH_LAYERS
                  or builtin_kind(layer, exact=False) in INPUT_CHAIN_LAYERS
                  or op_lambda_function(layer) in TF_OP_PASS_THROUGH):
            found.append({"layer": layer.name, "tensors": "all"})
    return found


def _fixed_type(bits: int, low: float, high: float) -> str:
    """An hls4ml/Vivado fixed-point type of ``bits`` total bits whose integer part
    covers ``[low, high]``: ``ap_ufixed<b,I>`` for non-negative ranges, else ``ap_fixed<b,I>``."""
    top = max(abs(low), abs(high))
    if low >= 0:
        integer = math.floor(math.log2(top)) + 1 if top > 0 else 0
        return f"ap_ufixed<{bits},{integer}>"
    integer = math.floor(math.log2(top)) + 2 if top > 0 else 1
    return f"ap_fixed<{bits},{integer}>"


def _hls_bits(t: costs.QuantizedTensor) -> int:
    """Integer width for hls4ml: the frozen bitlength, or the learned one rounded up
    (as :func:`freeze_bitlengths` does by default); the widest channel."""
    from tf_bitpruning.rounding import round_bits

    return max(round_bits(float(n), "ceil", None, t.quantizer.min_bits, t.quantizer.max_bits)
               for n in _bits(t))


def precision_report(model: keras.Model) -> Dict[str, Any]:
    """The per-layer costs of a bit-pruned model as a JSON-serializable dict.

    Returns ``{"rows": [...], "totals": {...}, "hls4ml": {"LayerName": {...}}, "calibrated": [...]}``:

    - each row: ``layer``, ``weight_bits`` (parameter-weighted over the layer's
      kernels; None without kernel), ``activation_bits`` (its quantized output;
      None if not quantized), ``input_bits`` (the activation feeding the kernel),
      ``parameters``, ``weight_memory_bits``, ``weight_memory_kb``, ``macs``, ``bops``;
    - totals: the sums of those columns, ``float_parameters``, the averages
      ``avg_bits``/``avg_weight_bits``/``avg_activation_bits`` (per tensor, the
      paper's metric), ``memory_weight_bits`` (memory / parameters), the kernels'
      size in float32 and int8 and the compression against both, ``frozen``;
    - ``calibrated``: the layers with tensors no learned quantizer covers, which the TFLite
      export calibrates at 8 bits (``{"layer", "tensors": "statistics" | "all"}``: a
      LayerNormalization's statistics, a layer left in float);
    - ``hls4ml``: ``{"LayerName": {name: {"Precision": {"weight": "ap_fixed<b,I>",
      "result": "ap_ufixed<b,I>"}}}}``, shaped like ``config["LayerName"]`` of
      ``hls4ml.utils.config_from_keras_model(model, granularity="name")``, to merge
      into it. ``b`` is the integer bitlength (learned ones rounded up); ``I``
      covers the tensor's range (max |kernel|; the activation's ``[min, max]``).
      Our grids' steps are not powers of two, so these types have the learned
      width, not the exact levels. Input quantizers appear under the name of the
      model input they quantize.
    """
    tensors = costs.quantized_tensors(model)
    costs.require_tensors(model, tensors)
    frozen = all(t.quantizer.frozen for t in tensors)
    bits = {id(t): _bits(t) for t in tensors}
    mean = {key: float(value.mean()) for key, value in bits.items()}

    rows: List[Dict[str, Any]] = []
    by_layer: Dict[str, Dict[str, Any]] = {}
    for t in tensors:
        row = by_layer.get(t.layer)
        if row is None:
            row = by_layer[t.layer] = {
                "layer": t.layer, "weight_bits": None, "activation_bits": None, "input_bits": None,
                "parameters": 0, "weight_memory_bits": 0.0, "weight_memory_kb": 0.0, "macs": 0, "bops": 0.0}
            rows.append(row)
        if t.kind == "activations":
            row["activation_bits"] = mean[id(t)]
            continue
        in_bits = mean[id(t.input)] if t.input is not None else costs.FLOAT_BITS
        row["parameters"] += t.elements
        row["weight_memory_bits"] += t.elements * mean[id(t)]
        row["macs"] += t.macs
        row["bops"] += t.macs * mean[id(t)] * in_bits
        row["input_bits"] = in_bits
    for row in rows:
        if row["parameters"]:
            row["weight_bits"] = row["weight_memory_bits"] / row["parameters"]
        row["weight_memory_kb"] = row["weight_memory_bits"] / KB_BITS

    parameters = sum(r["parameters"] for r in rows)
    memory = sum(r["weight_memory_bits"] for r in rows)
    macs = sum(r["macs"] for r in rows)

    def average(kind: Optional[str]) -> Optional[float]:
        chosen = [mean[id(t)] for t in tensors if kind is None or t.kind == kind]
        return float(np.mean(chosen)) if chosen else None

    totals = {
        "parameters": parameters,
        "weight_memory_bits": memory,
        "weight_memory_kb": sum(r["weight_memory_kb"] for r in rows),
        "macs": macs,
        "bops": sum(r["bops"] for r in rows),
        "float_parameters": _float_parameters(model),
        "avg_bits": average(None),
        "avg_weight_bits": average("weights"),
        "avg_activation_bits": average("activations"),
        "memory_weight_bits": memory / parameters if parameters else None,
        "float32_memory_kb": parameters * 32.0 / KB_BITS,
        "int8_memory_kb": parameters * 8.0 / KB_BITS,
        "compression_vs_float32": parameters * 32.0 / memory if memory else None,
        "compression_vs_int8": parameters * 8.0 / memory if memory else None,
        "frozen": frozen,
    }

    inputs = _input_layer_names(model)
    hls: Dict[str, Dict[str, Any]] = {}
    for t in tensors:
        name = inputs.get(t.layer, t.layer)
        precision = hls.setdefault(name, {"Precision": {}})["Precision"]
        width = _hls_bits(t)
        if t.kind == "weights":
            top = _max_abs(t.weight)
            attr = t.name.split("/", 1)[1]
            key = "weight" if attr == "weights" else _HLS_WEIGHT_KEYS.get(attr, attr)
            precision[key] = _fixed_type(width, -top, top)
        else:
            low = min(float(np.asarray(t.variables["min"])), 0.0) if "min" in t.variables else 0.0
            high = max(float(np.asarray(t.variables["max"])), 0.0) if "max" in t.variables else 1.0
            precision["result"] = _fixed_type(width, low, high)
    return {"rows": rows, "totals": totals, "hls4ml": {"LayerName": hls}, "calibrated": calibrated_layers(model)}


def _format_bits(value: Optional[float], frozen: bool) -> str:
    if value is None:
        return "-"
    if frozen and float(value).is_integer():
        return str(int(value))
    return f"{value:.2f}"


def _format_count(value: float) -> str:
    return f"{int(round(value)):,}"


def summary(model: keras.Model, print_fn: Callable[[str], Any] = print) -> None:
    """Prints a per-layer table of bitlengths, parameters, memory, MACs and BOPs of a
    bit-pruned model, with totals and the compression against float32 and int8
    (like larq's ``lq.models.summary``). See :func:`precision_report` for the columns.
    """
    report = precision_report(model)
    frozen = report["totals"]["frozen"]
    header = ["Layer", "W bits", "A bits", "In bits", "Params", "W mem (bits)", "W mem (kB)", "MACs", "BOPs"]
    table = []
    for r in report["rows"]:
        table.append([
            r["layer"], _format_bits(r["weight_bits"], frozen), _format_bits(r["activation_bits"], frozen),
            _format_bits(r["input_bits"], frozen) if r["parameters"] else "-",
            _format_count(r["parameters"]), _format_count(r["weight_memory_bits"]),
            f"{r['weight_memory_kb']:.2f}", _format_count(r["macs"]), _format_count(r["bops"])])
    t = report["totals"]
    total_row = ["Total", _format_bits(t["memory_weight_bits"], False), "", "", _format_count(t["parameters"]),
                 _format_count(t["weight_memory_bits"]), f"{t['weight_memory_kb']:.2f}",
                 _format_count(t["macs"]), _format_count(t["bops"])]
    widths = [max(len(str(row[i])) for row in [header, total_row] + table) for i in range(len(header))]

    def line(cells):
        return "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    rule = "-" * len(line(header))
    phase = "frozen" if frozen else "learning phase"
    print_fn(f'Model: "{model.name}" (bit-pruned, {phase})')
    print_fn(rule)
    print_fn(line(header))
    print_fn(rule)
    for row in table:
        print_fn(line(row))
    print_fn(rule)
    print_fn(line(total_row))
    print_fn(rule)

    def ratio(value):
        return f"{value:.2f}x" if value is not None else "-"

    print_fn(f"Average bitlength per tensor: {_format_bits(t['avg_bits'], False)} "
             f"(weights {_format_bits(t['avg_weight_bits'], False)}, "
             f"activations {_format_bits(t['avg_activation_bits'], False)})")
    print_fn(f"Quantized kernels: {t['weight_memory_kb']:.2f} kB at the learned bitlengths "
             f"vs {t['float32_memory_kb']:.2f} kB float32 ({ratio(t['compression_vs_float32'])} smaller) "
             f"and {t['int8_memory_kb']:.2f} kB int8 ({ratio(t['compression_vs_int8'])} smaller)")
    print_fn(f"Float parameters (biases, BatchNormalization, unquantized layers): "
             f"{_format_count(t['float_parameters'])}")
    fixed = [c for c in report["calibrated"] if c["tensors"] in FIXED_GRID_LAYERS.values()]
    calibrated = [c for c in report["calibrated"] if c not in fixed]
    if calibrated:
        print_fn("No learned grid, calibrated at 8 bits by export_tflite(representative_dataset=...): "
                 + ", ".join(f"{c['layer']} ({c['tensors']})" for c in calibrated))
    if fixed:
        print_fn("No learned grid, on a fixed 8-bit grid the .tflite reproduces: "
                 + ", ".join(f"{c['layer']} ({c['tensors']})" for c in fixed))
