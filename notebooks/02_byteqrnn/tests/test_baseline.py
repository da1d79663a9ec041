"""The MiniLM baseline loads offline, scores texts, and its cache key follows the split and settings."""
import numpy as np

import bq_baseline as B


def test_cache_key_depends_on_split_and_settings():
    a = B.FinetuneConfig()
    assert a.key("abc") == B.FinetuneConfig().key("abc")
    assert a.key("abc") != a.key("abd") and a.key("abc") != B.FinetuneConfig(epochs=3).key("abc")


def test_minilm_loads_offline_and_scores():
    from labkit.data import require
    tok, model = B.load_minilm(require("minilm"))
    assert 22e6 < B.num_params(model) < 23.5e6                  # all-MiniLM-L6-v2: 22.7M
    assert abs(B.fp32_bytes(model) / 1e6 - 4 * B.num_params(model) / 1e6) < 1e-6
    s = B.score(tok, model, ["hola amigos", "ciao"], max_tokens=16)
    assert s.shape == (2,) and np.isfinite(s).all()
    assert B.BERT_BASE_PARAMS / B.num_params(model) > 4
