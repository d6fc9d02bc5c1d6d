"""Running a .tflite file in LiteRT on a batch, and the grid step of its output
(shared by the TFLite tests)."""

import numpy as np
from tensorflow.lite.tools import flatbuffer_utils


def invoke(path, x: np.ndarray, preserve_all_tensors: bool = False):
    """The LiteRT interpreter (default kernels) after one run on the float batch ``x``;
    with ``preserve_all_tensors`` every intermediate tensor can be read."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path), experimental_preserve_all_tensors=preserve_all_tensors)
    inp = it.get_input_details()[0]
    it.resize_tensor_input(inp["index"], x.shape)
    it.allocate_tensors()
    it.set_tensor(inp["index"], x.astype(np.float32))
    it.invoke()
    return it


def run_tflite(path, x: np.ndarray) -> np.ndarray:
    """The file's float output for a float batch ``x`` (LiteRT's default kernels)."""
    it = invoke(path, x)
    return it.get_tensor(it.get_output_details()[0]["index"])


def kernels(builtin: bool) -> dict:
    """Interpreter options: LiteRT's builtin kernels, or the default XNNPACK delegate."""
    from ai_edge_litert.interpreter import OpResolverType

    return {"experimental_op_resolver_type": OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES} if builtin else {}


def run_file(path, x: np.ndarray, builtin: bool = False, preserve: bool = False):
    """Runs a .tflite file (float or int8 I/O, or integer indices in) on a batch; returns
    (float outputs, interpreter)."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path), experimental_preserve_all_tensors=preserve, **kernels(builtin))
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    it.resize_tensor_input(inp["index"], x.shape)
    it.allocate_tensors()
    if inp["dtype"] != np.float32 and inp["quantization"][0]:
        scale, zero = inp["quantization"]
        x = np.clip(np.round(x / scale) + zero, -128, 127).astype(inp["dtype"])
    else:
        x = x.astype(inp["dtype"])  # float values, or integer indices (an Embedding's)
    it.set_tensor(inp["index"], x)
    it.invoke()
    y = it.get_tensor(it.get_output_details()[0]["index"])
    if out["dtype"] != np.float32:
        scale, zero = out["quantization"]
        y = (y.astype(np.float32) - zero) * scale
    return y, it


def output_step(path) -> float:
    """The grid step of a full-integer file's output: the scale of the int8 tensor
    its final DEQUANTIZE reads."""
    sg = flatbuffer_utils.read_model(str(path)).subgraphs[0]
    last = next(op for op in sg.operators if sg.outputs[0] in list(op.outputs))
    return float(sg.tensors[last.inputs[0]].quantization.scale[0])
