"""What the exporter refuses, and the error it raises."""

from __future__ import annotations

from typing import List, Sequence, Tuple

import tf_keras as keras

from tf_bitpruning import costs
from tf_bitpruning.export._compat import flatbuffer_utils, schema
from tf_bitpruning.export.metadata import text
from tf_bitpruning.layer_kinds import RECURRENT_LAYERS, builtin_kind
from tf_bitpruning.pipeline import pipeline_for


class ExportError(RuntimeError):
    """The model cannot be exported as a full-integer TFLite model."""


def check_frozen(model: keras.Model, what: str = "export_tflite") -> List[costs.QuantizedTensor]:
    """The model's quantized tensors; raises unless every bitlength is frozen (``what``
    names the caller in the messages)."""
    pipeline_for(model).check_model(model, what)
    tensors = costs.quantized_tensors(model)
    if not tensors:
        raise ValueError(f"{what}: model '{model.name}' has no learned bitlengths. Make it with "
                         f"tfbp.bitprune_model(model), train it, then tfbp.freeze_bitlengths(...).")
    loose = [t.name for t in tensors if not t.quantizer.frozen]
    if loose:
        raise ValueError(
            f"{what}: model '{model.name}' is not frozen ({len(loose)} bitlengths are still "
            f"real-valued, e.g. {loose[:3]}). Export needs integer bitlengths: call "
            f"frozen = tfbp.freeze_bitlengths(model), fine-tune `frozen`, and export it.")
    return tensors


def check_calibration(calibrated: Sequence[Tuple[str, str]], representative_dataset) -> None:
    """Refuses layers with inner tensors no learned quantizer covers (``calibrated``: their
    names and which tensors) when there is no data to calibrate them."""
    if calibrated and representative_dataset is None:
        layers = ", ".join(f"'{name}' ({what})" for name, what in calibrated)
        raise ExportError(
            f"the layers {layers} compute tensors that no learned quantizer covers (a "
            f"LayerNormalization's statistics: mean, variance, 1/sqrt; an LSTM's or GRU's gates and "
            f"states; a model output left float by quantize_outputs=False); the converter can make them full-integer only by calibrating them at 8 bits: pass "
            f"representative_dataset=... (a few hundred model inputs). Their outputs stay on their learned "
            f"grids, and the file's metadata lists the calibrated layers under 'calibrated'.")


def check_unrolled(model: keras.Model) -> None:
    """Refuses recurrent layers that run a loop: TFLite's converter cannot make one full-integer."""
    inner = [getattr(layer, "layer", layer) for layer in model.layers]  # bit-pruned or left in float
    loops = [layer.name for layer in inner  # (tf_keras or Keras 3)
             if builtin_kind(layer, exact=False) in RECURRENT_LAYERS and not getattr(layer, "unroll", False)]
    if loops:
        raise ExportError(
            f"the recurrent layers {_names(loops)} run a loop over time (unroll=False), which TFLite's "
            f"converter cannot make full-integer. Build them with unroll=True (a fixed sequence length), "
            f"copy the weights (model.set_weights), and export again with representative_dataset=... "
            f"(they are left in float and calibrated at 8 bits).")


# Float elementwise ops allowed on the float model inputs before they are quantized:
# Rescaling / Normalization / RandomCrop (which run in float before the input quantizer) and the
# clip of the input grid at its learned min.
_PREPROCESSING_OPS = ("MUL", "ADD", "SUB", "DIV", "SQRT", "RSQRT", "MAXIMUM", "MINIMUM", "RELU",
                      "RELU6", "RELU_0_TO_1", "RELU_N1_TO_1", "RESIZE_BILINEAR", "STRIDED_SLICE", "SLICE")


def check_full_integer(model_obj, float_preprocessing: bool = True, float_layers: Sequence[str] = (),
                       wide_merges: Sequence[str] = ()) -> None:
    """Every op of the converted model runs on integer tensors (I/O conversion aside).

    With ``float_preprocessing``, float elementwise ops computed from the model
    inputs and constants alone (before the input is quantized) are allowed.
    ``float_layers``: SeparableConv layers whose inner tensor has no learned grid
    (named in the error): SeparableConv1D, and a SeparableConv2D that was not split.
    ``wide_merges``: merge layers of more than two tensors (named in the error).
    """
    float_ops = []
    for sg in model_obj.subgraphs:
        prefix = set(int(i) for i in sg.inputs) if float_preprocessing else set()
        for op in sg.operators:
            name = flatbuffer_utils.opcode_to_name(model_obj, op.opcodeIndex)
            if name in ("QUANTIZE", "DEQUANTIZE"):
                continue
            types = [sg.tensors[i].type for i in list(op.inputs) + list(op.outputs) if i >= 0]
            if schema.TensorType.FLOAT32 not in types:
                continue
            variable = [int(i) for i in op.inputs if i >= 0 and not _is_constant(model_obj, sg.tensors[i])]
            if name in _PREPROCESSING_OPS and variable and all(i in prefix for i in variable):
                prefix.update(int(i) for i in op.outputs)
                continue
            float_ops.append((name, [text(sg.tensors[i].name) for i in list(op.inputs) + list(op.outputs)
                                     if i >= 0]))
    if float_ops:
        where = "; ".join(f"{name} on {', '.join(tensors)}" for name, tensors in float_ops[:5])
        more = f" (and {len(float_ops) - 5} more)" if len(float_ops) > 5 else ""
        raise ExportError(
            f"the converted model still runs {sorted(set(n for n, _ in float_ops))} in float: some tensor "
            f"has no quantization range (a layer left in float with skip_layers, a model output left "
            f"float with quantize_outputs=False, or the intermediate of a SeparableConv that was not split, "
            f"which has no quantizer). The float ops and their tensors "
            f"(named after the Keras layers): {where}{more}.{_separable_hint(float_layers)}{_merge_hint(wide_merges)} Bit-prune every layer, or "
            f"pass representative_dataset=... so the converter calibrates those tensors at 8 bits.")


def _names(layers: Sequence[str]) -> str:
    """Up to five layer names for an error message, and how many more."""
    more = f" (and {len(layers) - 5} more)" if len(layers) > 5 else ""
    return f"{', '.join(repr(n) for n in layers[:5])}{more}"


def _separable_hint(layers: Sequence[str]) -> str:
    if not layers:
        return ""
    return (f" The tensor between the depthwise and pointwise kernels of the SeparableConv layers "
            f"{_names(layers)} is float in Keras (no learned grid; "
            f"bitprune_model splits a SeparableConv2D into <name>_depthwise and <name>_pointwise, whose "
            f"inner tensor is learned, unless it was annotated with a config of your own, and leaves a "
            f"SeparableConv1D whole): pass representative_dataset=..., or build them as "
            f"DepthwiseConv -> Conv(1x1).")


def _merge_hint(layers: Sequence[str]) -> str:
    if not layers:
        return ""
    return (f" The merge layers {_names(layers)} take more than two tensors; "
            f"TFLite's integer ADD/MUL/MAXIMUM/MINIMUM take two, so the converter chains them and the partial "
            f"results have no learned grid: build each as nested two-input layers (Add()([Add()([a, b]), c])), "
            f"bit-prune and train again, so that every partial result learns its grid.")


def _is_constant(model_obj, tensor) -> bool:
    buffer = model_obj.buffers[tensor.buffer] if tensor.buffer else None
    return buffer is not None and buffer.data is not None and len(buffer.data) > 0
