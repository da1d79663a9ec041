"""Talking to the Triton server with tritonclient (HTTP and gRPC): text in/out, T5 requests, the READY
table, statistics, malformed requests, requests sent together (one dynamic batch) and a small bounded load
run (p50/p99 latency and failures: the real perf_analyzer is not on PyPI, its package there is a placeholder)."""
from __future__ import annotations

import threading
import time
from typing import List, Optional, Sequence

import numpy as np


def client(url: str, protocol: str = "http"):
    if protocol == "http":
        import tritonclient.http as tc
        return tc.InferenceServerClient(url=url, concurrency=1)
    if protocol == "grpc":
        import tritonclient.grpc as tc
        return tc.InferenceServerClient(url=url)
    raise ValueError(f"protocol={protocol!r}; use 'http' or 'grpc'")


def _mod(protocol: str):
    if protocol == "http":
        import tritonclient.http as tc
    else:
        import tritonclient.grpc as tc
    return tc


def _input(protocol: str, name: str, arr: np.ndarray, datatype: Optional[str] = None):
    from tritonclient.utils import np_to_triton_dtype
    tc = _mod(protocol)
    dt = datatype or ("BYTES" if arr.dtype == object else np_to_triton_dtype(arr.dtype))
    x = tc.InferInput(name, list(arr.shape), dt)
    x.set_data_from_numpy(arr)
    return x


def ready_table(c, headers: Optional[dict] = None) -> "object":
    """The blog's model table: name, version, status (READY / UNAVAILABLE ...). The repository index is a
    restricted API on our server: pass `server.admin_headers(protocol)`."""
    import pandas as pd
    idx = c.get_model_repository_index(headers=headers)
    rows = []
    for m in idx if isinstance(idx, list) else idx.models:
        get = (lambda k: m.get(k, "")) if isinstance(m, dict) else (lambda k: getattr(m, k, ""))
        rows.append({"model": get("name"), "version": get("version"), "state": get("state"), "reason": get("reason")})
    return pd.DataFrame(rows).set_index("model")


def gptj_text(c, protocol: str, prompts: Sequence[str], output_len: int, top_k: Optional[int] = None,
              top_p: Optional[float] = None, seed: Optional[int] = None, model: str = "ensemble") -> List[str]:
    """Text in, text out through the ensemble (preprocessing -> gptj -> postprocessing)."""
    inputs = text_inputs(protocol, prompts, output_len)
    for name, value in (("runtime_top_k", top_k), ("runtime_top_p", top_p), ("random_seed", seed)):
        if value is not None:
            inputs.append(_input(protocol, name, np.full((len(prompts), 1), value, dtype=OPTIONAL_DTYPES[name])))
    res = c.infer(model, inputs)
    return [t.decode() for t in res.as_numpy("OUTPUT_0").reshape(-1)]


def gptj_inputs(protocol: str, prompts: Sequence[Sequence[int]], output_len: int, end_id: int = 50256,
                **optional) -> list:
    """The inputs of one request to the `gptj` model (FT's names); `optional` adds e.g.
    runtime_top_k=8 (UINT32), runtime_top_p=0.9 / temperature=1.0 (FP32), random_seed=1 (UINT64), one per row."""
    b, n = len(prompts), max(len(p) for p in prompts)
    ids = np.full((b, n), end_id, dtype=np.uint32)
    for i, p in enumerate(prompts):
        ids[i, :len(p)] = p
    inputs = [_input(protocol, "input_ids", ids),
              _input(protocol, "input_lengths", np.array([[len(p)] for p in prompts], dtype=np.uint32)),
              _input(protocol, "request_output_len", np.full((b, 1), output_len, dtype=np.uint32))]
    for name, value in optional.items():
        inputs.append(_input(protocol, name, np.full((b, 1), value, dtype=OPTIONAL_DTYPES[name])))
    return inputs


OPTIONAL_DTYPES = {"runtime_top_k": np.uint32, "runtime_top_p": np.float32, "temperature": np.float32,
                   "random_seed": np.uint64, "beam_width": np.uint32, "len_penalty": np.float32}


def gptj_ids(c, protocol: str, prompts: Sequence[Sequence[int]], output_len: int, end_id: int = 50256):
    """FT's interface of the model itself: ids in, (output_ids [b, 1, T], sequence_length [b, 1]) out."""
    res = c.infer("gptj", gptj_inputs(protocol, prompts, output_len, end_id))
    return res.as_numpy("output_ids"), res.as_numpy("sequence_length")


def text_inputs(protocol: str, prompts: Sequence, output_len: int) -> list:
    """The inputs of one ensemble request: prompts as str (UTF-8) or raw bytes."""
    raw = [[p if isinstance(p, bytes) else p.encode()] for p in prompts]
    return [_input(protocol, "INPUT_0", np.array(raw, dtype=object)),
            _input(protocol, "INPUT_1", np.full((len(prompts), 1), output_len, dtype=np.uint32))]


def concurrent_infer(url: str, model: str, requests: Sequence[list]) -> List[dict]:
    """Send HTTP requests (lists of tritonclient.http inputs) at the same moment - one thread and one open
    connection each, released together - so that the dynamic batcher can put them into one execution;
    per request {"ok", "status", "error", "result"}."""
    from tritonclient.utils import InferenceServerException
    out: List[dict] = [{} for _ in requests]
    go = threading.Barrier(len(requests), timeout=120)

    def send(i):
        c = client(url, "http")   # a tritonclient.http client belongs to the thread that made it (gevent)
        try:
            c.is_server_live()    # connected before the barrier
            go.wait()
            out[i] = {"ok": True, "status": "200", "error": "", "result": c.infer(model, requests[i])}
        except InferenceServerException as exc:
            out[i] = {"ok": False, "status": str(exc.status()), "error": exc.message(), "result": None}
        except Exception as exc:   # no connection, or another sender failed before the barrier
            go.abort()
            out[i] = {"ok": False, "status": "", "error": f"{type(exc).__name__}: {exc}", "result": None}
        finally:
            c.close()

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(requests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def t5_request(c, protocol: str, token_ids: Sequence[Sequence[int]], max_output_len: int, beam_width: int = 1):
    """The blog's T5 request: the client tokenizes, the server runs the model with FT's input names."""
    b, n = len(token_ids), max(len(t) for t in token_ids)
    ids = np.zeros((b, n), dtype=np.uint32)
    for i, t in enumerate(token_ids):
        ids[i, :len(t)] = t
    inputs = [_input(protocol, "input_ids", ids),
              _input(protocol, "sequence_length", np.array([[len(t)] for t in token_ids], dtype=np.uint32)),
              _input(protocol, "max_output_len", np.full((b, 1), max_output_len, dtype=np.uint32))]
    if beam_width != 1:
        inputs.append(_input(protocol, "beam_width", np.full((b, 1), beam_width, dtype=np.uint32)))
    res = c.infer("t5", inputs)
    return res.as_numpy("output_ids"), res.as_numpy("sequence_length"), res.as_numpy("cum_log_probs")


def malformed_requests(c, protocol: str, limit: int, vocab: int = 50400, max_input_len: int = 224) -> "object":
    """Send bad requests, each on its own; every one must fail with a one-line client error (HTTP 400 / gRPC
    INVALID_ARGUMENT) naming what is wrong, while the server stays ready. `limit` is the model's max_output_len."""
    import pandas as pd
    from tritonclient.utils import InferenceServerException
    ok = [464, 3139, 286, 8031, 318]
    g = lambda **kw: ("gptj", gptj_inputs(protocol, [kw.pop("ids", ok)], kw.pop("n", 4), **kw))
    t = lambda prompt, n=4: ("ensemble", text_inputs(protocol, [prompt], n))
    cases = {
        "wrong dtype (input_ids INT32)": ("gptj", [
            _input(protocol, "input_ids", np.array([ok], dtype=np.int32)),
            _input(protocol, "input_lengths", np.array([[5]], dtype=np.uint32)),
            _input(protocol, "request_output_len", np.array([[4]], dtype=np.uint32))]),
        "wrong shape (input_lengths [1, 2])": ("gptj", [
            _input(protocol, "input_ids", np.array([ok], dtype=np.uint32)),
            _input(protocol, "input_lengths", np.array([[5, 5]], dtype=np.uint32)),
            _input(protocol, "request_output_len", np.array([[4]], dtype=np.uint32))]),
        "empty prompt": t(""),
        "prompt not UTF-8": t(b"\xff\xfe Hello"),
        f"prompt over max_input_len ({max_input_len + 76} tokens)": t(" hello" * (max_input_len + 76)),
        "prompt of 1 MB": t("a" * 2 ** 20),
        "output length 0": t("Hello world", 0),
        f"output length over the limit ({limit * 100})": t("Hello world", limit * 100),
        "output length 2**32 - 1": t("Hello world", 2 ** 32 - 1),
        "token id outside the vocabulary": g(ids=[464, vocab + 7]),
        "input_lengths 0": ("gptj", [_input(protocol, "input_ids", np.array([ok], dtype=np.uint32)),
                                     _input(protocol, "input_lengths", np.array([[0]], dtype=np.uint32)),
                                     _input(protocol, "request_output_len", np.array([[4]], dtype=np.uint32))]),
        "100k-token prompt (ids)": g(ids=[464] * 100_000),
        "runtime_top_k 1e9": g(runtime_top_k=10 ** 9),
        "runtime_top_p NaN": g(runtime_top_p=float("nan")),
        "runtime_top_p 5": g(runtime_top_p=5.0),
        "runtime_top_p -1": g(runtime_top_p=-1.0),
        "temperature 0": g(temperature=0.0),
    }
    rows = []
    for case, (model, inputs) in cases.items():
        try:
            c.infer(model, inputs)
            msg, status, failed = "(no error)", "", False
        except InferenceServerException as exc:
            msg, status, failed = exc.message(), str(exc.status()), True
        rows.append({"request": case, "model": model, "rejected": failed, "status": status, "error": msg,
                     "one line": "\n" not in msg and "Traceback" not in msg,
                     "server ready after": bool(c.is_server_ready())})
    return pd.DataFrame(rows).set_index("request")


def client_error(status: str) -> bool:
    """An HTTP 4xx or gRPC INVALID_ARGUMENT status (as tritonclient reports it)."""
    return status.startswith("4") or status.endswith("INVALID_ARGUMENT")


def closed_loop(url: str, protocol: str, concurrency: int, requests: int, send, progress=None,
                desc: str = "load run") -> dict:
    """`requests` calls of `send(client, i)` from `concurrency` threads, each with its own client, one request
    after another. Returns the latencies (s) and `send`'s results of the successful requests, the first errors,
    the failure count and the wall time."""
    lat, results, errors = [], [], []
    lock = threading.Lock()
    counter = iter(range(requests))
    bar = progress(total=requests, desc=desc) if progress else None

    def work():
        c = client(url, protocol)
        try:
            while True:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                t0 = time.perf_counter()
                try:
                    out = send(c, i)
                    with lock:
                        lat.append(time.perf_counter() - t0)
                        results.append(out)
                except Exception as exc:  # noqa: BLE001 - counted and reported
                    with lock:
                        errors.append(f"{type(exc).__name__}: {exc}")
                if bar:
                    bar.update(1)
        finally:
            c.close()

    t0 = time.perf_counter()
    threads = [threading.Thread(target=work) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if bar:
        bar.close()
    return {"latencies_s": lat, "results": results, "errors": errors[:3], "failed": len(errors), "wall_s": wall}


def latency_ms(latencies_s: Sequence[float]) -> np.ndarray:
    """Latencies in ms for percentiles (NaN where nothing succeeded)."""
    return np.array(latencies_s) * 1e3 if len(latencies_s) else np.array([float("nan")])


def load_run(url: str, prompts: Sequence[str], output_len: int, concurrency: int = 4, requests: int = 32,
             protocol: str = "http", progress=None) -> dict:
    """`requests` ensemble requests from `concurrency` threads (each with its own client); latency
    percentiles, throughput and failures."""
    run = closed_loop(url, protocol, concurrency, requests, progress=progress,
                      send=lambda c, i: gptj_text(c, protocol, [prompts[i % len(prompts)]], output_len))
    a = latency_ms(run["latencies_s"])
    return {"requests": requests, "concurrency": concurrency, "failed": run["failed"], "errors": run["errors"],
            "p50_ms": float(np.percentile(a, 50)), "p90_ms": float(np.percentile(a, 90)),
            "p99_ms": float(np.percentile(a, 99)), "throughput_rps": len(run["latencies_s"]) / run["wall_s"],
            "wall_s": run["wall_s"]}


def batching_stats(c, model: str) -> dict:
    """Inference count vs execution count: > 1 request per execution means dynamic batching merged them."""
    st = c.get_inference_statistics(model)
    s = st["model_stats"][0] if isinstance(st, dict) else st.model_stats[0]
    get = (lambda k: s[k]) if isinstance(s, dict) else (lambda k: getattr(s, k))
    inf, exe = int(get("inference_count")), int(get("execution_count"))
    return {"model": model, "inference_count": inf, "execution_count": exe,
            "requests_per_execution": inf / exe if exe else float("nan")}


def _model_time(c, model: str):
    st = c.get_inference_statistics(model)
    s = st["model_stats"][0]["inference_stats"] if isinstance(st, dict) else None
    if s is None:  # gRPC answers a protobuf
        s = st.model_stats[0].inference_stats
        ns = s.compute_input.ns + s.compute_infer.ns + s.compute_output.ns
        return ns, s.success.count
    return s["compute_input"]["ns"] + s["compute_infer"]["ns"] + s["compute_output"]["ns"], s["success"]["count"]


def _settled_model_time(c, model: str, expect: Optional[int] = None, timeout: float = 30.0, quiet: float = 0.5):
    """The model's (compute ns, success count) once its statistics cover every request answered so far.

    The python backend sends a request's response before it reports the request's statistics (python_backend
    src/python_be.cc, ProcessRequests: InferResponse::Send in the loop; PbMetricReporter reports in its
    destructor, when ProcessRequests returns), so a client that has its answer can read a count without it.
    With `expect`, wait for that count (more means other clients used the model: an error); without it,
    wait until the count has not changed for `quiet` seconds."""
    deadline, last, since = time.monotonic() + timeout, None, time.monotonic()
    while True:
        ns, n = _model_time(c, model)
        if expect is not None and n > expect:
            raise RuntimeError(f"{model} served {n - expect} request(s) from another client during the measurement")
        if n == expect or (expect is None and n == last and time.monotonic() - since >= quiet):
            return ns, n
        if n != last:
            last, since = n, time.monotonic()
        if time.monotonic() > deadline:
            raise RuntimeError(f"{model}'s statistics count {n} requests, {expect} expected, after {timeout:g} s")
        time.sleep(0.01)


def served_overhead(c, protocol: str, prompt: Sequence[int], output_len: int, repeat: int = 7) -> dict:
    """Triton's own cost per request: the client's latency minus the time the server spent inside the
    model (its compute_input + compute_infer + compute_output statistics over exactly these requests)."""
    _, n = _settled_model_time(c, "gptj")
    gptj_ids(c, protocol, [prompt], output_len)  # warm
    ns0, n0 = _settled_model_time(c, "gptj", n + 1)
    lat = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        gptj_ids(c, protocol, [prompt], output_len)
        lat.append(time.perf_counter() - t0)
    ns1, n1 = _settled_model_time(c, "gptj", n0 + repeat)
    client_ms = float(np.mean(lat)) * 1e3
    model_ms = (ns1 - ns0) / repeat / 1e6
    return {"client_ms": client_ms, "model_ms": model_ms, "overhead_ms": client_ms - model_ms,
            "overhead_fraction": (client_ms - model_ms) / model_ms, "requests": repeat}
