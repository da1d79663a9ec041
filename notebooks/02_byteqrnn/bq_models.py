"""ByteQRNN, ByteTransformer and ByteFunnelTransformer: one embedding + GBST front, three encoders.

    ids [B, L] -> byte embedding (259 x E) -> dense bottleneck -> GBST (downsample d_s)
               -> encoder (bidirectional QRNN stack | Transformer | Funnel Transformer)
               -> attention pooling -> dense logits

Every dense/conv weight and activation is fake-quantized during training when `quantize=True`
(SeqFlowLite's `quantize: true`), so the model converts to a full-integer int8 TFLite model.
`ByteEncoder` is the part that pre-training shares with the classifier. Written with `keras.ops` only:
the same code trains under TensorFlow or JAX, and weights move between them as `.weights.h5`.

Differences from SeqFlowLite's ByteQRNN (research/seq_flow_lite/models/byteqrnn.py), stated, not hidden:
SFL's dense and conv layers can carry batch normalization (`normalize=True`, layers/dense_layers.py and
conv_layers.py); ours have none (the quantization ranges are tracked on the raw activations). SFL's sample
config reads 1024 bytes with GBST downsampling 1; ours reads 256 bytes with downsampling 2 (see the notebook).
"""
from __future__ import annotations

from dataclasses import dataclass, asdict, replace

import numpy as np
import keras
from keras import ops

from bq_layers import (VOCAB_SIZE, ActivationQuant, AttentionPooling, BiQRNNStack, GBST, QDense,
                       QEmbedding, downsample_mean, ids_mask)

ENCODERS = ("qrnn", "transformer", "funnel")


@dataclass(frozen=True)
class ByteConfig:
    max_len: int = 256              # bytes per example (incl. EOS)
    embed_dim: int = 128            # byte embedding (SeqFlowLite feature_size)
    bottleneck: int = 128           # dense bottleneck before GBST
    gbst_max_block: int = 4         # block sizes 1..M
    gbst_downsample: int = 2        # d_s
    gbst_conv: int = 5              # position-wise conv before the blocks
    gbst_calibrate: bool = False
    gbst_mixing: str = "softmax"    # "softmax" (Charformer) | "sfl" (SeqFlowLite's GBSTLayerV2: raw scores, mean)
    encoder: str = "qrnn"
    state: int = 128                # QRNN state size / Transformer width
    layers: int = 3
    kernel_width: int = 3
    zoneout: float = 1e-2
    heads: int = 4
    ffn_mult: int = 2
    funnel_blocks: int = 2          # Funnel: pool queries by 2 at the start of each block after the first
    dropout: float = 0.1
    num_classes: int = 1
    quantize: bool = True
    pooling: str = "loop"           # QRNN fo-pooling form ("loop": CPU training | "scan": GPU | "doubling": the export's)

    def with_(self, **kw) -> "ByteConfig":
        return replace(self, **kw)

    def as_dict(self) -> dict:
        return asdict(self)


class MultiHeadAttention(keras.layers.Layer):
    """Multi-head attention from quantized dense layers; masked keys; optional pooled queries."""

    def __init__(self, dim: int, heads: int, quantize: bool, **kw):
        super().__init__(**kw)
        self.dim, self.heads = dim, heads
        self.q = QDense(dim, quantize=quantize)
        self.k = QDense(dim, quantize=quantize)
        self.v = QDense(dim, quantize=quantize)
        self.o = QDense(dim, quantize=quantize)

    def _split(self, x):
        return ops.transpose(ops.reshape(x, (-1, x.shape[1], self.heads, self.dim // self.heads)), (0, 2, 1, 3))

    def _merge(self, out):
        """[B, H, T, dh] -> [B, T, H*dh]."""
        return ops.reshape(ops.transpose(out, (0, 2, 1, 3)), (-1, out.shape[2], self.dim))

    def attend(self, q, k, v, kv_mask=None):
        """softmax(q k^T / sqrt(dh)) v over split heads; keys where kv_mask [B, Tk] is 0 are masked out."""
        logits = ops.matmul(q, ops.swapaxes(k, -1, -2)) / np.sqrt(self.dim // self.heads)
        if kv_mask is not None:
            logits = logits + (1.0 - kv_mask[:, None, None, :]) * -1e4
        return self._merge(ops.matmul(ops.softmax(logits, axis=-1), v))

    def call(self, xq, xkv, kv_mask, training=None):
        q = self._split(self.q(xq, training=training))
        k = self._split(self.k(xkv, training=training))
        v = self._split(self.v(xkv, training=training))
        return self.o(self.attend(q, k, v, kv_mask), training=training)


class TransformerBlock(keras.layers.Layer):
    """Post-LN Transformer encoder block; `pool_queries` makes it a Funnel block's first layer
    (queries mean-pooled by 2, keys/values at full length)."""

    def __init__(self, dim: int, heads: int, ffn_mult: int, dropout: float, quantize: bool,
                 pool_queries: bool = False, seed: int = 0, **kw):
        super().__init__(**kw)
        self.pool_queries = pool_queries
        self.att = MultiHeadAttention(dim, heads, quantize)
        self.ln1 = keras.layers.LayerNormalization()
        self.ln2 = keras.layers.LayerNormalization()
        self.up = QDense(dim * ffn_mult, activation="relu", quantize=quantize)
        self.down = QDense(dim, quantize=quantize)
        self.drop = keras.layers.Dropout(dropout, seed=seed)
        self.q1 = ActivationQuant(quantize)
        self.q2 = ActivationQuant(quantize)

    def call(self, x, mask, training=None):
        xq, qmask = (downsample_mean(x, mask, 2) if self.pool_queries else (x, mask))
        h = self.att(xq, x, mask, training=training)
        x = self.q1(self.ln1(xq + self.drop(h, training=training)), training=training)
        h = self.down(self.up(x, training=training), training=training)
        x = self.q2(self.ln2(x + self.drop(h, training=training)), training=training)
        return x * qmask[..., None], qmask


class TransformerEncoder(keras.layers.Layer):
    def __init__(self, cfg: ByteConfig, funnel: bool = False, **kw):
        super().__init__(**kw)
        self.cfg = cfg
        self.proj = QDense(cfg.state, quantize=cfg.quantize)
        per_block = max(1, cfg.layers // cfg.funnel_blocks) if funnel else cfg.layers
        self.blocks = []
        for i in range(cfg.layers):
            pool = funnel and i > 0 and i % per_block == 0
            self.blocks.append(TransformerBlock(cfg.state, cfg.heads, cfg.ffn_mult, cfg.dropout,
                                                cfg.quantize, pool_queries=pool, seed=i, name=f"block_{i}"))

    def build(self, input_shape):
        t = int(input_shape[1])
        self.pos = self.add_weight(shape=(t, self.cfg.state), name="pos",
                                   initializer=keras.initializers.RandomNormal(stddev=0.02))

    def call(self, x, mask, training=None):
        x = self.proj(x, training=training) + self.pos[None]
        for blk in self.blocks:
            x, mask = blk(x, mask, training=training)
        return x, mask


class ByteEncoder(keras.layers.Layer):
    """ids -> (sequence features [B, T', H], mask [B, T']): embedding + bottleneck + GBST + encoder."""

    def __init__(self, cfg: ByteConfig, **kw):
        super().__init__(**kw)
        if cfg.encoder not in ENCODERS:
            raise ValueError(f"encoder={cfg.encoder!r}; use one of {ENCODERS}")
        self.cfg = cfg
        self.embedding = QEmbedding(VOCAB_SIZE, cfg.embed_dim, quantize=cfg.quantize, name="byte_embedding")
        self.bottleneck = QDense(cfg.bottleneck, activation="relu", quantize=cfg.quantize, name="bottleneck")
        self.gbst = GBST(cfg.gbst_max_block, cfg.gbst_downsample, cfg.gbst_conv, cfg.gbst_calibrate,
                         quantize=cfg.quantize, mixing=cfg.gbst_mixing, name="gbst")
        if cfg.encoder == "qrnn":
            self.encoder = BiQRNNStack(cfg.state, cfg.layers, cfg.kernel_width, cfg.zoneout,
                                       pooling=cfg.pooling, quantize=cfg.quantize, name="qrnn")
        else:
            self.encoder = TransformerEncoder(cfg, funnel=cfg.encoder == "funnel", name=cfg.encoder)

    def call(self, ids, training=None):
        mask = ids_mask(ids)
        x = self.embedding(ids)
        x = self.bottleneck(x, training=training) * mask[..., None]
        x, mask = self.gbst(x, mask, training=training)
        if self.cfg.encoder == "qrnn":
            h = self.encoder(x, mask, training=training)
        else:
            h, mask = self.encoder(x, mask, training=training)
        return h, mask

    @property
    def output_dim(self) -> int:
        return 2 * self.cfg.state if self.cfg.encoder == "qrnn" else self.cfg.state


class ByteClassifier(keras.Model):
    """ByteEncoder -> attention pooling -> dropout -> dense logits [B, num_classes]."""

    def __init__(self, cfg: ByteConfig, **kw):
        super().__init__(**kw)
        self.cfg = cfg
        self.byte_encoder = ByteEncoder(cfg, name="byte_encoder")
        self.pool = AttentionPooling(quantize=cfg.quantize, name="attention_pooling")
        self.drop = keras.layers.Dropout(cfg.dropout, seed=101)
        self.head = QDense(cfg.num_classes, quantize=cfg.quantize, quantize_output=False, name="logits")

    def call(self, ids, training=None):
        h, mask = self.byte_encoder(ids, training=training)
        pooled = self.pool(h, mask, training=training)
        return self.head(self.drop(pooled, training=training), training=training)


class BytePretrainer(keras.Model):
    """Byte-level denoising: ByteEncoder -> for each encoder position, d_s (x funnel factor) byte
    predictions (a dense to 259 logits per byte slot) -> logits [B, L, 259]."""

    def __init__(self, cfg: ByteConfig, **kw):
        super().__init__(**kw)
        self.cfg = cfg
        self.byte_encoder = ByteEncoder(cfg, name="byte_encoder")
        self.factor = None
        self.out = None

    def build(self, input_shape):
        L = int(input_shape[1])
        dummy = ops.zeros((1, L), "int32")
        h, _ = self.byte_encoder(dummy)
        t = int(h.shape[1])
        self.factor = -(-L // t)
        self.out = QDense(self.factor * VOCAB_SIZE, quantize=self.cfg.quantize, quantize_output=False,
                          name="byte_logits")
        self.out.build((None, t, self.byte_encoder.output_dim))

    def call(self, ids, training=None):
        L = ids.shape[1]
        h, _ = self.byte_encoder(ids, training=training)
        logits = self.out(h, training=training)                          # [B, T', f*259]
        logits = ops.reshape(logits, (-1, h.shape[1] * self.factor, VOCAB_SIZE))
        return logits[:, :L]


def build_classifier(cfg: ByteConfig) -> ByteClassifier:
    model = ByteClassifier(cfg)
    model(np.zeros((1, cfg.max_len), np.int32))
    return model


def build_pretrainer(cfg: ByteConfig) -> BytePretrainer:
    model = BytePretrainer(cfg)
    model.build((None, cfg.max_len))
    model(np.zeros((1, cfg.max_len), np.int32))
    return model


def count_params(model) -> int:
    return int(sum(np.prod(v.shape) for v in model.trainable_weights))


def model_sizes(model) -> dict:
    """Parameters and their float32 and int8 storage (1 byte per weight; biases and norms stay
    32-bit in TFLite, counted as 4 bytes)."""
    params, int8 = 0, 0
    for v in model.trainable_weights:
        n = int(np.prod(v.shape))
        params += n
        name = v.path if hasattr(v, "path") else v.name
        int8 += n if ("kernel" in name or "table" in name) else 4 * n
    return {"params": params, "float_mb": 4 * params / 1e6, "int8_mb": int8 / 1e6}


def rebuild_classifier(model, **changes) -> ByteClassifier:
    """The same classifier with some config fields changed that do not change its weights (e.g. pooling
    'scan' for GPU training -> 'doubling' for the int8 export), weights copied."""
    out = build_classifier(model.cfg.with_(**changes))
    out.set_weights(model.get_weights())
    return out
