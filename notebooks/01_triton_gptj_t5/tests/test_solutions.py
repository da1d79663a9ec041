import torch

import solutions


def test_qkv_partitions(tmp_path, gptj_model):
    assert solutions.qkv_partitions_concat(gptj_model, tmp_path, tp=4)
    assert solutions.qkv_partitions_concat(gptj_model, tmp_path / "b", tp=2, layer=1)


def test_repetition_penalty_matches_hf():
    from transformers import RepetitionPenaltyLogitsProcessor
    torch.manual_seed(0)
    logits = torch.randn(2, 30)
    prev = torch.tensor([[1, 4, 4, 7], [0, 29, 3, 3]])
    ref = RepetitionPenaltyLogitsProcessor(1.3)(prev, logits.clone())
    out = solutions.repetition_penalty(logits, prev, 1.3)
    assert torch.allclose(out, ref)
    assert not torch.allclose(out, logits)


def test_bandwidth_floor():
    # GPU_BASELINE.md: 12.1 GB of fp16 weights at 3.02 TB/s -> about 4.0 ms per token
    assert abs(solutions.bandwidth_floor_ms(6.05e9, 2, 3.02e12) - 4.0) < 0.1
