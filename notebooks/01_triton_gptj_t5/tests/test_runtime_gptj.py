"""The GPT-J runtime against Hugging Face on the same (random) weights. Tolerance: 1e-4 absolute on
float32 logits (observed ~2e-6; the ops are the same, only their order of summation differs)."""
import os
import signal
import time

import pytest
import torch

import ft_gemm
import ft_runtime_gptj as rg
from conftest import LOOPBACK, listening
from ft_runtime_common import RankFailure, TPEngine, linear, sample

TOL = 1e-4
PROMPTS = [[464, 3139, 286, 4881, 318], [15496, 995], [40, 1101, 257]]


def padded(prompts, pad=50256):
    b, s = len(prompts), max(map(len, prompts))
    ids = torch.full((b, s), pad)
    mask = torch.zeros((b, s), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, s - len(p):] = torch.tensor(p)
        mask[i, s - len(p):] = 1
    return ids, mask


def hf_logits(model, prompts):
    ids, mask = padded(prompts)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask, position_ids=pos).logits, ids, mask


@pytest.fixture(scope="module")
def rt(ft_dirs):
    return rg.GPTJRuntime.from_checkpoint(ft_dirs[("gptj", 1)], max_len=64)


def test_logits_match_hf_tp1_left_padded_batch(gptj_model, rt):
    ref, ids, mask = hf_logits(gptj_model, PROMPTS)
    out = rt.logits(ids, mask)
    assert (out - ref).abs()[mask.bool()].max() < TOL


def test_greedy_matches_hf_generate(gptj_model, rt):
    tokens, lengths = rt.generate(PROMPTS, 6, stop_at_end=False)
    for i, p in enumerate(PROMPTS):
        ref = gptj_model.generate(torch.tensor([p]), max_new_tokens=6, min_new_tokens=6, do_sample=False,
                                  pad_token_id=50256)[0, len(p):]
        assert tokens[i].tolist() == ref.tolist()
    assert lengths.tolist() == [6, 6, 6]


def test_sampling_is_seeded(rt):
    a = rt.generate(PROMPTS, 8, top_k=50, top_p=0.95, temperature=1.0, seed=7)[0]
    b = rt.generate(PROMPTS, 8, top_k=50, top_p=0.95, temperature=1.0, seed=7)[0]
    c = rt.generate(PROMPTS, 8, top_k=50, top_p=0.95, temperature=1.0, seed=8)[0]
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_sample_filters():
    logits = torch.tensor([[0.0, 5.0, 4.0, 1.0, -3.0]])
    assert sample(logits, top_k=1).item() == 1
    g = torch.Generator().manual_seed(0)
    picks = {sample(logits, top_k=2, generator=g).item() for _ in range(200)}
    assert picks == {1, 2}
    picks = {sample(logits, top_k=0, top_p=0.5, generator=g).item() for _ in range(50)}
    assert picks == {1}  # token 1 alone holds > 50% of the mass


def test_end_id_stops_and_lengths(gptj_model, rt):
    toks, _ = rt.generate([PROMPTS[0]], 3, stop_at_end=False)
    end = int(toks[0, 1])  # pretend the 2nd generated token is the end token
    toks2, lens2 = rt.generate([PROMPTS[0]], 5, end_id=end)
    assert lens2.tolist() == [2] and toks2[0, 2:].tolist() == [end] * 3


def test_gemm_plan_keeps_results(ft_dirs, tmp_path, rt):
    rows = ft_gemm.tune(ft_gemm.gptj_gemm_shapes(rt.m, 1, 4), iters=3, heads=4, head_dim=16, kv_len=16)
    plan = ft_gemm.plan_from_config(ft_gemm.write_config(rows, tmp_path / "gemm_config.csv"))
    forced = {g: {"layout": "kn"} for g in rg.GEMMS} | {"attention": {"impl": "math"}}
    for p in (plan, forced):
        other = rg.GPTJRuntime.from_checkpoint(ft_dirs[("gptj", 1)], max_len=64, gemm_plan=p)
        ids, mask = padded(PROMPTS)
        assert (other.logits(ids, mask) - rt.logits(ids, mask)).abs()[mask.bool()].max() < TOL


def test_errors(rt, ft_dirs):
    with pytest.raises(ValueError, match="at least one token"):
        rt.generate([[]], 4)
    with pytest.raises(ValueError, match="exceeds the cache"):
        rt.generate(PROMPTS, 100)
    with pytest.raises(ValueError, match="tensor_para_size=2"):
        rg.GPTJRuntime.from_checkpoint(ft_dirs[("gptj", 2)])


def test_tp2_with_gloo_matches_hf(gptj_model, ft_dirs):
    ref, ids, mask = hf_logits(gptj_model, PROMPTS)
    with TPEngine(rg.factory(str(ft_dirs[("gptj", 2)]), max_len=64), 2) as eng:
        assert len(set(eng.pids)) == 2
        out = eng.call("logits", input_ids=ids, attention_mask=mask)
        toks, _ = eng.call("generate", input_ids=PROMPTS, max_new_tokens=6, stop_at_end=False)
        procs = list(eng.procs)
        # the rendezvous store (hosted here) and gloo's sockets (one per rank) listen on loopback only
        socks = [s for s in listening([os.getpid()]) if s[2] == eng.rendezvous_port] + listening(eng.pids)
        assert {pid for pid, _, _ in socks} == {os.getpid(), *eng.pids} and {ip for _, ip, _ in socks} <= LOOPBACK, socks
        # a rank that dies: the next call names it at once, and the engine refuses further calls
        os.kill(eng.pids[1], signal.SIGKILL)
        t0 = time.monotonic()
        with pytest.raises(RankFailure, match=r"rank 1 exited \(exit code -9\) during generate"):
            eng.call("generate", input_ids=PROMPTS, max_new_tokens=2)
        assert time.monotonic() - t0 < 10
        with pytest.raises(RankFailure, match="this engine is unusable"):
            eng.call("generate", input_ids=PROMPTS, max_new_tokens=2)
    assert (out - ref).abs()[mask.bool()].max() < TOL
    tp1 = rg.GPTJRuntime.from_checkpoint(ft_dirs[("gptj", 1)], max_len=64).generate(PROMPTS, 6, stop_at_end=False)[0]
    assert torch.equal(toks, tp1)
    assert not any(p.is_alive() for p in procs)


def test_loopback_check_can_fail():
    """The check above sees what it must refuse: PyTorch's own TCPStore server, given 127.0.0.1, listens on
    every interface (why TPEngine hands it a socket bound to loopback)."""
    import torch.distributed as dist
    store = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    socks = [s for s in listening([os.getpid()]) if s[2] == store.port]
    assert socks and not {ip for _, ip, _ in socks} <= LOOPBACK, socks


def test_a_dead_rank_is_named_even_when_its_peers_collective_error_is_read_first():
    """A killed rank makes its peer's next all-reduce fail at once ("Connection reset by peer"), and the peer's
    answer can be read before the dead rank's pipe: the failure must still name the dead rank (it read "a collective
    ... failed" once, a flaky test_tp2_with_gloo_matches_hf). Two stand-in ranks: rank 0 has answered the collective
    error, rank 1 has exited with its pipe not yet at EOF."""
    import multiprocessing as mp
    ctx = mp.get_context("spawn")
    alive, dead = ctx.Process(target=time.sleep, args=(60,)), ctx.Process(target=os._exit, args=(3,))
    alive.start(), dead.start()
    dead.join(30)
    (a0, b0), (a1, b1) = ctx.Pipe(), ctx.Pipe()
    b0.send(("group error", "Traceback\nRuntimeError: [gloo] Read error: Connection reset by peer"))
    eng = TPEngine.__new__(TPEngine)
    eng.size, eng.procs, eng.conns, eng.timeout_s, eng.broken = 2, [alive, dead], [a0, a1], 5.0, None
    try:
        with pytest.raises(RankFailure, match=r"tensor-parallel rank 1 exited \(exit code 3\) during generate"):
            eng._gather("generate", time.monotonic() + 10)
    finally:
        alive.kill()
        alive.join(10)


def test_tp2_stuck_rank_is_an_error_not_a_hang(ft_dirs):
    """A rank's error leaves the engine usable; a rank that stops (SIGSTOP) makes the other's all-reduce fail
    after timeout_s (gloo's own default: 30 minutes) with an error naming the cause, and the engine is closed."""
    with TPEngine(rg.factory(str(ft_dirs[("gptj", 2)]), max_len=64), 2, timeout_s=3) as eng:
        with pytest.raises(RuntimeError, match="at least one token") as e:
            eng.call("generate", input_ids=[[]], max_new_tokens=2)
        assert not isinstance(e.value, RankFailure)
        assert eng.call("generate", input_ids=[[464, 3139]], max_new_tokens=2, stop_at_end=False)[0].shape == (1, 2)
        os.kill(eng.pids[1], signal.SIGSTOP)
        t0 = time.monotonic()
        with pytest.raises(RankFailure, match="a collective of the tensor-parallel ranks failed during generate "
                                              r"\(rank 0: .*Timed out waiting 3000ms"):
            eng.call("generate", input_ids=[[464, 3139]], max_new_tokens=2)
        assert 3 <= time.monotonic() - t0 < 30
        procs = list(eng.procs)
    assert not any(p.is_alive() for p in procs)   # the stopped rank too


def test_decode_paths_agree(ft_dirs, rt):
    """The fused decode step (eager, over the filled cache), the same step over the whole masked cache
    (the fixed shapes a CUDA graph / torch.compile needs) and the older unfused step give the same tokens."""
    ref = rt.generate(PROMPTS, 6, stop_at_end=False)[0]
    other = rg.GPTJRuntime.from_checkpoint(ft_dirs[("gptj", 1)], max_len=64)
    other.static_decode = True
    assert torch.equal(other.generate(PROMPTS, 6, stop_at_end=False)[0], ref)
    for impl in ("bmm", "reduce"):
        other.decode_attn = impl
        assert torch.equal(other.generate(PROMPTS, 6, stop_at_end=False)[0], ref), impl
    other.static_decode, other.fused_step = False, False
    assert torch.equal(other.generate(PROMPTS, 6, stop_at_end=False)[0], ref)


def test_merged_gemms_are_views_of_one_weight(rt):
    w = rt.layers[0]
    assert w["qkv"].untyped_storage().data_ptr() == w["w1"].untyped_storage().data_ptr()
    assert w["fc_out"].untyped_storage().data_ptr() == w["w2"].untyped_storage().data_ptr()
    h, lay = torch.randn(2, rt.d), rt.layout
    ref = torch.cat([linear(h, w["qkv"], None, lay["qkv"]), linear(h, w["fc_in"], w["fc_in_b"], lay["ffn1"])], dim=1)
    assert torch.allclose(linear(h, w["w1"], w["b1"], lay["in"]), ref, atol=1e-5)


def test_compiled_decode_step_matches_eager(ft_dirs, rt):
    """torch.compile (Inductor, here its CPU backend) of the decode step: the same greedy tokens."""
    import torch._dynamo
    torch._dynamo.reset()
    comp = rg.GPTJRuntime.from_checkpoint(ft_dirs[("gptj", 1)], max_len=64, compile=True)
    assert comp.static_decode and not comp.cuda_graph and comp.decode_attn == "reduce"
    toks, lens = comp.generate(PROMPTS, 6, stop_at_end=False)
    assert comp.compile, "torch.compile fell back to eager"
    assert torch.equal(toks, rt.generate(PROMPTS, 6, stop_at_end=False)[0]) and lens.tolist() == [6, 6, 6]


def test_compiled_step_at_a_batch_below_the_cache_rows_copies_no_cache():
    """A batch smaller than the cache's rows (every bucket below the largest, the served model under dynamic
    batching): writing K/V through `kv[:, :b, :, slot]` made Inductor copy those b rows' whole cache out and back
    in every layer at every step (generated code over 2 x b x heads x max_len x head_dim elements; on the CPU,
    rows 64 / batch 8 / max_len 1024: 43 vs 28 ms a step; the H200 batch benchmark's batch-16 step took 6.98 ms,
    as long as batch 64's). The step writes its slot by row index instead."""
    import ft_bench
    from torch._inductor.utils import run_and_get_code
    rows, b, L = 7, 3, 40        # sizes no other part of the tiny model shares
    runtime = rg.GPTJRuntime.from_hf(ft_bench.random_gptj("gptj-tiny", torch.float32, "cpu"), dtype=torch.float32,
                                     device="cpu", max_len=L, max_batch=rows)
    args = (torch.tensor([3, 4, 5]), torch.tensor([4, 2, 0]), torch.tensor([5]), torch.zeros(b, 1, 1, L), L)
    eager = runtime._step(*args).clone()
    kv_eager = [t.clone() for t in runtime.kv]
    logits, codes = run_and_get_code(torch.compile(runtime._step, fullgraph=True, dynamic=False), *args)
    torch.testing.assert_close(logits, eager)
    for a, e in zip(runtime.kv, kv_eager):   # the same slot written, nothing else
        torch.testing.assert_close(a, e)
    rows_cache = b * runtime.h_local * L * runtime.hd
    assert codes and not any(str(n) in c for c in codes for n in (rows_cache, 2 * rows_cache)), \
        "the compiled step copies the batch rows' cache"
