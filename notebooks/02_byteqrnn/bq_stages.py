"""The notebook's long pieces as functions that the notebook and `bq_full.py` share.

Each piece (a model trained and scored, pre-training, the seq2seq model, MiniLM, the decoder timing, the int8
export) returns its metrics as a dict. Given a `Stages` store (the full profile: `labkit.stage_dir`), a finished
piece is written there atomically (metrics JSON, and small `.weights.h5` where a later piece or cell needs the
model) and later calls load it instead of training again, provided the piece's settings are the same. With no
store (the smoke profile) every piece runs.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Optional

import numpy as np

FOLDER = "02_byteqrnn"
CLASSIFIERS = {"ByteQRNN": "qrnn", "ByteTransformer": "transformer", "ByteFunnelTransformer": "funnel"}


def knobs(profile: str) -> dict:
    """The per-profile settings (the notebook shows them). Full: the sizes of section 3, step counts sized for
    about 6 minutes of one H200 under JAX (see bq_full.py for the measured step times behind them)."""
    smoke = profile == "smoke"
    pick = lambda s, f: s if smoke else f
    return dict(
        limits=pick({"train": 2400, "val": 400, "test": 800}, None),
        max_len=pick(128, 256),
        width=pick(32, 128),
        qrnn_layers=pick(1, 3),
        tf_layers=pick(2, 4),
        heads=pick(2, 4),
        downsample=2,
        steps=pick(400, 4000),
        batch=pick(32, 64),
        lr=pick(2e-3, 1e-3),
        tf_warmup=pick(40, 400),
        pre_steps=pick(300, 6000),
        minilm=pick(dict(max_tokens=64, epochs=1, batch_size=16, lr=8e-5, max_train=1200),
                    dict(max_tokens=128, epochs=3, batch_size=32, lr=5e-5, max_train=None)),
        latency_n=pick(24, 200),
        s2s_steps=pick(300, 4000),
        s2s_warmup=pick(30, 200),
        s2s_lr=pick(4e-3, 2e-3),   # peak seq2seq learning rate (was 2 * lr; bq_s2s_probe.py --sweep compares others)
        s2s_len=pick(32, 64),
        s2s_dim=pick(64, 128),
        s2s_layers=pick(1, 3),
        beam_inputs=pick(48, 500),
        timing_repeat=pick(10, 30),
    )


def base_config(K: dict):
    from bq_models import ByteConfig
    return ByteConfig(max_len=K["max_len"], embed_dim=K["width"], bottleneck=K["width"], state=K["width"],
                      layers=K["qrnn_layers"], gbst_downsample=K["downsample"], heads=K["heads"])


def classifier_configs(K: dict, pooling: str = "loop") -> dict:
    """name -> ByteConfig of every classifier the notebook trains from scratch (the three encoders, and
    ByteQRNN with SeqFlowLite's GBST variant for the GBST comparison)."""
    base = base_config(K).with_(pooling=pooling)
    out = {name: base.with_(encoder=enc, layers=K["qrnn_layers"] if enc == "qrnn" else K["tf_layers"])
           for name, enc in CLASSIFIERS.items()}
    out["ByteQRNN (SFL GBST)"] = out["ByteQRNN"].with_(gbst_mixing="sfl")
    return out


def warmup_steps(K: dict, cfg) -> int:
    """Linear warmup steps of a classifier's learning rate: none for the QRNN, `K["tf_warmup"]` for the
    Transformer encoders."""
    return 0 if cfg.encoder == "qrnn" else K["tf_warmup"]


# ----------------------------------------------------------------------------------------------
# The store
# ----------------------------------------------------------------------------------------------

def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    return x


def _key(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_").lower()


class Stages:
    """A folder of finished pieces: <key>.json ({"settings", "metrics", "machine"}) and <key>.weights.h5."""

    def __init__(self, folder: Optional[Path], log: Callable = print):
        self.folder = Path(folder) if folder else None
        self.log = log

    def json_path(self, name):
        return self.folder / f"{_key(name)}.json"

    def weights_path(self, name):
        return self.folder / f"{_key(name)}.weights.h5"

    def load(self, name: str, settings: dict) -> Optional[dict]:
        """The stored metrics of `name` if it finished with the same settings, else None."""
        if self.folder is None or not self.json_path(name).exists():
            return None
        rec = json.loads(self.json_path(name).read_text())
        if rec.get("settings") != _jsonable(settings):
            self.log(f"[stages] {name}: stored with other settings; running it again")
            return None
        return rec

    def save(self, name: str, settings: dict, metrics: dict, model=None) -> dict:
        rec = {"settings": _jsonable(settings), "metrics": _jsonable(metrics), "machine": machine_name()}
        if self.folder is None:
            return rec
        from labkit.paths import atomic_write_text
        if model is not None:  # weights first: a JSON on disk means the piece is complete
            tmp = self.folder / f".{_key(name)}.tmp.weights.h5"
            model.save_weights(str(tmp))
            tmp.replace(self.weights_path(name))
        atomic_write_text(self.json_path(name), json.dumps(rec) + "\n")
        return rec


def machine_name() -> str:
    """What computes here: the GPU the Keras backend uses, else the CPU model (for per-metric provenance)."""
    from labkit.env import machine_info
    m = machine_info("keras")
    return m["gpu"] or m["cpu"]


def _settings(**kw) -> dict:
    return {k: (asdict(v) if hasattr(v, "__dataclass_fields__") else v) for k, v in kw.items()}


# ----------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------

def load_data(K: dict, seed: int, dataset: str = "fortunes"):
    """(splits, xtr, ytr, xte, yte) for the classifiers."""
    import bq_data
    import bq_train as T
    df = bq_data.load_dataset(dataset)
    splits = bq_data.make_splits(df, seed=seed, limits=K["limits"])
    xtr, ytr = T.encode_split(splits.train, K["max_len"])
    xte, yte = T.encode_split(splits.test, K["max_len"])
    return df, splits, xtr, ytr, xte, yte


# ----------------------------------------------------------------------------------------------
# Pieces
# ----------------------------------------------------------------------------------------------

def classifier_settings(cfg, K: dict, seed: int, split: str, extra: Optional[dict] = None) -> dict:
    """What a stored classifier piece must match to be loaded. The warmup is named only where there is one, so
    the QRNN pieces (no warmup) keep the settings, and the stored results, they had before warmup existed."""
    warm = warmup_steps(K, cfg)
    return _settings(cfg=cfg, steps=K["steps"], batch=K["batch"], lr=K["lr"], seed=seed, split=split,
                     **({"warmup": warm} if warm else {}), **(extra or {}))


def train_classifier_piece(st: Stages, name: str, cfg, K: dict, data, seed: int, keep_weights: bool = False,
                           init: Optional[Callable] = None, settings_extra: Optional[dict] = None):
    """Train `cfg` from scratch (or from `init(model)`) and score the test split. Returns (model or None,
    record). The model is returned when it was trained now, or loaded from stored weights (`keep_weights`)."""
    import keras
    import bq_models as M
    import bq_train as T
    from labkit import Stopwatch, select_device
    splits, xtr, ytr, xte = data[1], data[2], data[3], data[4]
    settings = classifier_settings(cfg, K, seed, splits.fingerprint(), settings_extra)
    rec = st.load(name, settings)
    if rec is not None:
        model = None
        if keep_weights and st.weights_path(name).exists():
            model = M.build_classifier(cfg)
            model.load_weights(str(st.weights_path(name)))
        st.log(f"[stages] {name}: loaded ({rec['machine']})")
        return model, rec
    keras.utils.set_random_seed(seed)
    model = M.build_classifier(cfg)
    if init is not None:
        init(model)
    with Stopwatch() as sw:
        losses = T.train_classifier(model, xtr, ytr, K["steps"], K["batch"], K["lr"], seed=seed, desc=name,
                                    warmup_steps=warmup_steps(K, cfg))
    scores = T.predict_logits(model, xte)
    sizes = M.model_sizes(model)
    metrics = {"losses": losses, "test_scores": scores, "auc": T.auc_table(splits.test, scores),
               "params": sizes["params"], "float_mb": sizes["float_mb"], "int8_mb": sizes["int8_mb"],
               "train_s": sw.seconds}
    if select_device("auto", "keras") == "cpu":   # batch 1 on a GPU would time launch overhead
        metrics["ms_per_example"] = 1e3 * T.keras_latency_per_example(model, xte[: K["latency_n"]])
    return model, st.save(name, settings, metrics, model if keep_weights else None)


def pretrain_piece(st: Stages, cfg, K: dict, unlabeled, seed: int):
    """Byte-denoising pre-training. Returns (pretrainer or None when loaded, record); the encoder weights are
    kept (`pretrain.weights.h5`) for the fine-tune."""
    import keras
    import bq_models as M
    import bq_pretrain as PT
    settings = _settings(cfg=cfg, steps=K["pre_steps"], batch=K["batch"], lr=2 * K["lr"], seed=seed,
                         n_texts=len(unlabeled))
    rec = st.load("pretrain", settings)
    if rec is not None:
        st.log(f"[stages] pretrain: loaded ({rec['machine']})")
        return None, rec
    keras.utils.set_random_seed(seed)
    pre = M.build_pretrainer(cfg)
    losses, ev = PT.pretrain(pre, unlabeled, K["max_len"], K["pre_steps"], K["batch"], lr=2 * K["lr"], seed=seed)
    return pre, st.save("pretrain", settings, {"losses": losses, **ev}, pre)


def finetune_piece(st: Stages, cfg, K: dict, data, seed: int, pretrainer=None):
    """The pre-trained encoder (from `pretrainer`, or the stored pre-training weights) fine-tuned as ByteQRNN."""
    import bq_models as M
    import bq_pretrain as PT

    def init(model):
        pre = pretrainer
        if pre is None:
            pre = M.build_pretrainer(cfg)
            pre.load_weights(str(st.weights_path("pretrain")))
        PT.transfer_encoder(pre, model)
    pre_settings = json.loads(st.json_path("pretrain").read_text())["settings"] if st.folder else None
    return train_classifier_piece(st, "ByteQRNN pre-trained", cfg, K, data, seed, keep_weights=True, init=init,
                                  settings_extra={"pretrain": pre_settings})


def seq2seq_data(K: dict, seed: int):
    """The seq2seq piece's pairs and model config: (train (src, dec_in, tgt), held-out (src, dec_in, tgt), cfg).
    The held-out pairs are the beam-search inputs (the first K["beam_inputs"] of them)."""
    import keras
    import bq_data
    import bq_seq2seq as S2
    rng = np.random.default_rng(seed)
    segs = S2.make_segments(bq_data.load_unlabeled_english(), K["s2s_len"] - 1, rng=rng)
    rng.shuffle(segs)
    n_eval = max(K["beam_inputs"], 200)
    src_len = K["s2s_len"] + 8
    src, dec_in, tgt, _ = S2.make_pairs(segs[n_eval:], src_len, K["s2s_len"], rng)
    vsrc, vdec, vtgt, _ = S2.make_pairs(segs[:n_eval], src_len, K["s2s_len"], rng)
    cfg = S2.Seq2SeqConfig(src_len=src_len, tgt_len=K["s2s_len"], dim=K["s2s_dim"], dec_layers=K["s2s_layers"],
                           heads=K["heads"], encoder=base_config(K).with_(
                               layers=max(1, K["qrnn_layers"] - 1), num_classes=0,
                               pooling="scan" if keras.backend.backend() == "jax" else "loop"))
    return (src, dec_in, tgt), (vsrc, vdec, vtgt), cfg


def seq2seq_settings(cfg, K: dict, seed: int, n_pairs: int) -> dict:
    """What a stored seq2seq piece must match to be loaded; naming the warmup makes pieces trained without one
    (they did not learn at full size: results/seq2seq_recipe_probe.json) train again."""
    return _settings(cfg=cfg, steps=K["s2s_steps"], batch=K["batch"], lr=K["s2s_lr"], warmup=K["s2s_warmup"],
                     seed=seed, beam_inputs=K["beam_inputs"], n_pairs=n_pairs)


def seq2seq_piece(st: Stages, K: dict, seed: int):
    """Train the corrupted-text restoration model, then beam search (float vs uint8 scores) on held-out pairs.
    Returns (model, record, held-out pairs)."""
    import keras
    import bq_seq2seq as S2
    (src, dec_in, tgt), (vsrc, vdec, vtgt), cfg = seq2seq_data(K, seed)
    settings = seq2seq_settings(cfg, K, seed, len(src))
    keras.utils.set_random_seed(seed)
    model = S2.build_seq2seq(cfg)
    rec = st.load("seq2seq", settings)
    if rec is not None and st.weights_path("seq2seq").exists():
        model.load_weights(str(st.weights_path("seq2seq")))
        st.log(f"[stages] seq2seq: loaded ({rec['machine']})")
        return model, rec, (vsrc, vdec, vtgt)
    losses = S2.train_seq2seq(model, src, dec_in, tgt, K["s2s_steps"], K["batch"], lr=K["s2s_lr"], seed=seed,
                              warmup_steps=K["s2s_warmup"])
    cal = keras.ops.convert_to_numpy(model((vsrc[:128], vdec[:128]), training=False))
    q8 = S2.UInt8Quant.calibrate(cal)
    step_fn = S2.make_step_fn(model)
    bsrc, btgt = vsrc[: K["beam_inputs"]], vtgt[: K["beam_inputs"]]
    float_best, _ = S2.beam_search(model, bsrc, beam=4, step_fn=step_fn)
    quant_best, _ = S2.beam_search(model, bsrc, beam=4, quant=q8, step_fn=step_fn)
    metrics = {"losses": losses, "n_pairs": len(src), "uint8_scale": q8.scale,
               "beam_top1_agreement_uint8": float(np.mean([a == b for a, b in zip(float_best, quant_best)])),
               "byte_acc_float_beam": S2.byte_accuracy(float_best, btgt),
               "byte_acc_uint8_beam": S2.byte_accuracy(quant_best, btgt),
               "byte_acc_copy_input": S2.byte_accuracy([list(r[r >= 3]) for r in bsrc], btgt),
               "widest_activation_range": S2.widest_quant_range(model)}
    return model, st.save("seq2seq", settings, metrics, model), (vsrc, vdec, vtgt)


def matt_timing_piece(st: Stages, K: dict, seed: int):
    """Decoder step time vs output length (merged attention vs standard), on this machine's backend device."""
    import bq_seq2seq as S2
    settings = _settings(lengths=[16, 32, 64, 128, 256], batch=64, dim=256, heads=4, layers=2,
                         repeat=K["timing_repeat"], seed=seed)
    rec = st.load("matt_timing", settings)
    if rec is not None:
        return rec
    res = S2.step_time_vs_length(lengths=(16, 32, 64, 128, 256), batch=64, dim=256, heads=4, layers=2,
                                 repeat=K["timing_repeat"], seed=seed)
    return st.save("matt_timing", settings, res)


def minilm_piece(st: Stages, K: dict, splits, seed: int, device: str, progress=None):
    """Fine-tune MiniLM (PyTorch) and score the test split. Only metrics and scores are stored (its weights are
    90 MB); with no store, the smoke profile's cache under data/cache/02_byteqrnn/ is used."""
    import bq_baseline as BL
    from labkit.data import require
    ft_cfg = BL.FinetuneConfig(seed=seed, **K["minilm"])
    settings = _settings(cfg=ft_cfg, split=splits.fingerprint())
    rec = st.load("minilm", settings)
    if rec is not None:
        return None, rec
    if st.folder is None:
        mini = BL.finetune_cached(require("minilm"), splits, ft_cfg, device=device, progress=progress)
    else:
        tok, model = BL.load_minilm(require("minilm"))
        t0 = time.perf_counter()
        losses = BL.finetune(tok, model, splits.train["text"].tolist(), splits.train["label"].tolist(), ft_cfg,
                             device=device, progress=progress)
        scores = BL.score(tok, model, splits.test["text"].tolist(), ft_cfg.max_tokens, device=device)
        mini = {"tok": tok, "model": model.to("cpu").eval(), "test_scores": scores, "losses": losses,
                "cached": False, "seconds": time.perf_counter() - t0}
    import bq_train as T
    metrics = {"test_scores": mini["test_scores"], "losses": mini["losses"], "seconds": mini["seconds"],
               "auc": T.auc_table(splits.test, mini["test_scores"]), "params": BL.num_params(mini["model"]),
               "fp32_bytes": BL.fp32_bytes(mini["model"]), "device": device}
    return mini, st.save("minilm", settings, metrics)


def export_piece(st: Stages, K: dict, data, byteqrnn, minilm_scores=None, minilm_model=None, tok=None):
    """TensorFlow only: the int8 LiteRT file of the pre-trained ByteQRNN, its AUC on the test split, the Keras
    model's disagreement with it, and 1-thread CPU latency of it and of MiniLM fp32 (batch 1). The .tflite is
    kept in the store (about 2 MB at full size)."""
    import bq_baseline as BL
    import bq_export as EX
    import bq_train as T
    from labkit import Stopwatch
    splits, xtr, xte = data[1], data[2], data[4]
    lat_x = xte[: K["latency_n"]]
    with Stopwatch() as sw:
        buf = EX.to_int8_tflite(byteqrnn, K["max_len"], xtr[:64])
    lite = EX.TFLiteClassifier(buf, num_threads=1)
    lite_scores = lite.predict(xte)
    keras_scores = T.predict_logits(byteqrnn, xte)
    metrics = {"int8_bytes": len(buf), "convert_s": sw.seconds, "auc_int8": T.auc_table(splits.test, lite_scores),
               "auc_keras": T.auc_table(splits.test, keras_scores),
               "disagreement": EX.disagreement(keras_scores, lite_scores),
               "tensor_types": lite.tensor_types(), "float_ops": lite.float_ops(),
               "int8_ms_per_example_1thread": 1e3 * lite.latency_per_example(lat_x),
               "all_padding_logit": float(lite.predict(np.zeros((1, K["max_len"]), np.int32))[0])}
    if minilm_model is not None:
        metrics["minilm_ms_per_example_1thread"] = 1e3 * BL.latency_per_example(
            tok, minilm_model.to("cpu"), splits.test.text.tolist()[:16], max_tokens=K["minilm"]["max_tokens"],
            threads=1)
    rec = st.save("export", {"max_len": K["max_len"]}, metrics)
    if st.folder is not None:
        from labkit.paths import atomic_write_bytes
        atomic_write_bytes(st.folder / "byteqrnn_int8.tflite", buf)
    return lite, rec
