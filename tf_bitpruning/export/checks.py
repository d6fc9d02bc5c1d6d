"""What the exporter refuses, and the error it raises."""

from __future__ import annotations

from typing import List

import tf_keras as keras

from tf_bitpruning import costs
from tf_bitpruning.export._compat import flatbuffer_utils, schema


class ExportError(RuntimeError):
    """The model cannot be exported as a full-integer TFLite model."""


def check_frozen(model: keras.Model) -> List[costs.QuantizedTensor]:
    """The model's quantized tensors; raises unless every bitlength is frozen."""
    from tf_bitpruning import api
    api._check_model(model, "export_tflite")
    tensors = costs.quantized_tensors(model)
    if not tensors:
        raise ValueError(f"export_tflite: model '{model.name}' has no learned bitlengths. Make it with "
                         f"tfbp.bitprune_model(model), train it, then tfbp.freeze_bitlengths(...).")
    loose = [t.name for t in tensors if not t.quantizer.frozen]
    if loose:
        raise ValueError(
            f"export_tflite: model '{model.name}' is not frozen ({len(loose)} bitlengths are still "
            f"real-valued, e.g. {loose[:3]}). Export needs integer bitlengths: call "
            f"frozen = tfbp.freeze_bitlengths(model), fine-tune `frozen`, and export it.")
    return tensors


def check_full_integer(model_obj) -> None:
    """Every op of the converted model runs on integer tensors (I/O conversion aside)."""
    float_ops = []
    for sg in model_obj.subgraphs:
        for op in sg.operators:
            name = flatbuffer_utils.opcode_to_name(model_obj, op.opcodeIndex)
            if name in ("QUANTIZE", "DEQUANTIZE"):
                continue
            types = [sg.tensors[i].type for i in list(op.inputs) + list(op.outputs) if i >= 0]
            if schema.TensorType.FLOAT32 in types:
                float_ops.append(name)
    if float_ops:
        raise ExportError(
            f"the converted model still runs {sorted(set(float_ops))} in float: some tensor has no "
            f"quantization range (a layer left in float with skip_layers, or the intermediate of a "
            f"SeparableConv, which has no quantizer). Bit-prune every layer, or pass "
            f"representative_dataset=... so the converter calibrates those tensors at 8 bits.")


