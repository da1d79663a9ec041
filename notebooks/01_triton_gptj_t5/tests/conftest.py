"""Put the topic folder (and labkit) on sys.path; shared tiny random models for the tests."""
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parents[2] / "shared"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}


def listening(pids):
    """(pid, ip, port) of every TCP socket listening in these processes (what `ss -ltnp` shows for them)."""
    import psutil
    out = []
    for pid in pids:
        try:
            out += [(pid, c.laddr.ip, c.laddr.port) for c in psutil.Process(pid).net_connections("inet")
                    if c.status == psutil.CONN_LISTEN]
        except psutil.Error:   # exited meanwhile
            pass
    return out


@pytest.fixture(scope="session")
def gptj_model():
    from transformers import GPTJConfig, GPTJForCausalLM
    torch.manual_seed(0)
    cfg = GPTJConfig(vocab_size=50400, n_positions=128, n_embd=64, n_layer=2, n_head=4, rotary_dim=8, n_inner=256,
                     bos_token_id=50256, eos_token_id=50256, tie_word_embeddings=False)
    model = GPTJForCausalLM(cfg).eval()
    with torch.no_grad():  # non-zero biases so that a misplaced bias shows up
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.1)
    return model


def _tiny_t5(seed: int, **cfg):
    from transformers import T5Config, T5ForConditionalGeneration
    torch.manual_seed(seed)
    cfg = T5Config(vocab_size=96, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4,
                   relative_attention_num_buckets=16, relative_attention_max_distance=128, dropout_rate=0.0,
                   decoder_start_token_id=0, pad_token_id=0, eos_token_id=1, **cfg)
    return T5ForConditionalGeneration(cfg).eval()


@pytest.fixture(scope="session")
def t5_model():
    return _tiny_t5(0, num_decoder_layers=2, feed_forward_proj="relu", tie_word_embeddings=True)


@pytest.fixture(scope="session")
def gated_t5_model():
    return _tiny_t5(1, num_decoder_layers=1, feed_forward_proj="gated-gelu", tie_word_embeddings=False)


@pytest.fixture(scope="session")
def ft_dirs(tmp_path_factory, gptj_model, t5_model):
    """FT checkpoints of the random models for TP=1 and TP=2."""
    import ft_convert
    root = tmp_path_factory.mktemp("ft")
    out = {}
    for tp in (1, 2):
        out[("gptj", tp)] = ft_convert.convert_gptj(gptj_model, gptj_model.config, root / "gptj", tp)
        out[("t5", tp)] = ft_convert.convert_t5(t5_model, t5_model.config, root / "t5", tp)
    return out
