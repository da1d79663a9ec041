"""On-device export (TensorFlow only): the quantization-aware ByteQRNN -> a full-integer int8 TFLite model,
run with the LiteRT interpreter (ai_edge_litert); and the TF-graph byte splitter. Needs KERAS_BACKEND=tensorflow:
weights trained under JAX come in as `.weights.h5`.

The QAT graph carries FakeQuant ops whose min/max were tracked during training; the converter turns
them into int8 tensors and uses a small representative set for any range it still needs.
`TFLITE_BUILTINS_INT8` only: conversion fails rather than silently keeping float kernels. One region stays float on
purpose: the QRNN fo-pooling (its ops carry the name scope `bq_layers.FLOAT_SCOPE`), whose state SeqFlowLite's
TFLite pooling op keeps in float32 (research/seq_flow_lite/tflite_ops/tflite_qrnn_pooling.cc: uint8 gates in,
`state[j] = state[j] * multiplier_value + constant_vale` in float, quantized outputs). The converter alone would
calibrate and quantize those ops too (the earlier, unrolled export did: an int8 multiply of the state at every
step), so the conversion is done in its two steps,
calibration then `mlir_quantize` with those ops denylisted (the selective quantization that
`tf.lite.experimental.QuantizationDebugger` exposes). The pooling is converted in its recursive-doubling form
(`bq_layers.fo_pool_doubling`): a handful of ops per level of log2(T) instead of two per step unrolled. A TFLite
WHILE loop would be shorter still, but TF 2.21's int8 calibrator segfaults on it (tensorflow/tensorflow#75140:
it logs WHILE outputs that the kernel has released), and it copies its loop tensors at every iteration.
"""
from __future__ import annotations

import os
import re
from typing import Optional

import numpy as np
import tensorflow as tf

import keras

from labkit.paths import atomic_write_bytes
from bq_layers import EOS_ID, FLOAT_SCOPE, OFFSET, PAD_ID, check_ids


def require_tensorflow_backend(what: str) -> None:
    if keras.backend.backend() != "tensorflow":
        raise RuntimeError(f"{what} needs KERAS_BACKEND=tensorflow (this process runs Keras on "
                           f"{keras.backend.backend()!r}); save the weights (.weights.h5) and export in a TF process")


class ByteSplitter(keras.layers.Layer):
    """tf.string [B] -> int32 ids [B, max_len], in the TF graph (same ids as `bq_layers.encode_bytes`)."""

    def __init__(self, max_len: int, add_eos: bool = True, **kw):
        require_tensorflow_backend("ByteSplitter (tf.io.decode_raw)")
        super().__init__(**kw)
        self.max_len = int(max_len)
        self.add_eos = add_eos

    def call(self, texts):
        raw = tf.io.decode_raw(texts, tf.uint8, fixed_length=self.max_len)       # zero padded
        raw = tf.cast(raw, tf.int32)
        length = tf.strings.length(texts)                                         # bytes
        keep = self.max_len - (1 if self.add_eos else 0)
        n = tf.minimum(length, keep)[:, None]
        pos = tf.range(self.max_len)[None, :]
        ids = tf.where(pos < n, raw + OFFSET, PAD_ID)
        if self.add_eos:
            ids = tf.where(pos == n, EOS_ID, ids)
        return ids


def compact_flatbuffer(buf: bytes) -> bytes:
    """The same model in fewer bytes: tensor/subgraph names and docstrings removed (the interpreter runs by
    tensor index), and every tensor without data pointed at the schema's empty sentinel buffer 0 instead of an
    empty buffer of its own (the converter's tensor names are long scope paths: most of an uncompacted file's
    graph bytes)."""
    from tensorflow.lite.tools import flatbuffer_utils
    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(buf))
    flatbuffer_utils.strip_strings(model)
    has_data = lambda b: (b.data is not None and len(b.data) > 0) or bool(getattr(b, "size", 0))
    keep = sorted({0} | {i for i, b in enumerate(model.buffers) if has_data(b)}
                  | {m.buffer for m in (model.metadata or [])})
    new_index = {old: new for new, old in enumerate(keep)}
    for sg in model.subgraphs:
        for t in sg.tensors:
            t.buffer = new_index.get(t.buffer, 0)
    for m in model.metadata or []:
        m.buffer = new_index[m.buffer]
    model.buffers = [model.buffers[i] for i in keep]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def scope_instance(tensor_name: str, scope: str = FLOAT_SCOPE) -> Optional[str]:
    """The instance of name scope `scope` that a converted tensor was made in ('fo_pool_float_state', or '..._1',
    '..._2' for the next layers: TF numbers a scope entered again), or None."""
    m = re.search(rf"(?:^|/)({re.escape(scope)}(?:_\d+)?)/", tensor_name)
    return m.group(1) if m else None


def float_scope_tensors(model_content: bytes, scope: str = FLOAT_SCOPE) -> list:
    """Names of the tensors of a (calibrated, float) flatbuffer made inside name scope `scope` (any instance)."""
    from tensorflow.lite.tools import flatbuffer_utils
    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(model_content))
    names = [t.name.decode() if isinstance(t.name, bytes) else t.name for sg in model.subgraphs for t in sg.tensors]
    return [n for n in names if scope_instance(n, scope)]


def int8_convert(concrete_fn, trackable, representative, float_scope: Optional[str] = FLOAT_SCOPE) -> bytes:
    """Full-integer int8 conversion of a tf concrete function (int8 output), with every op made inside name scope
    `float_scope` kept in float. `representative`: a list of input lists for calibration."""
    conv = tf.lite.TFLiteConverter.from_concrete_functions([concrete_fn], trackable)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = lambda: iter(representative)
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_output_type = tf.int8
    if float_scope is None:
        return conv.convert()
    from tensorflow.lite.python import convert as tfl_convert
    conv._experimental_calibrate_only = True       # the float model with the calibrated ranges (the debugger's step 1)
    calibrated = conv.convert()
    keep_float = float_scope_tensors(calibrated, float_scope)
    if not keep_float:
        raise ValueError(f"no tensor of the converted model lies in name scope {float_scope!r}")
    return tfl_convert.mlir_quantize(calibrated, input_data_type=tf.float32, output_data_type=tf.int8,
                                     denylisted_nodes=keep_float)


def to_int8_tflite(model, max_len: int, representative: np.ndarray, path=None, compact: bool = True) -> bytes:
    """Convert `model` (ids [1, max_len] int32 -> logits) to a full-integer int8 flatbuffer
    (with `compact`, see compact_flatbuffer: the same outputs from a smaller file). The QRNN pooling is converted
    in its recursive-doubling form (a model trained with the loop or the scan is rebuilt with it: same weights),
    in float (see the module docstring)."""
    require_tensorflow_backend("the LiteRT export")
    if getattr(getattr(model, "cfg", None), "pooling", "doubling") != "doubling":
        from bq_models import rebuild_classifier
        model = rebuild_classifier(model, pooling="doubling")
    # one all-padding row too: the ranges it alone exercises (the empty-input term of the attention pooling) get
    # calibrated, so that such an input has a defined int8 result
    representative = np.concatenate([check_ids(representative, max_len), np.zeros((1, max_len), np.int32)])
    # autograph off: plain Keras calls (AutoGraph warns about a closure over a rebound `model`)
    @tf.function(input_signature=[tf.TensorSpec([1, max_len], tf.int32, name="byte_ids")], autograph=False)
    def serve(ids):
        return model(ids, training=False)

    scope = FLOAT_SCOPE if getattr(getattr(model, "cfg", None), "encoder", None) == "qrnn" else None
    buf = int8_convert(serve.get_concrete_function(), model,
                       [[representative[i:i + 1]] for i in range(len(representative))], scope)
    if compact:
        buf = compact_flatbuffer(buf)
    if path is not None:
        atomic_write_bytes(path, buf)
    return buf


class TFLiteClassifier:
    """LiteRT interpreter around an exported classifier: predict(ids [N, L]) -> float logits [N]."""

    def __init__(self, model_content: bytes, num_threads: int = 1):
        from ai_edge_litert.interpreter import Interpreter
        self.interp = Interpreter(model_content=model_content, num_threads=num_threads)
        self.interp.allocate_tensors()
        self.inp = self.interp.get_input_details()[0]
        self.out = self.interp.get_output_details()[0]
        self.size_bytes = len(model_content)

    def _one(self, ids_row):
        self.interp.set_tensor(self.inp["index"], ids_row)
        self.interp.invoke()
        q = self.interp.get_tensor(self.out["index"]).astype(np.float32)
        scale, zero = self.out["quantization"]
        return ((q - zero) * scale if scale else q).ravel()[0]

    def _check(self, ids) -> np.ndarray:
        return check_ids(ids, int(self.inp["shape"][1]))

    def predict(self, ids: np.ndarray) -> np.ndarray:
        """float logits [N] for byte ids [N, L] (ids outside 0..258 raise ValueError: see check_ids)."""
        ids = self._check(ids)
        return np.array([self._one(ids[i:i + 1]) for i in range(len(ids))], dtype=np.float32)

    def latency_per_example(self, ids: np.ndarray, repeat: int = 3) -> float:
        from labkit import time_it
        ids = self._check(ids)
        rows = [ids[i:i + 1] for i in range(len(ids))]

        def run():
            for r in rows:
                self._one(r)
        return time_it(run, repeat=repeat, warmup=1).median / len(rows)

    def tensor_types(self) -> dict:
        """How many tensors of each dtype the flatbuffer holds (full-integer: no float32 kernels)."""
        counts = {}
        for d in self.interp.get_tensor_details():
            name = np.dtype(d["dtype"]).name
            counts[name] = counts.get(name, 0) + 1
        return counts

    def float_ops(self) -> dict:
        """Ops that read or write a float32 tensor, by name (full-integer: the int->float mask casts, the fo-pooling
        kept in float, and their QUANTIZE/DEQUANTIZE at the edges)."""
        f32 = {d["index"] for d in self.interp.get_tensor_details() if d["dtype"] == np.float32}
        out = {}
        for op in self.interp._get_ops_details():
            if any(i in f32 for i in list(op["inputs"]) + list(op["outputs"])):
                out[op["op_name"]] = out.get(op["op_name"], 0) + 1
        return out

    def op_names(self) -> list:
        return sorted({d["op_name"] for d in self.interp._get_ops_details()})


def disagreement(keras_logits, tflite_logits, threshold: float = 0.0) -> dict:
    """How far the int8 model's outputs are from the Keras (fake-quant, float) model's."""
    a, b = np.asarray(keras_logits, np.float64), np.asarray(tflite_logits, np.float64)
    pa, pb = 1 / (1 + np.exp(-a)), 1 / (1 + np.exp(-b))
    return {"max_abs_prob_diff": float(np.max(np.abs(pa - pb))),
            "mean_abs_prob_diff": float(np.mean(np.abs(pa - pb))),
            "decision_flip_rate": float(np.mean((a > threshold) != (b > threshold))),
            "rank_corr": float(np.corrcoef(np.argsort(np.argsort(a)), np.argsort(np.argsort(b)))[0, 1])}
