import numpy as np
import pytest
import torch

import ft_convert as c


@pytest.mark.parametrize("tp", [1, 2])
@pytest.mark.parametrize("kind", ["gptj", "t5"])
def test_round_trip_bit_exact(ft_dirs, gptj_model, t5_model, kind, tp):
    sd = getattr(c, f"{kind}_ft_to_hf")(ft_dirs[(kind, tp)])
    ref = (gptj_model if kind == "gptj" else t5_model).state_dict()
    assert set(sd) == set(ref)
    for k in ref:
        assert torch.equal(sd[k], ref[k]), k


def test_gated_t5_round_trip(tmp_path, gated_t5_model):
    folder = c.convert_t5(gated_t5_model, gated_t5_model.config, tmp_path, 2)
    assert (folder / "encoder.block.0.layer.1.DenseReluDense.wi2.weight.1.bin").exists()
    sd = c.t5_ft_to_hf(folder)
    for k, v in gated_t5_model.state_dict().items():
        assert torch.equal(sd[k], v), k


def test_layout_names_and_shapes(ft_dirs, gptj_model):
    d2 = ft_dirs[("gptj", 2)]
    assert d2.name == "2-gpu" and (d2 / "config.ini").exists()
    m = c.gptj_meta(c.read_config(d2))
    assert m["tensor_para_size"] == 2 and m["size_per_head"] == 16
    qkv = np.fromfile(d2 / "model.layers.0.attention.query_key_value.weight.0.bin", dtype="<f4")
    assert qkv.size == 64 * 3 * 32                      # [d, 3, d/2]
    assert (d2 / "model.wte.bin").stat().st_size == 50400 * 64 * 4
    assert not (d2 / "model.layers.0.input_layernorm.weight.0.bin").exists()   # whole tensors carry no rank
    t5 = ft_dirs[("t5", 2)]
    assert (t5 / "decoder.block.1.layer.0.SelfAttention.qkv.weight.1.bin").exists()
    assert not (t5 / "decoder.block.1.layer.0.SelfAttention.q.weight.0.bin").exists()


def _rank_files(folder, stem, tp, shape):
    return [torch.from_numpy(np.fromfile(folder / f"{stem}.{r}.bin", dtype="<f4")).reshape(shape) for r in range(tp)]


@pytest.mark.parametrize("stem,axis,shape1,shape2", [
    ("model.layers.1.attention.query_key_value.weight", -1, (64, 3, 64), (64, 3, 32)),
    ("model.layers.1.attention.dense.weight", 0, (64, 64), (32, 64)),
    ("model.layers.0.mlp.dense_h_to_4h.weight", -1, (64, 256), (64, 128)),
    ("model.layers.0.mlp.dense_h_to_4h.bias", -1, (256,), (128,)),
    ("model.layers.0.mlp.dense_4h_to_h.weight", 0, (256, 64), (128, 64)),
])
def test_gptj_partitions_concatenate_to_tp1(ft_dirs, stem, axis, shape1, shape2):
    whole = _rank_files(ft_dirs[("gptj", 1)], stem, 1, shape1)[0]
    parts = _rank_files(ft_dirs[("gptj", 2)], stem, 2, shape2)
    assert torch.equal(torch.cat(parts, dim=axis), whole)


@pytest.mark.parametrize("stem,axis,shape1,shape2", [
    ("encoder.block.0.layer.0.SelfAttention.q.weight", -1, (64, 64), (64, 32)),
    ("encoder.block.0.layer.0.SelfAttention.o.weight", 0, (64, 64), (32, 64)),
    ("decoder.block.0.layer.0.SelfAttention.qkv.weight", -1, (64, 3, 64), (64, 3, 32)),
    ("decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight", 0, (4, 16), (2, 16)),
    ("decoder.block.1.layer.2.DenseReluDense.wo.weight", 0, (128, 64), (64, 64)),
])
def test_t5_partitions_concatenate_to_tp1(ft_dirs, stem, axis, shape1, shape2):
    whole = _rank_files(ft_dirs[("t5", 1)], stem, 1, shape1)[0]
    parts = _rank_files(ft_dirs[("t5", 2)], stem, 2, shape2)
    assert torch.equal(torch.cat(parts, dim=axis), whole)


def test_fp16_checkpoint(tmp_path, gptj_model):
    folder = c.convert_gptj(gptj_model, gptj_model.config, tmp_path, 1, "fp16")
    assert (folder / "model.wte.bin").stat().st_size == 50400 * 64 * 2
    sd = c.gptj_ft_to_hf(folder)
    ref = gptj_model.state_dict()["transformer.h.0.mlp.fc_in.weight"]
    assert torch.equal(sd["transformer.h.0.mlp.fc_in.weight"], ref.half().float())


def test_errors_are_clear(tmp_path, ft_dirs, gptj_model):
    with pytest.raises(ValueError, match="rank 2 does not exist"):
        c.load_gptj_rank(ft_dirs[("gptj", 2)], 2)
    with pytest.raises(ValueError, match="not divisible"):
        c.convert_gptj(gptj_model, gptj_model.config, tmp_path / "x", 3)
    folder = c.convert_gptj(gptj_model, gptj_model.config, tmp_path / "y", 1)
    (folder / "model.final_layernorm.bias.bin").write_bytes(b"\0" * 8)
    with pytest.raises(ValueError, match="truncated"):
        c.load_gptj_rank(folder, 0)
