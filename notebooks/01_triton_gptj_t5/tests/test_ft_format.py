"""Our checkpoints against FasterTransformer's own converters (tests/ft_reference.py ports their logic) and
config.ini read the way FT's C++ reads it (ft_convert.INIReader ports FT's 3rdparty/INIReader.h)."""
import configparser

import numpy as np
import pytest
import torch

import ft_convert as c
import ft_runtime_gptj
import ft_runtime_t5
from ft_reference import ft_gptj_convert, ft_t5_convert

NP = {"fp32": "<f4", "fp16": "<f2"}


def _files(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.suffix == ".bin"}


def _sections(path):
    cfg = configparser.ConfigParser()
    cfg.read(path)
    return {s: list(cfg[s].items()) for s in cfg.sections()}


@pytest.mark.parametrize("wdt", ["fp32", "fp16"])
@pytest.mark.parametrize("tp", [1, 2])
@pytest.mark.parametrize("variant", ["v1.0 relu", "v1.1 gated-gelu"])
def test_t5_files_match_ft_converter_byte_for_byte(tmp_path, t5_model, gated_t5_model, variant, tp, wdt):
    model = t5_model if variant.startswith("v1.0") else gated_t5_model
    ft = ft_t5_convert(model, tmp_path / "ft", tp, wdt)
    ours = c.convert_t5(model, model.config, tmp_path / "ours", tp, wdt)
    a, b = _files(ft), _files(ours)
    assert sorted(a) == sorted(b)
    assert [n for n in a if a[n] != b[n]] == []
    # config.ini: the same sections, keys, order and values, except FT's [decoder] tie_word_embeddings, which
    # transformers 5 always reports True; ours carries scale_decoder_outputs (what FT reads it for)
    fs, os_ = _sections(ft / "config.ini"), _sections(ours / "config.ini")
    scale = str(model.config.scale_decoder_outputs)
    fix = lambda items: [(k, scale if k == "tie_word_embeddings" else v) for k, v in items]
    assert os_ == dict(fs, decoder=fix(fs["decoder"]))
    assert dict(os_["decoder"])["tie_word_embeddings"] == ("True" if variant.startswith("v1.0") else "False")


@pytest.mark.parametrize("tp", [1, 2])
def test_gptj_files_match_ft_converter_byte_for_byte(tmp_path, gptj_model, tp):
    cfg = gptj_model.config
    ft = ft_gptj_convert(gptj_model.state_dict(), cfg.to_dict(), tmp_path / "ft", tp, cfg.n_layer)
    ours = c.convert_gptj(gptj_model, cfg, tmp_path / "ours", tp)
    a, b = _files(ft), _files(ours)
    assert sorted(a) == sorted(b) and [n for n in a if a[n] != b[n]] == []
    # every key FT writes, with FT's value (ours adds layernorm_eps, max_pos_seq_len, tensor_para_size)
    theirs, mine = dict(_sections(ft / "config.ini")["gptj"]), dict(_sections(ours / "config.ini")["gptj"])
    assert {k: mine.get(k) for k in theirs} == theirs


def test_embedding_file_ft_reads_is_vocab_by_d_model(ft_dirs, t5_model):
    """FT's T5EncoderWeight / T5DecodingWeight load shared.weight_T.bin as the embedding table and look token t
    up at t * d_model: row t of a [vocab, d_model] array must be token t's embedding (and lm_head.weight.bin is
    the [vocab, d_model] kernel of the logits GEMM). shared.weight.bin is the transpose FT's converter also writes."""
    emb = t5_model.shared.weight.detach()
    V, d = emb.shape
    for tp in (1, 2):
        folder = ft_dirs[("t5", tp)]
        table = np.fromfile(folder / "shared.weight_T.bin", dtype="<f4").reshape(V, d)
        assert np.array_equal(table, emb.numpy())
        assert np.array_equal(np.fromfile(folder / "lm_head.weight.bin", dtype="<f4").reshape(V, d),
                              t5_model.lm_head.weight.detach().numpy())
        assert np.array_equal(np.fromfile(folder / "shared.weight.bin", dtype="<f4").reshape(d, V), emb.numpy().T)


@pytest.mark.parametrize("kind", ["t5", "gptj"])
def test_config_has_every_key_ft_reads_without_default(ft_dirs, kind):
    for tp in (1, 2):
        reader = c.INIReader.from_file(ft_dirs[(kind, tp)] / "config.ini")
        assert reader.error == 0
        assert c.missing_required(reader, kind) == []


def test_config_without_name_or_path_is_refused_as_ft_would(ft_dirs):
    """The backend reads [encoder] _name_or_path with no default: FT's INIReader exits without it."""
    text = (ft_dirs[("t5", 1)] / "config.ini").read_text()
    stripped = "\n".join(l for l in text.splitlines() if not l.startswith("_name_or_path"))
    reader = c.INIReader(stripped)
    assert [m.split(" (")[0] for m in c.missing_required(reader, "t5")] == ["[encoder] _name_or_path"]
    with pytest.raises(ValueError, match=r"_name_or_path.*T5TritonModel\.cc"):
        c.t5_meta(reader)


def test_ini_reader_reads_like_inih():
    long_value = "x" * 250
    text = ("[Enc]\nA = 0x10 ; comment\nB=017\nc: 12abc\nlong = " + long_value + "\n"
            "multi = one\n  two\nflag = Yes\nbad = abc\nA = 3\n")
    r = c.INIReader(text)
    assert r.Get("enc", "a") == "0x10\n3"              # case-insensitive; a repeated key keeps both values
    assert r.GetInteger("ENC", "a") == 16              # strtol base 0 reads the first line's hex prefix
    assert r.GetInteger("enc", "b") == 15 and r.GetInteger("enc", "c") == 12   # octal; a numeric prefix
    assert r.Get("enc", "multi") == "one\ntwo"         # an indented line continues the key
    assert r.GetBoolean("enc", "flag", False) is True and r.GetBoolean("enc", "bad", True) is True
    assert len(r.Get("enc", "long")) == 199 - len("long = ")   # fgets(200): the rest of the line is cut off
    with pytest.raises(c.MissingKey):
        r.GetInteger("enc", "bad")
    with pytest.raises(c.MissingKey):
        r.Get("enc", "nothing")
    assert r.GetInteger("enc", "nothing", 7) == 7


@pytest.mark.parametrize("variant", ["v1.0 relu", "v1.1 gated-gelu"])
def test_runtime_reads_ft_written_t5_to_hf_logits(tmp_path, t5_model, gated_t5_model, variant):
    model = t5_model if variant.startswith("v1.0") else gated_t5_model
    folder = ft_t5_convert(model, tmp_path, 1)
    if variant.startswith("v1.1"):
        # transformers >= 5 reports tie_word_embeddings=True for every T5, so FT's script now writes True and FT
        # would scale v1.1's logits; under transformers 4 it wrote the checkpoint's False (as ft_convert does)
        ini = folder / "config.ini"
        text = ini.read_text()
        decoder = text.index("[decoder]")
        assert "tie_word_embeddings = True" in text[decoder:]
        ini.write_text(text[:decoder] + text[decoder:].replace("tie_word_embeddings = True", "tie_word_embeddings = False", 1))
    rt = ft_runtime_t5.T5Runtime.from_checkpoint(folder, max_out=8)
    assert rt.m["scale_decoder_outputs"] == variant.startswith("v1.0") and rt.m["gated"] != variant.startswith("v1.0")
    ids = torch.tensor([[5, 17, 33, 9, 1], [40, 2, 1, 0, 0]])
    mask, dec = (ids != 0).long(), torch.tensor([[0, 4, 8], [0, 23, 42]])
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits
    assert (rt.logits(ids, mask, dec) - ref).abs().max() < 1e-4


def test_runtime_reads_ft_written_gptj_to_hf_logits(tmp_path, gptj_model):
    """FT's GPT-J config.ini has no tensor_para_size: the loader counts the rank files."""
    cfg = gptj_model.config
    folder = ft_gptj_convert(gptj_model.state_dict(), cfg.to_dict(), tmp_path, 2, cfg.n_layer)
    meta, _ = c.load_gptj_rank(folder, 1)
    assert meta["tensor_para_size"] == 2
    folder1 = ft_gptj_convert(gptj_model.state_dict(), cfg.to_dict(), tmp_path, 1, cfg.n_layer)
    rt = ft_runtime_gptj.GPTJRuntime.from_checkpoint(folder1, max_len=32)
    ids = torch.tensor([[464, 3139, 286, 8031, 318]])
    with torch.no_grad():
        ref = gptj_model(input_ids=ids).logits
    assert (rt.logits(ids, torch.ones_like(ids)) - ref).abs().max() < 1e-4


def test_refuses_what_ft_cannot_run(tmp_path, t5_model):
    from transformers import T5Config
    with pytest.raises(ValueError, match="max_distance=32.*128"):
        c.t5_config_ini(T5Config(relative_attention_max_distance=32))
    with pytest.raises(ValueError, match="feed_forward_proj='gelu'"):
        c.t5_config_ini(T5Config(feed_forward_proj="gelu"))
    folder = c.convert_t5(t5_model, t5_model.config, tmp_path, 1)
    ini = folder / "config.ini"
    text = ini.read_text()
    ini.write_text(text.replace("relative_attention_max_distance = 128", "relative_attention_max_distance = 32"))
    with pytest.raises(ValueError, match="relative_attention_max_distance = 32"):
        c.load_t5_rank(folder)
    ini.write_text(text.replace("eos_token_id = 1", "eos_token_id = [1]"))
    with pytest.raises(ValueError, match=r"\[decoder\] eos_token_id"):
        c.load_t5_rank(folder)
    ini.write_text(text.replace("use_gated_activation = false", "use_gated_activation = 1"))
    with pytest.raises(ValueError, match="contradicts"):
        c.load_t5_rank(folder)
    ini.write_text(text)
    (folder / "encoder.block.0.layer.0.SelfAttention.o.weight.0.bin").rename(folder / "moved.bin")
    with pytest.raises(FileNotFoundError, match="SelfAttention.o.weight.0.bin"):
        c.load_t5_rank(folder)
