"""The generated repository on the real tritonserver (nvidia-pytriton's binary, CPU), started once for the
module: both protocols end to end, then what a hostile client or a crash does (issue 15): bad requests in a
dynamic batch, user errors, size limits, a killed stub, a hung or killed tensor-parallel rank, exposure, the
ft_gate proxy in front of it (body limit, JSON checks, allowed routes), a SIGKILLed tritonserver, and a stop
under load. The last test stops the server itself."""
import glob
import json
import os
import signal
import threading
import time
import urllib.error
import urllib.request
from contextlib import closing

import numpy as np
import psutil
import pytest

import ft_client
import ft_gate
import ft_triton_repo
import ft_weights
from conftest import LOOPBACK, listening

pytest.importorskip("pytriton", reason="nvidia-pytriton carries the tritonserver binary")

MAX_OUT = 8
RANK_TIMEOUT = 4.0
GATE_LIMIT = 4 * 2 ** 20
RESTART_BOUND = 150   # s from SIGKILL of tritonserver to ready again (measured 38 s on the shared 2-core machine, load ~4)


@pytest.fixture(scope="module")
def srv(tmp_path_factory, ft_dirs):
    tmp = tmp_path_factory.mktemp("triton")
    tok = ft_weights.gpt2_tokenizer_files() / "tokenizer.json"
    # gptj at TP=2 (two rank processes to kill), t5 at TP=2; a 100 ms batching window so that requests sent
    # together land in one execution
    repo = ft_triton_repo.build_repository(tmp / "repo", ft_dirs[("gptj", 2)], ft_dirs[("t5", 2)], tok,
                                           tensor_para_size=2, t5_tensor_para_size=2, max_output_len=MAX_OUT,
                                           rank_timeout_s=RANK_TIMEOUT, queue_delay_us=100_000)
    server = ft_triton_repo.triton_server(repo, ft_weights.cache_dir(), log_path=tmp / "triton.log", watch_interval=0.3,
                                          gate={"max_body_bytes": GATE_LIMIT})
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def clients():
    """Clients closed after each test, pass or fail: an idle keep-alive HTTP connection holds tritonserver's
    drain on stop until --exit-timeout-secs (Triton 2.51 waits for open HTTP connections first)."""
    made = []

    def make(srv, protocol="http", via=None):
        made.append(ft_client.client(srv.urls[via or protocol], protocol))
        return made[-1]
    yield make
    for c in made:
        c.close()


def _group(pgid):
    out = []
    for p in psutil.process_iter(["pid"]):
        try:
            if os.getpgid(p.info["pid"]) == pgid and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p.info["pid"])
        except (ProcessLookupError, psutil.Error):
            pass
    return out


def _http(srv, path, body=None, headers=None):
    req = urllib.request.Request(f"http://{srv.urls['http']}{path}", data=body, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def _wait(cond, timeout, step=0.1):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if cond():
            return time.monotonic() - t0
        time.sleep(step)
    return None


def test_end_to_end_both_protocols(srv, clients):
    members = _group(srv.pid)
    assert len(members) >= 1 + 4 + 2 + 2  # server + 4 python stubs + 2 GPT-J ranks + 2 T5 ranks
    for proto in ("http", "grpc"):
        c = clients(srv, proto)
        table = ft_client.ready_table(c, srv.admin_headers(proto))
        assert set(table.index) == {"ensemble", "gptj", "preprocessing", "postprocessing", "t5"}
        assert (table["state"] == "READY").all()
        text = ft_client.gptj_text(c, proto, ["Hello world", "The capital of France is"], 4)
        assert text[0].startswith("Hello world") and text[1].startswith("The capital of France is")
        ids, lens = ft_client.gptj_ids(c, proto, [[15496, 995], [464, 3139, 286]], 3)
        assert ids.shape[:2] == (2, 1) and lens[:, 0].tolist() == [5, 6]
        assert ids[0, 0, :2].tolist() == [15496, 995]
        out, seq, cum = ft_client.t5_request(c, proto, [[5, 17, 1], [7, 8, 9, 1]], 6, beam_width=2)
        assert out.shape[:2] == (2, 2) and (seq <= 6).all() and (cum[:, 0] >= cum[:, 1]).all()
    load = ft_client.load_run(srv.urls["http"], ["Hello world"], 3, concurrency=3, requests=9)
    assert load["failed"] == 0 and load["p50_ms"] > 0 and load["p99_ms"] >= load["p50_ms"]


def test_everything_listens_on_loopback_only(srv):
    """HTTP, gRPC, metrics, the TCPStore rendezvous and gloo's sockets, in every process of the group."""
    socks = listening(_group(srv.pid))
    stub_pids = {v["stub"] for v in srv.snapshot().values()}
    assert len(socks) >= 3 + 2 + 2 * 2   # 3 endpoints, 2 rendezvous stores, gloo: one socket per rank
    assert any(pid in stub_pids for pid, _, _ in socks)   # the stores are hosted by the stubs (TPEngine)
    assert {ip for _, ip, _ in socks} <= LOOPBACK, socks


def test_admin_apis_need_the_key(srv):
    for path, body in (("/v2/repository/index", b"{}"), ("/v2/logging", b'{"log_verbose_level": 1}'),
                       ("/v2/systemsharedmemory/region/x/register", b'{"key": "/any", "offset": 0, "byte_size": 8}'),
                       ("/v2/trace/setting", b'{"trace_level": ["TIMESTAMPS"]}')):
        status, text = _http(srv, path, body)
        assert status == 403 and "restricted" in text, (path, status, text)
    assert _http(srv, "/v2/repository/index", b"{}", srv.admin_headers())[0] == 200
    import tritonclient.grpc as tg
    from tritonclient.utils import InferenceServerException
    with closing(tg.InferenceServerClient(srv.urls["grpc"])) as g:
        with pytest.raises(InferenceServerException, match="restricted"):
            g.update_log_settings({"log_verbose_level": 1})
        assert len(g.get_model_repository_index(headers=srv.admin_headers("grpc")).models) == 5
        assert g.is_server_ready()   # health and inference stay open


def test_one_bad_request_does_not_fail_the_rest_of_its_batch(srv, clients):
    c = clients(srv)
    good = [[464, 3139, 286], [15496, 995], [464, 1110], [40, 716, 257], [818, 262, 3726, 373]]
    alone = [ft_client.gptj_ids(c, "http", [p], 4)[0][0, 0].tolist() for p in good]
    for bad in ([464] * 300,                                     # over max_input_len (the case)
                [464, 60000]):                                   # a token id outside the vocabulary
        before = ft_client.batching_stats(c, "gptj")
        reqs = [ft_client.gptj_inputs("http", [p], 4) for p in good[:3]] + [ft_client.gptj_inputs("http", [bad], 4)] \
            + [ft_client.gptj_inputs("http", [p], 4) for p in good[3:]]
        res = ft_client.concurrent_infer(srv.urls["http"], "gptj", reqs)
        after = ft_client.batching_stats(c, "gptj")
        assert after["execution_count"] - before["execution_count"] < len(reqs)   # batched together
        assert not res[3]["ok"] and res[3]["status"] == "400" and "\n" not in res[3]["error"]
        served = [r for i, r in enumerate(res) if i != 3]
        assert all(r["ok"] for r in served), [r["error"] for r in served]
        assert [r["result"].as_numpy("output_ids")[0, 0].tolist() for r in served] == alone
    # through the ensemble: a 10 MB prompt beside normal ones neither stalls nor fails them
    t0 = time.monotonic()
    res = ft_client.concurrent_infer(srv.urls["http"], "ensemble",
                                     [ft_client.text_inputs("http", ["Hello world"], 4),
                                      ft_client.text_inputs("http", ["x" * 10_000_000], 4),
                                      ft_client.text_inputs("http", ["The capital of France is"], 4)])
    assert time.monotonic() - t0 < 30
    assert res[0]["ok"] and res[2]["ok"] and res[1]["status"] == "400" and "max_prompt_bytes" in res[1]["error"]


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_user_errors_are_one_line_client_errors(srv, clients, protocol):
    c = clients(srv, protocol)
    bad = ft_client.malformed_requests(c, protocol, MAX_OUT, max_input_len=256 - MAX_OUT)
    assert bad["rejected"].all() and bad["server ready after"].all() and bad["one line"].all()
    assert bad["status"].map(ft_client.client_error).all(), bad["status"].to_dict()
    assert not bad["error"].str.contains(r"\.py|Traceback").any()
    expect = {"empty prompt": "empty prompt", "prompt not UTF-8": "not valid UTF-8",
              "prompt of 1 MB": "max_prompt_bytes", "output length 0": "outside 1..8",
              "output length 2**32 - 1": "outside 1..8", "token id outside the vocabulary": "vocabulary",
              "input_lengths 0": "empty prompt", "100k-token prompt (ids)": "max_input_len",
              "runtime_top_k 1e9": "runtime_top_k=1000000000 is outside 0..1024", "runtime_top_p NaN": "finite",
              "runtime_top_p 5": "outside 0.0..1.0", "runtime_top_p -1": "outside 0.0..1.0",
              "temperature 0": "must be > 0"}
    for case, words in expect.items():
        assert words in bad.loc[case, "error"], (case, bad.loc[case, "error"])


def test_t5_sampling_parameters_are_checked(srv, clients):
    c = clients(srv, "grpc")
    from tritonclient.utils import InferenceServerException
    with pytest.raises(InferenceServerException, match="beam_width=5 is outside 1..4"):
        ft_client.t5_request(c, "grpc", [[5, 17, 1]], 4, beam_width=5)
    ins = [ft_client._input("grpc", "input_ids", np.array([[5, 17, 1]], dtype=np.uint32)),
           ft_client._input("grpc", "sequence_length", np.array([[3]], dtype=np.uint32)),
           ft_client._input("grpc", "max_output_len", np.array([[4]], dtype=np.uint32)),
           ft_client._input("grpc", "len_penalty", np.array([[np.nan]], dtype=np.float32))]
    with pytest.raises(InferenceServerException, match="len_penalty=nan is not a finite number") as e:
        c.infer("t5", ins)
    assert str(e.value.status()).endswith("INVALID_ARGUMENT")


def test_sampling_parameters_must_agree_within_a_request(srv, clients):
    """FT's inputs are [rows, 1]; rows of one request run as one generate call, so they must agree."""
    c = clients(srv)
    ins = ft_client.gptj_inputs("http", [[464, 3139], [15496, 995]], 2)
    ins.append(ft_client._input("http", "runtime_top_k", np.array([[1], [8]], dtype=np.uint32)))
    from tritonclient.utils import InferenceServerException
    with pytest.raises(InferenceServerException, match="runtime_top_k must be the same on every row") as e:
        c.infer("gptj", ins)
    assert str(e.value.status()) == "400"


def test_unexpected_error_is_logged_not_sent(srv, clients):
    """A shape the model does not expect (an empty beam axis) raises IndexError inside postprocessing: the client
    gets a short INTERNAL message, the traceback goes to the server log."""
    c = clients(srv)
    ins = [ft_client._input("http", "TOKENS_BATCH", np.zeros((1, 0, 3), dtype=np.uint32)),
           ft_client._input("http", "sequence_length", np.zeros((1, 0), dtype=np.uint32))]
    from tritonclient.utils import InferenceServerException
    with pytest.raises(InferenceServerException) as e:
        c.infer("postprocessing", ins)
    assert e.value.message() == "postprocessing: internal error (IndexError); the server log has the details"
    assert str(e.value.status()) == "500"
    logged = lambda: "postprocessing: unexpected error" in srv.log_path.read_text(errors="replace")
    assert _wait(logged, 10) is not None   # the stub's log messages reach the server log asynchronously
    log = srv.log_path.read_text(errors="replace")
    assert "Traceback" in log and "IndexError" in log


def test_json_errors_of_tritons_own_front_end_are_one_line(srv):
    """Triton 2.51 parses the JSON itself before any model runs: 2**32 for a UINT32 wraps to 0 (our check then
    refuses it), -1 and broken JSON are refused by Triton with one line (its status, 500 in 2.51, is its own)."""
    body = lambda n: json.dumps({"inputs": [{"name": "INPUT_0", "datatype": "BYTES", "shape": [1, 1], "data": ["Hi"]},
                                            {"name": "INPUT_1", "datatype": "UINT32", "shape": [1, 1], "data": [n]}]}).encode()
    h = {"Content-Type": "application/json"}
    status, text = _http(srv, "/v2/models/ensemble/infer", body(2 ** 32), h)
    assert status == 400 and "INPUT_1 (output length)=0 is outside 1..8" in text
    for raw in (body(-1), b"{not json"):
        status, text = _http(srv, "/v2/models/ensemble/infer", raw, h)
        assert status >= 400 and "\n" not in json.loads(text)["error"] and "Traceback" not in text


def test_size_is_bounded_before_tokenizing(srv, clients):
    """An 8 MB prompt is refused in seconds and costs the server group little memory (before: +5.7 GB for 50 MB)."""
    def used():
        rss = sum(psutil.Process(p).memory_info().rss for p in _group(srv.pid) if psutil.pid_exists(p))
        return rss + sum(os.path.getsize(f) for f in glob.glob(f"/dev/shm/{srv.shm_prefix}*"))
    c = clients(srv, "grpc")
    m0, t0 = used(), time.monotonic()
    from tritonclient.utils import InferenceServerException
    with pytest.raises(InferenceServerException, match="8388608 bytes; the limit is"):
        ft_client.gptj_text(c, "grpc", ["y" * 8 * 2 ** 20], 4)
    assert time.monotonic() - t0 < 20
    assert used() - m0 < 200 * 2 ** 20


def test_killed_stub_makes_the_model_unready_then_it_is_reloaded(srv, clients):
    was = srv.snapshot()["preprocessing"]
    c = clients(srv)
    os.kill(was["stub"], signal.SIGKILL)
    assert _wait(lambda: not c.is_model_ready("preprocessing"), 10) is not None   # within 10 s
    assert _wait(lambda: c.is_model_ready("preprocessing") and c.is_model_ready("ensemble"), 120) is not None
    assert ft_client.gptj_text(c, "http", ["Hello world"], 2)[0].startswith("Hello world")
    assert any("preprocessing: unloaded, ready=False" in m for _, m in srv.events)
    assert not os.path.exists(f"/dev/shm/{was['shm']}")   # the dead stub's region (the backend's unload removes it)
    assert "preprocessing: its python-backend stub" in srv.log_path.read_text()


def test_hung_rank_times_out_then_the_model_is_reloaded(srv, clients):
    """A stopped rank blocks the other in its all-reduce: the request fails after rank_timeout_s with a clear
    503 instead of hanging, the ranks are stopped, the model turns unready and comes back."""
    c = clients(srv, "grpc")
    ranks = srv.snapshot()["gptj"]["ranks"]
    os.kill(ranks[1], signal.SIGSTOP)
    from tritonclient.utils import InferenceServerException
    t0 = time.monotonic()
    with pytest.raises(InferenceServerException, match=f"did not finish generate within rank_timeout_s={RANK_TIMEOUT:g}") as e:
        ft_client.gptj_ids(c, "grpc", [[464, 3139]], 2)
    assert RANK_TIMEOUT <= time.monotonic() - t0 < RANK_TIMEOUT + 15
    assert str(e.value.status()).endswith("UNAVAILABLE")
    assert _wait(lambda: not c.is_model_ready("gptj"), 10) is not None
    assert _wait(lambda: c.is_model_ready("gptj") and c.is_model_ready("ensemble"), 180) is not None
    assert not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in ranks)
    assert ft_client.gptj_ids(c, "grpc", [[464, 3139]], 2)[1][0, 0] == 4


def test_killed_rank_fails_fast_then_the_model_is_reloaded(srv, clients):
    c = clients(srv)
    os.kill(srv.snapshot()["gptj"]["ranks"][0], signal.SIGKILL)
    from tritonclient.utils import InferenceServerException
    t0 = time.monotonic()
    with pytest.raises(InferenceServerException) as e:
        ft_client.gptj_ids(c, "http", [[464, 3139]], 2)
    assert time.monotonic() - t0 < 10 and str(e.value.status()) == "503" and "tensor-parallel ranks exited" in e.value.message()
    assert _wait(lambda: not c.is_model_ready("gptj"), 10) is not None
    assert _wait(lambda: c.is_model_ready("gptj") and c.is_model_ready("ensemble"), 180) is not None
    assert ft_client.gptj_ids(c, "http", [[464, 3139]], 2)[1][0, 0] == 4


# ---------------------------------------------------------------- ft_gate in front of the server

def _ensemble_body(n, seed=None):
    inputs = [{"name": "INPUT_0", "datatype": "BYTES", "shape": [1, 1], "data": ["Hi"]},
              {"name": "INPUT_1", "datatype": "UINT32", "shape": [1, 1], "data": [n]}]
    if seed is not None:
        inputs.append({"name": "random_seed", "datatype": "UINT64", "shape": [1, 1], "data": [seed]})
    return json.dumps({"inputs": inputs}).encode()


def _server_rss(srv):
    return sum(psutil.Process(p).memory_info().rss for p in _group(srv.pid) if psutil.pid_exists(p))


def _counts(c, model):
    s = c.get_inference_statistics(model)["model_stats"][0]["inference_stats"]
    return s["success"]["count"], s["fail"]["count"]


def test_gate_refuses_an_oversized_body_without_holding_it(srv, clients):
    """16x the limit, with Content-Length and chunked: 413 at once; the gate's Python allocations peak far below the
    body, the body never reaches Triton (the ensemble's counts do not move) and the server's memory stays put."""
    import tracemalloc
    body, gate = b"x" * (16 * GATE_LIMIT), srv.urls["gate"]
    c = clients(srv)
    counts, rss0 = _counts(c, "ensemble"), _server_rss(srv)
    tracemalloc.start()
    try:
        t0 = time.monotonic()
        status, text = ft_gate.request(gate, "POST", "/v2/models/ensemble/infer", body)
        took = time.monotonic() - t0
        peak_whole = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        chunks = (body[i:i + 2 ** 16] for i in range(0, len(body), 2 ** 16))
        status_chunked, text_chunked = ft_gate.request(gate, "POST", "/v2/models/ensemble/infer", chunks)
        peak_chunked = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    grew = _server_rss(srv) - rss0
    print(f"413 in {took:.2f} s; gate peak {peak_whole / 2 ** 20:.2f} MiB (Content-Length), "
          f"{peak_chunked / 2 ** 20:.2f} MiB (chunked); server RSS {grew / 2 ** 20:+.1f} MiB")
    assert status == 413 and json.loads(text) == {"error": f"the request body is {len(body)} bytes; the limit is {GATE_LIMIT}"}
    assert status_chunked == 413 and "exceeds the limit of 4194304 bytes" in json.loads(text_chunked)["error"]
    assert peak_whole < 2 ** 20                       # never read: refused from Content-Length
    assert peak_chunked < GATE_LIMIT + 2 ** 20        # read up to the limit, then refused
    assert _counts(c, "ensemble") == counts
    assert grew < 16 * 2 ** 20


def test_gate_answers_malformed_requests_with_one_line_400(srv):
    """What Triton 2.51's own parser answers with 500 (broken JSON, UINT32 -1) and what it wraps (2**32 -> 0), the
    gate refuses with 400, generically per datatype."""
    gate = srv.urls["gate"]
    h = {"Content-Type": "application/json"}
    for raw in (b"{not json", _ensemble_body(-1)):   # Triton 2.51 directly: 500 (a later Triton may fix this)
        assert _http(srv, "/v2/models/ensemble/infer", raw, h)[0] == 500
    header = json.dumps({"inputs": [{"name": "input_ids", "datatype": "UINT32", "shape": [1, 2],
                                     "parameters": {"binary_data_size": 8}}]}).encode()
    cases = {"broken JSON": (b"{not json", {}, "malformed JSON"),
             "UINT32 -1": (_ensemble_body(-1), {}, "input 'INPUT_1': -1 is outside the range of UINT32 (0..4294967295)"),
             "UINT32 2**32": (_ensemble_body(2 ** 32), {}, "4294967296 is outside the range of UINT32"),
             "UINT64 NaN": (_ensemble_body(4, float("nan")), {}, "UINT64 data must be integers, got NaN"),
             "UINT32 1.5": (_ensemble_body(1.5), {}, "UINT32 data must be integers, got 1.5"),
             "no inputs": (b'{"outputs": []}', {}, "'inputs' must be a non-empty list"),
             "inputs not a list": (b'{"inputs": {"name": "x"}}', {}, "'inputs' must be a non-empty list"),
             "shape and data disagree": (_ensemble_body([1, 2]), {}, "holds 1 values, 'data' has 2"),
             "binary size disagrees": (header + b"\0" * 4, {"Inference-Header-Content-Length": str(len(header))},
                                       "declare 8 bytes of binary data (binary_data_size) but 4 follow"),
             "header length not a number": (header, {"Inference-Header-Content-Length": "12abc"},
                                            "Inference-Header-Content-Length must be an integer")}
    for case, (raw, extra, words) in cases.items():
        status, text = ft_gate.request(gate, "POST", "/v2/models/ensemble/infer", raw, {**h, **extra})
        assert status == 400 and "\n" not in text and words in json.loads(text)["error"], (case, status, text)
    assert ft_gate.request(gate, "POST", "/v2/models/ensemble/infer", _ensemble_body(4), h)[0] == 200


def test_gate_passes_good_requests_and_tritons_answers_through(srv, clients):
    direct, via = clients(srv), clients(srv, via="gate")
    prompts = [[464, 3139, 286], [15496, 995]]
    ids_direct, lens_direct = ft_client.gptj_ids(direct, "http", prompts, 4)   # binary tensors both ways
    ids_via, lens_via = ft_client.gptj_ids(via, "http", prompts, 4)
    assert ids_via.tolist() == ids_direct.tolist() and lens_via.tolist() == lens_direct.tolist()
    assert ft_client.gptj_text(via, "http", ["Hello world"], 4) == ft_client.gptj_text(direct, "http", ["Hello world"], 4)
    assert via.is_server_ready() and via.is_model_ready("ensemble")
    assert via.get_model_metadata("gptj") == direct.get_model_metadata("gptj")
    assert via.get_model_config("gptj") == direct.get_model_config("gptj")
    from tritonclient.utils import InferenceServerException
    with pytest.raises(InferenceServerException, match="max_input_len") as e:   # the model's own 400
        ft_client.gptj_ids(via, "http", [[464] * 300], 4)
    assert str(e.value.status()) == "400"


def test_bad_requests_through_the_gate_leave_good_ones_answered(srv, clients):
    good = [[464, 3139, 286], [15496, 995], [464, 1110], [40, 716, 257]]
    c = clients(srv)
    alone = [ft_client.gptj_ids(c, "http", [p], 4)[0][0, 0].tolist() for p in good]
    raw = {}

    def bad(name, body):
        raw[name] = ft_gate.request(srv.urls["gate"], "POST", "/v2/models/gptj/infer", body)[0]
    senders = [threading.Thread(target=bad, args=("oversized", b"x" * (4 * GATE_LIMIT))),
               threading.Thread(target=bad, args=("malformed", b'{"inputs": [{"name": "input_ids"'))]
    for t in senders:
        t.start()
    reqs = [ft_client.gptj_inputs("http", [p], 4) for p in good[:2]] + [ft_client.gptj_inputs("http", [[464, 60000]], 4)] \
        + [ft_client.gptj_inputs("http", [p], 4) for p in good[2:]]
    res = ft_client.concurrent_infer(srv.urls["gate"], "gptj", reqs)
    for t in senders:
        t.join(60)
    assert raw == {"oversized": 413, "malformed": 400}
    assert res[2]["status"] == "400" and "vocabulary" in res[2]["error"]
    served = [r for i, r in enumerate(res) if i != 2]
    assert all(r["ok"] for r in served), [r["error"] for r in served]
    assert [r["result"].as_numpy("output_ids")[0, 0].tolist() for r in served] == alone


def test_gate_refuses_routes_it_does_not_expose(srv):
    """Even with the admin key: the restricted APIs, statistics, shared memory (also as infer parameters)."""
    gate, admin = srv.urls["gate"], srv.admin_headers()
    for method, path, body in (("POST", "/v2/repository/index", b"{}"), ("POST", "/v2/repository/models/gptj/unload", b"{}"),
                               ("POST", "/v2/logging", b'{"log_verbose_level": 1}'), ("GET", "/v2/systemsharedmemory/status", None),
                               ("POST", "/v2/systemsharedmemory/region/x/register", b'{"key": "/any", "offset": 0, "byte_size": 8}'),
                               ("POST", "/v2/trace/setting", b"{}"), ("GET", "/v2/models/stats", None),
                               ("GET", "/v2/models/gptj/stats", None), ("GET", "/v2/models/gptj/trace/setting", None)):
        status, text = ft_gate.request(gate, method, path, body, admin)
        assert status == 403 and "not exposed by this gate" in json.loads(text)["error"], (path, status, text)
    assert ft_gate.request(gate, "GET", "/metrics")[0] == 404
    assert ft_gate.request(gate, "DELETE", "/v2/health/ready")[0] == 405
    shm = json.dumps({"inputs": [{"name": "input_ids", "datatype": "UINT32", "shape": [1, 2],
                                  "parameters": {"shared_memory_region": "x", "shared_memory_byte_size": 8}}]}).encode()
    status, text = ft_gate.request(gate, "POST", "/v2/models/gptj/infer", shm)
    assert status == 400 and "shared memory is not available" in text
    assert _http(srv, "/v2/repository/index", b"{}", admin)[0] == 200   # the key still works on Triton's own port


def test_gate_upstream_errors_and_clean_stop(srv):
    """Nothing listening upstream: 502; tritonserver frozen (SIGSTOP) past the gate's upstream timeout: 504; another
    gate on the same server keeps answering meanwhile. stop() leaves no thread and no listening socket."""
    before, sockets = {t.name for t in threading.enumerate()}, _socket_fds()
    with ft_gate.Gate(f"127.0.0.1:{ft_triton_repo.free_port()}") as dead:
        status, text = ft_gate.request(dead.url, "GET", "/v2/health/ready")
        assert status == 502 and "unavailable (ConnectionRefusedError)" in text
        ports = {dead.port}
    with ft_gate.Gate(srv.urls["http"], upstream_timeout_s=1.0) as gate:
        assert ft_gate.request(gate.url, "GET", "/v2/health/ready")[0] == 200
        os.kill(srv.pid, signal.SIGSTOP)
        try:
            t0 = time.monotonic()
            status, text = ft_gate.request(gate.url, "GET", "/v2/health/ready")
            took = time.monotonic() - t0
        finally:
            os.kill(srv.pid, signal.SIGCONT)
        assert status == 504 and json.loads(text) == {"error": f"upstream {srv.urls['http']} did not answer within 1 s"}
        assert 1.0 <= took < 5
        assert ft_gate.request(gate.url, "GET", "/v2/health/ready")[0] == 200
        import http.client
        idle = http.client.HTTPConnection("127.0.0.1", gate.port)   # an idle keep-alive connection must not hold the stop
        idle.request("GET", "/v2/health/live")
        assert idle.getresponse().read() == b"" and idle.sock is not None
        port = gate.port
        ports.add(port)
    idle.close()
    assert {t.name for t in threading.enumerate()} - before == set()
    # every socket the gates opened is closed: none of this process's TCP sockets is on a gate's port, and the number
    # of sockets did not grow (another test's leftovers may close meanwhile, so it may drop). Sockets, not all fds:
    # the server fixture's watchdog thread reads /proc files at any moment (once counted: 76 fds against 75)
    gate_sockets = [c for c in psutil.Process().net_connections(kind="tcp")
                    if (c.laddr and c.laddr.port in ports) or (c.raddr and c.raddr.port in ports)]
    assert gate_sockets == []
    assert _wait(lambda: len(_socket_fds()) <= len(sockets), 5) is not None, (sockets, _socket_fds())
    with pytest.raises(ConnectionRefusedError):
        ft_gate.request(f"127.0.0.1:{port}", "GET", "/v2/health/ready")


def _socket_fds() -> set:
    """This process's open sockets, as the inode names their /proc/self/fd links show ("socket:[123]")."""
    out = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:   # closed meanwhile (the listing's own fd among them)
            continue
        if target.startswith("socket:"):
            out.add(target)
    return out


def _raw_exchange(url, data, wait=b"", read_s=5.0):
    """Send raw bytes to host:port, then (after sending `wait` too) read until the server closes or read_s passes."""
    import socket
    host, _, port = url.rpartition(":")
    with socket.create_connection((host, int(port)), timeout=read_s) as s:
        s.sendall(data)
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
        except TimeoutError:
            pass
    return out


def test_gate_handles_broken_framing_slow_clients_and_too_many_connections(srv):
    """The HTTP-level bad inputs the gate handles itself: each a one-line JSON error with its own status."""
    big = json.dumps({"inputs": [{"name": "input_ids", "datatype": "UINT32", "shape": [40000], "data": [1] * 40000}]}).encode()
    with ft_gate.Gate(srv.urls["http"], max_body_bytes=2 ** 20, max_json_bytes=2 ** 16, body_timeout_s=0.5) as gate:
        head = b"POST /v2/models/gptj/infer HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        cases = {   # raw request -> (status, words in the error)
            "Expect: 100-continue over the limit": (head + b"Content-Length: 5000000\r\nExpect: 100-continue\r\n\r\n",
                                                   413, "the request body is 5000000 bytes"),
            "Content-Length and chunked": (head + b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
                                           400, "exactly one of Content-Length"),
            "Content-Length not a number": (head + b"Content-Length: -4\r\n\r\n", 400, "non-negative integer"),
            "gzip body": (head + b"Content-Length: 2\r\nContent-Encoding: gzip\r\n\r\n{}", 415, "compressed"),
            "broken chunk size": (head + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n", 400, "malformed chunk size"),
            "body slower than body_timeout_s": (head + b"Content-Length: 100\r\n\r\n0123456789", 408, "within 0.5 s"),
            "unknown method": (b"PATCH /v2 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 501, "Unsupported method"),
            "request line over 64 KiB": (b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n", 414, "Request-URI Too Long"),
            "JSON part over max_json_bytes": (head + b"Content-Length: %d\r\n\r\n%s" % (len(big), big), 413,
                                              f"the JSON part of the request is {len(big)} bytes; the limit is 65536")}
        for case, (raw, status, words) in cases.items():
            out = _raw_exchange(gate.url, raw)
            head_, _, body = out.partition(b"\r\n\r\n")
            assert head_.startswith(b"HTTP/1.1 %d " % status), (case, out[:200])
            assert words in json.loads(body)["error"] and b"\n" not in body, (case, body)
    with ft_gate.Gate(srv.urls["http"], max_connections=2) as gate:
        import socket
        held = [socket.create_connection(("127.0.0.1", gate.port)) for _ in range(2)]   # max_connections
        time.sleep(0.2)
        out = _raw_exchange(gate.url, b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\n\r\n")
        assert out.startswith(b"HTTP/1.1 503 ") and b"too many connections" in out
        for s in held:
            s.close()
        assert _wait(lambda: ft_gate.request(gate.url, "GET", "/v2/health/ready")[0] == 200, 5) is not None


# A notebook kernel that started a server and was killed before its stop cell: prints the server's pid and
# /dev/shm prefix once it is ready, then waits to be killed.
KILLED_OWNER = r"""
import sys, time
from pathlib import Path
import ft_triton_repo, ft_weights
s = ft_triton_repo.triton_server(Path(sys.argv[1]), ft_weights.cache_dir(), log_path=Path(sys.argv[2]),
                                 watch_interval=0.3, gate={})
s.start()
print(s.pid, s.shm_prefix, flush=True)
time.sleep(600)
"""


def test_y_a_killed_owner_leaves_no_tritonserver_and_no_shared_memory(srv, tmp_path):
    """SIGKILL of the Python process that started a server (no stop(), no atexit): labkit's reaper ends the
    server's whole group (stubs and ranks) and removes its /dev/shm regions."""
    import subprocess
    import sys
    repo = next(a.split("=", 1)[1] for a in srv.cmd if a.startswith("--model-repository="))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    owner = subprocess.Popen([sys.executable, "-c", KILLED_OWNER, repo, str(tmp_path / "owned.log")],
                             stdout=subprocess.PIPE, text=True, env=env)
    pgid = None
    try:
        line = owner.stdout.readline()
        assert line, (tmp_path / "owned.log").read_text(errors="replace")[-2000:]
        pgid, prefix = int(line.split()[0]), line.split()[1]
        assert _group(pgid) and glob.glob(f"/dev/shm/{prefix}*")   # stubs and their regions are there
        owner.kill()
        owner.wait(timeout=10)
        assert _wait(lambda: not _group(pgid), 60) is not None, _group(pgid)
        assert _wait(lambda: not glob.glob(f"/dev/shm/{prefix}*"), 15) is not None
    finally:
        owner.kill()
        if pgid is not None:
            for p in _group(pgid):
                os.kill(p, signal.SIGKILL)


def test_z_killed_tritonserver_is_restarted(srv, clients):
    """SIGKILL of tritonserver itself: the watchdog notices, kills what is left of its group, removes its /dev/shm
    regions and starts it again on the same ports; the gate stays up (502 meanwhile)."""
    old_pid, old_group = srv.pid, _group(srv.pid)
    old_shm = {os.stat(f).st_ino: f for f in glob.glob(f"/dev/shm/{srv.shm_prefix}*")}
    assert len(old_group) >= 9 and old_shm
    seen = len(srv.events)
    t0 = time.monotonic()
    os.kill(old_pid, signal.SIGKILL)
    assert _wait(lambda: ft_gate.request(srv.urls["gate"], "GET", "/v2/health/ready")[0] == 502, 10) is not None
    back = _wait(lambda: any(m == "tritonserver restarted and ready" for _, m in srv.events[seen:]), RESTART_BOUND, 0.2)
    assert back is not None, srv.log_tail()
    took = time.monotonic() - t0
    print(f"tritonserver ready again {took:.1f} s after SIGKILL")
    events = [m for _, m in srv.events[seen:]]
    assert events[0] == "tritonserver exited with code -9; restarting it", events
    assert "[watchdog] tritonserver exited with code -9; restarting it" in srv.log_path.read_text(errors="replace")
    assert srv.pid != old_pid and srv.ready()
    assert not [p for p in old_group if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    now = {os.stat(f).st_ino: f for f in glob.glob(f"/dev/shm/{srv.shm_prefix}*")}
    assert not set(now) & set(old_shm)   # every region of the killed server was removed (the new ones are new files)
    c = clients(srv)
    assert ft_client.gptj_ids(c, "http", [[464, 3139]], 2)[1][0, 0] == 4
    via = clients(srv, via="gate")
    assert ft_client.gptj_text(via, "http", ["Hello world"], 2)[0].startswith("Hello world")


def test_zz_stop_drains_in_flight_requests_and_leaves_nothing(srv):
    """Stop under load: requests in flight finish (the ranks are stopped only after the drain), tritonserver
    exits by itself before its exit timeout, no process and no /dev/shm region of this server is left."""
    pgid, prefix = srv.pid, srv.shm_prefix
    assert _wait(lambda: srv.snapshot().keys() == srv.expected.keys() and _http(srv, "/v2/health/ready")[0] == 200, 180)
    results = []

    def client_loop():
        c = ft_client.client(srv.urls["http"])
        for _ in range(4):
            try:
                ft_client.gptj_text(c, "http", ["Count with me: one, two,"], MAX_OUT)
                results.append("ok")
            except Exception as exc:  # after the drain began: refused, never a broken pipe
                results.append(str(exc))
        c.close()

    threads = [threading.Thread(target=client_loop) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    t0 = time.monotonic()
    srv.stop()
    stop_s = time.monotonic() - t0
    for t in threads:
        t.join(60)
    assert results.count("ok") >= 1
    assert not any(w in r for r in results for w in ("Broken pipe", "Stub process", "rank", "internal error")), results
    assert srv.proc.returncode == 0, srv.log_tail()
    assert "Exit timeout expired" not in srv.log_path.read_text()
    assert _group(pgid) == [] and not srv.alive()
    assert glob.glob(f"/dev/shm/{prefix}*") == []
    print(f"stop under load took {stop_s:.1f} s")
