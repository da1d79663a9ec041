"""The T5 runtime against Hugging Face on the same (random) weights; tolerance 1e-4 on float32 logits."""
import pytest
import torch

import ft_convert
import ft_runtime_t5 as rt5
from ft_runtime_common import TPEngine

TOL = 1e-4
SRC = [[5, 17, 33, 9, 1], [40, 2, 1], [7, 7, 60, 61, 62, 63, 1]]


def batch(src):
    n = max(map(len, src))
    ids = torch.zeros(len(src), n, dtype=torch.long)
    for i, s in enumerate(src):
        ids[i, :len(s)] = torch.tensor(s)
    return ids, (ids != 0).long()


@pytest.fixture(scope="module")
def rt(ft_dirs):
    return rt5.T5Runtime.from_checkpoint(ft_dirs[("t5", 1)], max_out=32)


def test_logits_match_hf(t5_model, rt):
    ids, mask = batch(SRC)
    dec = torch.tensor([[0, 4, 8, 15, 16], [0, 23, 42, 3, 3], [0, 1, 1, 1, 1]])
    with torch.no_grad():
        ref = t5_model(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits
    assert (rt.logits(ids, mask, dec) - ref).abs().max() < TOL


def test_gated_untied_logits_match_hf(tmp_path, gated_t5_model):
    folder = ft_convert.convert_t5(gated_t5_model, gated_t5_model.config, tmp_path, 1)
    rt = rt5.T5Runtime.from_checkpoint(folder, max_out=16)
    ids, mask = batch(SRC)
    dec = torch.tensor([[0, 4, 8]] * 3)
    with torch.no_grad():
        ref = gated_t5_model(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits
    assert (rt.logits(ids, mask, dec) - ref).abs().max() < TOL


def test_greedy_matches_hf(t5_model, rt):
    toks, lens, _ = rt.generate(SRC, 8, stop_at_end=False)
    for i, s in enumerate(SRC):
        ref = t5_model.generate(torch.tensor([s]), max_new_tokens=8, min_new_tokens=8, do_sample=False)[0, 1:]
        assert toks[i, 0].tolist() == ref.tolist()


def test_beam_search(t5_model, rt):
    greedy, glen, gscore = rt.generate(SRC, 8)
    b1, l1, s1 = rt.generate(SRC, 8, beam_width=1)
    assert torch.equal(greedy, b1)
    toks, lens, scores = rt.generate(SRC, 8, beam_width=4, len_penalty=0.0)
    assert toks.shape == (3, 4, 8)
    assert (scores[:, :-1] >= scores[:, 1:]).all()          # beams sorted best first
    assert (scores[:, 0] >= gscore[:, 0] - 1e-5).all()      # never worse than greedy on these inputs
    # the best beam's score is its real log-probability under the HF model
    for i, s in enumerate(SRC):
        seq = toks[i, 0, :lens[i, 0]].tolist()
        dec = torch.tensor([[0] + seq[:-1]])
        with torch.no_grad():
            lp = torch.log_softmax(t5_model(input_ids=torch.tensor([s]), decoder_input_ids=dec).logits, -1)[0]
        assert abs(lp[torch.arange(len(seq)), torch.tensor(seq)].sum().item() - scores[i, 0].item()) < 1e-3


def test_sampling_seeded(rt):
    a = rt.generate(SRC, 8, top_k=20, seed=3)[0]
    assert torch.equal(a, rt.generate(SRC, 8, top_k=20, seed=3)[0])
    assert not torch.equal(a, rt.generate(SRC, 8, top_k=20, seed=4)[0])


def test_relative_buckets_match_hf():
    from transformers.models.t5.modeling_t5 import T5Attention
    rel = torch.arange(-40, 41)[None, :]
    for bi in (True, False):
        ref = T5Attention._relative_position_bucket(rel, bidirectional=bi, num_buckets=32, max_distance=64)
        assert torch.equal(rt5.relative_bucket(rel, bi, 32, 64), ref)


def test_tp2_with_gloo_matches_hf(t5_model, ft_dirs, rt):
    ids, mask = batch(SRC)
    dec = torch.tensor([[0, 4, 8, 15]] * 3)
    with torch.no_grad():
        ref = t5_model(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits
    with TPEngine(rt5.factory(str(ft_dirs[("t5", 2)]), max_out=32), 2) as eng:
        out = eng.call("logits", input_ids=ids, attention_mask=mask, decoder_input_ids=dec)
        toks = eng.call("generate", input_ids=SRC, max_new_tokens=8, beam_width=2)[0]
    assert (out - ref).abs().max() < TOL
    assert torch.equal(toks, rt.generate(SRC, 8, beam_width=2)[0])


def test_compiled_decoder_step_matches_eager(t5_model, ft_dirs, rt):
    """torch.compile (Inductor, here its CPU backend) of the decoder step over the whole, masked cache:
    the same greedy tokens and beams as the eager step that attends over the filled part only."""
    comp = rt5.T5Runtime.from_checkpoint(ft_dirs[("t5", 1)], max_out=16, compile=True)
    greedy = comp.generate(SRC, 8, stop_at_end=False)[0]
    assert comp.compile, "torch.compile fell back to eager"
    assert torch.equal(greedy, rt.generate(SRC, 8, stop_at_end=False)[0])
    assert torch.equal(comp.generate(SRC, 6, beam_width=3)[0], rt.generate(SRC, 6, beam_width=3)[0])


def test_compiled_decoder_step_writes_a_slot_not_the_whole_cache():
    """The step writes one slot of each layer's K/V cache. With one [layers, rows, ...] cache tensor Inductor
    copied every layer's whole cache back at every step (the generated code looped over rows x heads x
    max_out x head_dim elements): the step cost grew with the cache's rows, not with the batch (T5-base on an
    H200: 7.5 ms per token at batch 1 with a 512-row cache, flat up to batch 128). Per-layer tensors fix it."""
    import ft_bench
    from torch._inductor.utils import run_and_get_code
    rows, out = 1000, 8           # a row count no other size of the tiny model shares
    runtime = rt5.T5Runtime.from_hf(ft_bench.random_t5("t5-tiny", torch.float32, "cpu"), dtype=torch.float32,
                                    device="cpu", max_batch=rows, max_out=out)
    mask = torch.ones(1, 4, dtype=torch.long)
    runtime.set_encoder(runtime.encode(torch.tensor([[5, 6, 7, 1]]), mask), mask)
    step = torch.compile(runtime.decoder, fullgraph=True, dynamic=False)
    logits, codes = run_and_get_code(step, torch.tensor([[3]]), torch.tensor([0]), out, runtime.cross_bias)
    cache_numel = rows * runtime.hl * out * runtime.hd
    assert logits.shape == (1, 1, runtime.m["vocab_size"]) and codes
    assert not any(str(cache_numel) in c for c in codes), "the compiled step touches a whole layer cache"


def test_compiled_decoder_step_at_a_batch_below_the_cache_rows_copies_no_cache():
    """A batch smaller than the cache's rows (the bucketed batches, the served model under dynamic batching):
    a write into `cache[:b]` made Inductor copy those b rows' whole cache out and back at every step (the generated
    code looped over b x heads x max_out x head_dim elements; on the CPU, rows 64 / batch 8 / max_out 512: 1.57x
    the step time). The step writes its slots by row index instead."""
    import ft_bench
    from torch._inductor.utils import run_and_get_code
    rows, b, out = 7, 3, 40      # sizes no other part of the tiny model shares
    runtime = rt5.T5Runtime.from_hf(ft_bench.random_t5("t5-tiny", torch.float32, "cpu"), dtype=torch.float32,
                                    device="cpu", max_batch=rows, max_out=out)
    mask = torch.ones(b, 4, dtype=torch.long)
    runtime.set_encoder(runtime.encode(torch.tensor([[5, 6, 7, 1]] * b), mask), mask)
    eager = runtime.decoder(torch.full((b, 1), 3), torch.tensor([0]), out, runtime.cross_bias).clone()
    step = torch.compile(runtime.decoder, fullgraph=True, dynamic=False)
    logits, codes = run_and_get_code(step, torch.full((b, 1), 3), torch.tensor([0]), out, runtime.cross_bias)
    torch.testing.assert_close(logits, eager)
    rows_cache = b * runtime.hl * out * runtime.hd
    assert codes and not any(str(rows_cache) in c for c in codes), "the compiled step copies the batch rows' cache"
