"""Full-integer int8 TFLite export of a QAT ByteQRNN, run with LiteRT; bounded disagreement."""
import numpy as np
import tensorflow as tf

import bq_export as E
import bq_models as M
import bq_train as T
from bq_layers import encode_bytes


def test_int8_export_agrees_with_keras():
    cfg = M.ByteConfig(max_len=32, embed_dim=16, bottleneck=16, state=16, layers=1, gbst_downsample=2)
    tf.random.set_seed(0)
    model = M.build_classifier(cfg)
    rng = np.random.default_rng(0)
    words = ["casa", "gatto", "perro", "cane", "sol", "luna", "mare", "rojo"]
    texts = [" ".join(rng.choice(words, 4)) for _ in range(256)]
    x = encode_bytes(texts, 32)
    y = np.array([[float("gatto" in t)] for t in texts], np.float32)
    T.train_classifier(model, x, y, steps=40, batch_size=32, lr=3e-3)   # tracks activation ranges
    buf = E.to_int8_tflite(model, 32, x[:32])
    lite = E.TFLiteClassifier(buf)
    types = lite.tensor_types()
    assert types.get("int8", 0) > 10 * types.get("float32", 0)   # full-integer: int8 nearly everywhere
    fops = lite.float_ops()   # only the mask (ids != 0 -> float) and the edges stay float
    assert set(fops) <= {"CAST", "QUANTIZE", "DEQUANTIZE", "DELEGATE"} and fops.get("DEQUANTIZE", 0) <= 4
    keras_logits = T.predict_logits(model, x[:64])
    lite_logits = lite.predict(x[:64])
    # the compacted flatbuffer (no names, data-less tensors on the sentinel buffer) is the same model
    raw = E.to_int8_tflite(model, 32, x[:32], compact=False)
    assert len(buf) < 0.9 * len(raw)
    assert np.array_equal(E.TFLiteClassifier(raw).predict(x[:64]), lite_logits)
    d = E.disagreement(keras_logits, lite_logits)
    assert d["max_abs_prob_diff"] < 0.05 and d["decision_flip_rate"] <= 0.05


def test_full_profile_int8_file_is_at_least_50x_smaller_than_minilm():
    """The issue's size goal at the full profile's architecture (section 1's K: 256 bytes, width 128, three
    bi-QRNN layers). The file size depends on the architecture only, so untrained weights measure it."""
    import bq_baseline as BL
    from labkit.data import require
    tf.random.set_seed(0)
    cfg = M.ByteConfig(max_len=256, embed_dim=128, bottleneck=128, state=128, layers=3, gbst_downsample=2, heads=4)
    model = M.build_classifier(cfg)
    x = encode_bytes([f"texto de prueba {i} " * (i % 12 + 1) for i in range(16)], 256)
    buf = E.to_int8_tflite(model, 256, x)
    minilm_bytes = BL.fp32_bytes(BL.load_minilm(require("minilm"))[1])
    assert minilm_bytes / len(buf) >= 50, f"{len(buf) / 1e6:.2f} MB is only {minilm_bytes / len(buf):.1f}x smaller"
