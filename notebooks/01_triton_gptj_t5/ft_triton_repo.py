"""A Triton model repository written by code (never edited by hand), and the real tritonserver binary.

Repository (FasterTransformer-backend style):
    preprocessing/   python backend: INPUT_0 (text) -> input_ids, input_lengths (the real GPT-2 BPE)
    gptj/            python backend running ft_runtime_gptj on the FT checkpoint; parameters
                     tensor_para_size, model_checkpoint_path, data_type, max_output_len, gemm_config, device;
                     FT's input names: input_ids, input_lengths, request_output_len, runtime_top_k, ...
    postprocessing/  python backend: output_ids + sequence_length -> OUTPUT_0 (text)
    ensemble/        platform "ensemble": preprocessing -> gptj -> postprocessing
    t5/              python backend running ft_runtime_t5; FT's T5 input names; tokenization on the client
Each python model's version folder gets copies of the ft_*.py modules it imports, so the repository is
self-contained (the python-backend stub ignores PYTHONPATH).

Every python model checks each request on its own before any work (sizes, lengths, token ids, sampling
parameters): bad input gets its own one-line 400, the rest of the dynamic batch is served.

The server: the `tritonserver` binary that the PyPI wheel nvidia-pytriton bundles (Triton 2.51, python
backend only), copied to a writable folder with the python-backend stub for this Python version; run by
`TritonServer` (a labkit ManagedProcess: own process group, loopback only, readiness poll) with restricted
admin APIs, a watchdog that reloads a model whose stub or rank died (or restarts a server that exited), and a
stop that drains first and leaves no process and no /dev/shm region behind; optionally ft_gate's reverse proxy
beside it (`triton_server(..., gate={})`, `.urls["gate"]`): body size limit, JSON checks, allowed routes only.
"""
from __future__ import annotations

import glob
import logging
import os
import secrets
import shutil
import sys
import sysconfig
import textwrap
import threading
import time
from pathlib import Path
from typing import Optional

from labkit.procs import ManagedProcess, free_port, http_ready, remove_if_owner_dies

HERE = Path(__file__).resolve().parent
log = logging.getLogger(__name__)
RUNTIME_ENTRY = ["ft_convert.py", "ft_runtime_gptj.py", "ft_runtime_t5.py", "ft_gemm.py"]   # what model.py imports


def runtime_modules(entry=RUNTIME_ENTRY) -> list:
    """`entry` and every ft_*.py of this folder they import at module level, transitively (read from their import
    statements), so that a module a runtime starts to import is copied into the repository without a list kept by
    hand. (Imports inside functions are not followed: those run only when the function is called.)"""
    import ast
    todo, seen = list(entry), []
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.append(name)
        for node in ast.parse((HERE / name).read_text()).body:
            mods = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else []
            todo += [f"{m}.py" for m in mods if m.startswith("ft_") and (HERE / f"{m}.py").exists()]
    return sorted(seen)


# ---------------------------------------------------------------- config.pbtxt writers

def _tensor(name, dtype, dims, optional=False, ragged=False) -> str:
    extra = (" optional: true" if optional else "") + (" allow_ragged_batch: true" if ragged else "")
    return f'  {{ name: "{name}" data_type: {dtype} dims: [ {", ".join(str(d) for d in dims)} ]{extra} }}'


def _params(params: dict) -> str:
    return "\n".join(f'parameters {{ key: "{k}" value: {{ string_value: "{v}" }} }}' for k, v in params.items())


def python_config(name: str, inputs, outputs, max_batch_size: int, params: Optional[dict] = None,
                  kind: str = "KIND_CPU", dynamic_batching: bool = True, queue_delay_us: int = 5000) -> str:
    text = f'name: "{name}"\nbackend: "python"\nmax_batch_size: {max_batch_size}\n'
    text += "input [\n" + ",\n".join(_tensor(*i) for i in inputs) + "\n]\n"
    text += "output [\n" + ",\n".join(_tensor(*o) for o in outputs) + "\n]\n"
    text += f"instance_group [ {{ count: 1 kind: {kind} }} ]\n"
    if dynamic_batching:
        text += f"dynamic_batching {{ max_queue_delay_microseconds: {queue_delay_us} }}\n"
    if params:
        text += _params(params) + "\n"
    return text


GPTJ_INPUTS = [("input_ids", "TYPE_UINT32", [-1], False, True), ("input_lengths", "TYPE_UINT32", [1]),
               ("request_output_len", "TYPE_UINT32", [-1]), ("runtime_top_k", "TYPE_UINT32", [1], True),
               ("runtime_top_p", "TYPE_FP32", [1], True), ("temperature", "TYPE_FP32", [1], True),
               ("random_seed", "TYPE_UINT64", [1], True), ("beam_width", "TYPE_UINT32", [1], True)]
GPTJ_OUTPUTS = [("output_ids", "TYPE_UINT32", [-1, -1]), ("sequence_length", "TYPE_UINT32", [-1])]
T5_INPUTS = [("input_ids", "TYPE_UINT32", [-1], False, True), ("sequence_length", "TYPE_UINT32", [1]),
             ("max_output_len", "TYPE_UINT32", [1]), ("beam_width", "TYPE_UINT32", [1], True),
             ("runtime_top_k", "TYPE_UINT32", [1], True), ("runtime_top_p", "TYPE_FP32", [1], True),
             ("temperature", "TYPE_FP32", [1], True), ("len_penalty", "TYPE_FP32", [1], True),
             ("random_seed", "TYPE_UINT64", [1], True)]
T5_OUTPUTS = [("output_ids", "TYPE_UINT32", [-1, -1]), ("sequence_length", "TYPE_UINT32", [-1]),
              ("cum_log_probs", "TYPE_FP32", [-1])]


def ensemble_config(max_batch_size: int) -> str:
    return textwrap.dedent(f'''\
        name: "ensemble"
        platform: "ensemble"
        max_batch_size: {max_batch_size}
        input [
          {{ name: "INPUT_0" data_type: TYPE_STRING dims: [ 1 ] }},
          {{ name: "INPUT_1" data_type: TYPE_UINT32 dims: [ 1 ] }},
          {{ name: "runtime_top_k" data_type: TYPE_UINT32 dims: [ 1 ] optional: true }},
          {{ name: "runtime_top_p" data_type: TYPE_FP32 dims: [ 1 ] optional: true }},
          {{ name: "random_seed" data_type: TYPE_UINT64 dims: [ 1 ] optional: true }}
        ]
        output [ {{ name: "OUTPUT_0" data_type: TYPE_STRING dims: [ 1 ] }} ]
        ensemble_scheduling {{
          step [
            {{
              model_name: "preprocessing"
              model_version: -1
              input_map {{ key: "QUERY" value: "INPUT_0" }}
              input_map {{ key: "REQUEST_OUTPUT_LEN" value: "INPUT_1" }}
              output_map {{ key: "INPUT_ID" value: "_input_ids" }}
              output_map {{ key: "REQUEST_INPUT_LEN" value: "_input_lengths" }}
              output_map {{ key: "REQUEST_OUTPUT_LEN_OUT" value: "_request_output_len" }}
            }},
            {{
              model_name: "gptj"
              model_version: -1
              input_map {{ key: "input_ids" value: "_input_ids" }}
              input_map {{ key: "input_lengths" value: "_input_lengths" }}
              input_map {{ key: "request_output_len" value: "_request_output_len" }}
              input_map {{ key: "runtime_top_k" value: "runtime_top_k" }}
              input_map {{ key: "runtime_top_p" value: "runtime_top_p" }}
              input_map {{ key: "random_seed" value: "random_seed" }}
              output_map {{ key: "output_ids" value: "_output_ids" }}
              output_map {{ key: "sequence_length" value: "_sequence_length" }}
            }},
            {{
              model_name: "postprocessing"
              model_version: -1
              input_map {{ key: "TOKENS_BATCH" value: "_output_ids" }}
              input_map {{ key: "sequence_length" value: "_sequence_length" }}
              output_map {{ key: "OUTPUT" value: "OUTPUT_0" }}
            }}
          ]
        }}
        ''')


# ---------------------------------------------------------------- model.py sources

# Written next to every python model as ft_serving.py. One response per request, each with its own error, as
# triton-inference-server/python_backend README.md describes ("Error Handling": pb_utils.TritonError(message,
# code)); src/pb_stub.cc binds the codes to TRITONSERVER_ERROR_INVALID_ARG, _UNAVAILABLE, _INTERNAL, ...
# (c_python_backend_utils.TritonError). Triton's HTTP front end answers INVALID_ARG with 400 and UNAVAILABLE
# with 503 (server src/http_server.cc, HttpCodeFromError); gRPC with INVALID_ARGUMENT / UNAVAILABLE.
SERVING_PY = '''\
"""Errors and request checks shared by the generated python models (generated by ft_triton_repo; do not edit).

User errors -> INVALID_ARG (HTTP 400, gRPC INVALID_ARGUMENT), one line. A model that cannot answer right now
(a tensor-parallel rank died or hung) -> UNAVAILABLE (503). Anything else is logged with its traceback in the
server log and answered with a short INTERNAL message: no traceback or file path goes to the client."""
import traceback

import numpy as np
import triton_python_backend_utils as pb_utils


class BadRequest(ValueError):
    """The request is wrong (400)."""


class Unavailable(RuntimeError):
    """The model cannot answer now (503); the server's watchdog restarts it."""


def error_response(model, exc):
    if isinstance(exc, BadRequest):
        return pb_utils.InferenceResponse(error=pb_utils.TritonError(f"{model}: {exc}", pb_utils.TritonError.INVALID_ARG))
    if isinstance(exc, Unavailable):
        return pb_utils.InferenceResponse(error=pb_utils.TritonError(f"{model}: {exc}", pb_utils.TritonError.UNAVAILABLE))
    detail = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    pb_utils.Logger.log_error(f"{model}: unexpected error\\n{detail}")
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(
        f"{model}: internal error ({type(exc).__name__}); the server log has the details", pb_utils.TritonError.INTERNAL))


def one_value(req, name, default, cast):
    """An optional per-request parameter ([rows, 1] in FT's interface): finite, and the same on every row."""
    t = pb_utils.get_input_tensor_by_name(req, name)
    if t is None:
        return default
    a = t.as_numpy().reshape(-1)
    if a.size == 0:
        raise BadRequest(f"{name} is empty")
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        raise BadRequest(f"{name}={a[~np.isfinite(a)][0]} is not a finite number")
    if (a != a[0]).any():
        raise BadRequest(f"{name} must be the same on every row of a request (send different values as separate requests)")
    return cast(a[0])


def in_range(name, value, lo, hi):
    if not lo <= value <= hi:
        raise BadRequest(f"{name}={value} is outside {lo}..{hi}")
    return value
'''

PREPROCESSING_PY = '''\
"""Triton python-backend model: text -> GPT-2 BPE ids (generated by ft_triton_repo; do not edit).
Each request is checked on its own, and its size before it is decoded or tokenized."""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

import numpy as np
import triton_python_backend_utils as pb_utils
from tokenizers import Tokenizer

from ft_serving import BadRequest, error_response, in_range


class TritonPythonModel:
    def initialize(self, args):
        self.tok = Tokenizer.from_file(os.path.join(os.path.dirname(__file__), "tokenizer.json"))
        p = {k: v["string_value"] for k, v in json.loads(args["model_config"]).get("parameters", {}).items()}
        self.max_bytes, self.max_tokens = int(p["max_prompt_bytes"]), int(p["max_input_len"])
        self.max_out = int(p["max_output_len"])

    def _one(self, req):
        texts = pb_utils.get_input_tensor_by_name(req, "QUERY").as_numpy().reshape(-1)
        out_len = pb_utils.get_input_tensor_by_name(req, "REQUEST_OUTPUT_LEN").as_numpy().reshape(-1, 1)
        for n in out_len.reshape(-1):
            in_range("INPUT_1 (output length)", int(n), 1, self.max_out)
        ids = []
        for i, t in enumerate(texts):
            raw = t if isinstance(t, bytes) else str(t).encode("utf-8")
            if len(raw) > self.max_bytes:   # before decoding or tokenizing anything
                raise BadRequest(f"prompt {i} is {len(raw)} bytes; the limit is {self.max_bytes} (max_prompt_bytes)")
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise BadRequest(f"prompt {i} is not valid UTF-8 (byte {raw[e.start]:#04x} at offset {e.start})") from None
            if not text.strip():
                raise BadRequest("empty prompt; INPUT_0 must hold some text")
            x = self.tok.encode(text).ids
            if len(x) > self.max_tokens:
                raise BadRequest(f"prompt {i} is {len(x)} tokens; the limit is {self.max_tokens} (max_input_len)")
            ids.append(x)
        n = max(len(x) for x in ids)
        arr = np.full((len(ids), n), 50256, dtype=np.uint32)
        for i, x in enumerate(ids):
            arr[i, :len(x)] = x
        lens = np.array([[len(x)] for x in ids], dtype=np.uint32)
        return pb_utils.InferenceResponse(output_tensors=[
            pb_utils.Tensor("INPUT_ID", arr), pb_utils.Tensor("REQUEST_INPUT_LEN", lens),
            pb_utils.Tensor("REQUEST_OUTPUT_LEN_OUT", out_len.astype(np.uint32))])

    def execute(self, requests):
        responses = []
        for req in requests:
            try:
                responses.append(self._one(req))
            except Exception as exc:
                responses.append(error_response("preprocessing", exc))
        return responses
'''

POSTPROCESSING_PY = '''\
"""Triton python-backend model: GPT-2 BPE ids -> text (generated by ft_triton_repo; do not edit)."""
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

import numpy as np
import triton_python_backend_utils as pb_utils
from tokenizers import Tokenizer

from ft_serving import error_response


class TritonPythonModel:
    def initialize(self, args):
        self.tok = Tokenizer.from_file(os.path.join(os.path.dirname(__file__), "tokenizer.json"))

    def _one(self, req):
        ids = pb_utils.get_input_tensor_by_name(req, "TOKENS_BATCH").as_numpy()
        lens = pb_utils.get_input_tensor_by_name(req, "sequence_length").as_numpy()
        texts = [self.tok.decode([int(t) for t in row[:int(n)] if int(t) != 50256]).encode("utf-8")
                 for row, n in zip(ids[:, 0], lens[:, 0])]
        return pb_utils.InferenceResponse(output_tensors=[
            pb_utils.Tensor("OUTPUT", np.array(texts, dtype=object).reshape(-1, 1))])

    def execute(self, requests):
        responses = []
        for req in requests:
            try:
                responses.append(self._one(req))
            except Exception as exc:
                responses.append(error_response("postprocessing", exc))
        return responses
'''

MODEL_PY = '''\
"""Triton python-backend model running the project's {kind} runtime (generated by ft_triton_repo; do not edit).

Every request is checked on its own (shapes, lengths, token ids, sampling parameters) before anything runs:
a bad one gets its own 400 and the others in the dynamic batch are served. Valid requests that share their
sampling parameters run as one batch; should that batch still fail unexpectedly, each request is retried
alone, so only the culprit fails. With tensor_para_size > 1 the ranks are watched during every call: a rank
that dies, or a call that takes longer than rank_timeout_s, stops all ranks and answers 503 at once (the
server's watchdog then reloads the model) instead of hanging.
"""
import configparser
import json
import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(__file__))

import numpy as np
import torch
import triton_python_backend_utils as pb_utils

import ft_gemm
from ft_runtime_common import RankFailure, TPEngine
from ft_serving import BadRequest, Unavailable, error_response, in_range, one_value

KIND = "{kind}"
MAX_TOP_K = 1024   # FT's TopKSamplingLayer supports top_k up to 1024 (it clips larger values; we refuse them)


class TritonPythonModel:
    def initialize(self, args):
        cfg = json.loads(args["model_config"])
        p = {{k: v["string_value"] for k, v in cfg.get("parameters", {{}}).items()}}
        self.tp = int(p.get("tensor_para_size", "1"))
        if int(p.get("pipeline_para_size", "1")) != 1:
            raise pb_utils.TritonModelException("pipeline_para_size must be 1 in this runtime")
        self.max_output_len = int(p.get("max_output_len", "64"))
        self.max_batch = int(cfg.get("max_batch_size", 8)) or 1
        self.max_seq_len = int(p.get("max_seq_len", "256"))
        self.max_input_len = int(p.get("max_input_len", "512"))
        self.rank_timeout = float(p.get("rank_timeout_s", "60"))
        ckpt = p["model_checkpoint_path"]
        ini = configparser.ConfigParser()
        ini.read(os.path.join(ckpt, "config.ini"))
        self.vocab = int(ini["gptj" if KIND == "gptj" else "encoder"]["vocab_size"])
        dtype, device = p.get("data_type", "fp32"), p.get("device", "cpu")
        torch.set_num_threads(int(p.get("num_threads", "1")))
        plan = ft_gemm.plan_from_config(p["gemm_config"]) if p.get("gemm_config") else None
        graph = device.startswith("cuda") and p.get("cuda_graph", "1") == "1"
        if KIND == "gptj":
            import ft_runtime_gptj as rt
            fac = rt.factory(ckpt, dtype, device, plan, self.max_batch, self.max_seq_len, graph)
        else:
            import ft_runtime_t5 as rt
            fac = rt.factory(ckpt, dtype, device, plan, self.max_batch * 4, self.max_output_len, graph)
        self.broken = None
        if self.tp == 1:
            from ft_runtime_common import TP
            self.rt, self.engine = fac(0, 1, TP()), None
        else:
            # the engine hosts the ranks' rendezvous in this process, on 127.0.0.1 only (ft_runtime_common.loopback_store)
            self.rt, self.engine = None, TPEngine(fac, self.tp, device=device)
        if p.get("warmup", "0") == "1":  # compile + capture the batch-1 decode step before the server is READY
            self._call("generate", input_ids=[[1, 2, 3, 4]], max_new_tokens=2)

    # ------------------------------------------------------------ the tensor-parallel ranks, watched

    def _dead_ranks(self):
        return [(r, p.exitcode) for r, p in enumerate(self.engine.procs) if not p.is_alive()]

    def _fail(self, why, worker=None):
        """Stop every rank (a blocked receive then ends), remember why, answer 503 from now on."""
        for p in self.engine.procs:
            if p.is_alive():
                p.kill()
        if worker is not None:
            worker.join(10)
        self.broken = why + "; the model is being restarted"
        pb_utils.Logger.log_error(f"{{KIND}}: {{self.broken}}")
        raise Unavailable(self.broken)

    def _call(self, method, **kw):
        if self.engine is None:
            return getattr(self.rt, method)(**kw)
        if self.broken:
            raise Unavailable(self.broken)
        if self._dead_ranks():
            self._fail(f"tensor-parallel ranks exited (rank, exit code): {{self._dead_ranks()}}")
        box = {{}}

        def run():
            try:
                box["out"] = self.engine.call(method, **kw)
            except BaseException as exc:
                box["exc"] = exc

        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        deadline = time.monotonic() + self.rank_timeout
        while worker.is_alive():
            worker.join(0.1)
            if worker.is_alive() and self._dead_ranks():
                self._fail(f"tensor-parallel ranks exited during {{method}} (rank, exit code): {{self._dead_ranks()}}", worker)
            if worker.is_alive() and time.monotonic() > deadline:
                self._fail(f"the tensor-parallel ranks did not finish {{method}} within rank_timeout_s={{self.rank_timeout:g}}", worker)
        if "exc" in box:
            if isinstance(box["exc"], RankFailure):   # a rank died or a collective failed: one line, names the rank
                self._fail(str(box["exc"]))
            if self._dead_ranks():
                self._fail(f"lost a tensor-parallel rank during {{method}} ({{type(box['exc']).__name__}}; "
                           f"exited: {{self._dead_ranks()}})")
            raise box["exc"]
        return box["out"]

    # ------------------------------------------------------------ requests

    def _parse(self, req):
        len_name, out_name = ("input_lengths", "request_output_len") if KIND == "gptj" else ("sequence_length", "max_output_len")
        ids = pb_utils.get_input_tensor_by_name(req, "input_ids").as_numpy()
        lens = pb_utils.get_input_tensor_by_name(req, len_name).as_numpy().reshape(-1)
        if ids.ndim != 2 or len(lens) != ids.shape[0]:
            raise BadRequest(f"input_ids must be [batch, tokens] with one {{len_name}} per row")
        out_len = in_range(out_name, one_value(req, out_name, None, int), 1, self.max_output_len)
        prompts = []
        for r, n in enumerate(lens):
            n = int(n)
            if not 1 <= n <= ids.shape[1]:
                raise BadRequest(f"{{len_name}}={{n}} does not fit input_ids of {{ids.shape[1]}} tokens (0 is an empty prompt)")
            if n > self.max_input_len:
                raise BadRequest(f"prompt {{r}} is {{n}} tokens; the limit is {{self.max_input_len}} (max_input_len)")
            row = ids[r, :n]
            if (row >= self.vocab).any():
                raise BadRequest(f"token id {{int(row[row >= self.vocab][0])}} is outside the vocabulary (0..{{self.vocab - 1}})")
            if KIND == "gptj" and n + out_len > self.max_seq_len:
                raise BadRequest(f"prompt ({{n}} tokens) + {{out_name}} ({{out_len}}) exceeds max_seq_len={{self.max_seq_len}}")
            prompts.append(row.astype(np.int64).tolist())
        top_k = in_range("runtime_top_k", one_value(req, "runtime_top_k", 1, int), 0, MAX_TOP_K)
        top_p = in_range("runtime_top_p", one_value(req, "runtime_top_p", 0.0, float), 0.0, 1.0)
        temp = one_value(req, "temperature", 1.0, float)
        if temp <= 0:
            raise BadRequest(f"temperature={{temp}} must be > 0")
        beam = in_range("beam_width", one_value(req, "beam_width", 1, int), 1, 1 if KIND == "gptj" else 4)
        lp = one_value(req, "len_penalty", 1.0, float)
        params = (top_k, round(top_p, 6), round(temp, 6), one_value(req, "random_seed", None, int), beam, round(lp, 6))
        return prompts, out_len, params

    def _generate(self, params, items):
        """One runtime call for requests sharing `params`; the output tensors of each request."""
        top_k, top_p, temp, seed, beam, lp = params
        prompts = [p for _, ps, _ in items for p in ps]
        out_len = max(n for _, _, n in items)
        if KIND == "gptj":
            toks, lens = self._call("generate", input_ids=prompts, max_new_tokens=out_len, top_k=top_k,
                                    top_p=top_p, temperature=temp, seed=seed)
            toks, lens, cum = toks[:, None], lens[:, None], None
        else:
            toks, lens, cum = self._call("generate", input_ids=prompts, max_new_tokens=out_len, beam_width=beam,
                                         top_k=top_k, top_p=top_p, temperature=temp, seed=seed, len_penalty=lp)
        row, result = 0, []
        for _, ps, n in items:
            outs, seqlens = [], []
            for p in ps:
                gen = toks[row, :, :n].numpy()
                gl = np.minimum(lens[row].numpy(), n)
                if KIND == "gptj":  # FT's GPT-J returns prompt + generated ids
                    outs.append(np.concatenate([np.tile(np.array(p)[None], (gen.shape[0], 1)), gen], axis=1))
                    seqlens.append(gl + len(p))
                else:
                    outs.append(gen)
                    seqlens.append(gl)
                row += 1
            T = max(o.shape[1] for o in outs)
            arr = np.zeros((len(outs), outs[0].shape[0], T), dtype=np.uint32)
            for j, o in enumerate(outs):
                arr[j, :, :o.shape[1]] = o
            tensors = [pb_utils.Tensor("output_ids", arr),
                       pb_utils.Tensor("sequence_length", np.stack(seqlens).astype(np.uint32))]
            if KIND == "t5":
                tensors.append(pb_utils.Tensor("cum_log_probs", cum[row - len(ps):row, :].numpy().astype(np.float32)))
            result.append(tensors)
        return result

    def execute(self, requests):
        responses = [None] * len(requests)
        groups = {{}}
        for i, req in enumerate(requests):
            try:
                prompts, out_len, params = self._parse(req)
                groups.setdefault(params, []).append((i, prompts, out_len))
            except Exception as exc:
                responses[i] = error_response(KIND, exc)
        for params, items in groups.items():
            try:
                outs = self._generate(params, items)
            except Unavailable as exc:
                outs = [exc] * len(items)
            except Exception:   # unexpected: answer each request alone so that only the culprit fails
                outs = []
                for item in items:
                    try:
                        outs.append(self._generate(params, [item])[0])
                    except Exception as exc:
                        outs.append(exc)
            for (i, _, _), out in zip(items, outs):
                responses[i] = error_response(KIND, out) if isinstance(out, Exception) else \\
                    pb_utils.InferenceResponse(output_tensors=out)
        return responses

    def finalize(self):
        if self.engine is not None:
            self.engine.close()
'''


def build_repository(root: Path, gptj_ckpt: Path, t5_ckpt: Optional[Path], tokenizer_json: Path,
                     tensor_para_size: int = 1, t5_tensor_para_size: int = 1, data_type: str = "fp32",
                     device: str = "cpu", max_batch_size: int = 8, max_output_len: int = 32,
                     gemm_config: Optional[Path] = None, num_threads: int = 1, gptj_params: Optional[dict] = None,
                     max_input_len: Optional[int] = None, max_prompt_bytes: Optional[int] = None,
                     rank_timeout_s: float = 60.0, queue_delay_us: int = 5000) -> Path:
    """Write the whole model repository under `root` (replacing it) and return `root`. Without `t5_ckpt`
    the repository holds the GPT-J models only; `gptj_params` adds parameters to gptj's config
    (e.g. warmup=1, max_seq_len; default max_seq_len 256).

    Request limits, checked per request before any work: prompts of at most `max_input_len` tokens (default
    max_seq_len - max_output_len) and `max_prompt_bytes` bytes of text (default 64 per token of
    max_input_len, checked before decoding or tokenizing). `rank_timeout_s` bounds one call to the
    tensor-parallel ranks; `queue_delay_us` is the dynamic batcher's wait for more requests."""
    root = Path(root)
    if root.exists():
        shutil.rmtree(root)
    kind = "KIND_GPU" if device.startswith("cuda") else "KIND_CPU"
    max_seq_len = int((gptj_params or {}).get("max_seq_len", 256))
    max_input_len = max_input_len or max_seq_len - max_output_len
    if max_input_len < 1:
        raise ValueError(f"max_input_len={max_input_len}: max_seq_len ({max_seq_len}) must exceed max_output_len "
                         f"({max_output_len})")
    limits = {"max_output_len": max_output_len, "max_input_len": max_input_len,
              "max_prompt_bytes": max_prompt_bytes or 64 * max_input_len}

    def model(name, config, source, files=()):
        d = root / name / "1"
        d.mkdir(parents=True)
        (root / name / "config.pbtxt").write_text(config)
        if source is not None:
            (d / "model.py").write_text(source)
            (d / "ft_serving.py").write_text(SERVING_PY)
        for f in files:
            shutil.copy(f, d / Path(f).name)

    model("preprocessing", python_config("preprocessing", [("QUERY", "TYPE_STRING", [1]), ("REQUEST_OUTPUT_LEN", "TYPE_UINT32", [1])],
                                         [("INPUT_ID", "TYPE_UINT32", [-1]), ("REQUEST_INPUT_LEN", "TYPE_UINT32", [1]),
                                          ("REQUEST_OUTPUT_LEN_OUT", "TYPE_UINT32", [1])], max_batch_size, limits,
                                         dynamic_batching=False), PREPROCESSING_PY, [tokenizer_json])
    model("postprocessing", python_config("postprocessing", [("TOKENS_BATCH", "TYPE_UINT32", [-1, -1]),
                                                             ("sequence_length", "TYPE_UINT32", [-1])],
                                          [("OUTPUT", "TYPE_STRING", [1])], max_batch_size, dynamic_batching=False),
          POSTPROCESSING_PY, [tokenizer_json])
    common = dict(limits, pipeline_para_size=1, data_type=data_type, device=device, gemm_config=str(gemm_config or ""),
                  num_threads=num_threads, rank_timeout_s=rank_timeout_s)
    mods = [HERE / m for m in runtime_modules()]
    model("gptj", python_config("gptj", GPTJ_INPUTS, GPTJ_OUTPUTS, max_batch_size,
                                {**common, "tensor_para_size": tensor_para_size, "max_seq_len": max_seq_len,
                                 "model_checkpoint_path": Path(gptj_ckpt).resolve(), **(gptj_params or {})},
                                kind, queue_delay_us=queue_delay_us), MODEL_PY.format(kind="gptj"), mods)
    model("ensemble", ensemble_config(max_batch_size), None)
    (root / "ensemble" / "1").mkdir(exist_ok=True)
    if t5_ckpt is None:
        return root
    model("t5", python_config("t5", T5_INPUTS, T5_OUTPUTS, max_batch_size,
                              dict(common, tensor_para_size=t5_tensor_para_size, model_checkpoint_path=Path(t5_ckpt).resolve()),
                              kind, queue_delay_us=queue_delay_us), MODEL_PY.format(kind="t5"), mods)
    return root


# ---------------------------------------------------------------- the server binary

def pytriton_dir() -> Path:
    import importlib.util
    spec = importlib.util.find_spec("pytriton")
    if spec is None:
        raise RuntimeError("nvidia-pytriton is not installed: it carries the tritonserver binary this notebook runs "
                           "(pip install nvidia-pytriton==0.7.0). On an NGC container use /opt/tritonserver instead.")
    return Path(list(spec.submodule_search_locations)[0])


def server_home(cache: Path) -> Path:
    """A writable copy of the wheel's tritonserver folder with this Python's python-backend stub in place."""
    from ft_weights import _atomic_dir
    src = pytriton_dir() / "tritonserver"
    ver = f"{sys.version_info.major}.{sys.version_info.minor}"

    def build(tmp: Path) -> None:
        shutil.copytree(src, tmp, dirs_exist_ok=True)
        stub = src / "python_backend_stubs" / ver / "triton_python_backend_stub"
        if not stub.exists():
            raise RuntimeError(f"the wheel has no python-backend stub for Python {ver}")
        shutil.copy2(stub, tmp / "backends" / "python" / "triton_python_backend_stub")

    return _atomic_dir(Path(cache) / f"tritonserver-py{ver}", build)


def server_env(threads: int = 1) -> dict:
    """The server's environment: the wheel's libraries and Python's LIBDIR on LD_LIBRARY_PATH (a pyenv
    Python needs its own libpython), this venv's bin/ first on PATH (the stub runs the python3 it finds).
    $TRITON_PYTHON_BIN names another bin/ folder for the stub's python3: a venv of the same Python version
    with numpy < 2 (the bundled python backend breaks with numpy 2) where this one has numpy 2.
    (The tensor-parallel ranks keep to loopback by themselves: ft_runtime_common.join_group.)"""
    env = dict(os.environ)
    libs = [str(pytriton_dir().parent / "nvidia_pytriton.libs"), sysconfig.get_config_var("LIBDIR") or ""]
    env["LD_LIBRARY_PATH"] = ":".join([p for p in libs if p] + [env.get("LD_LIBRARY_PATH", "")]).rstrip(":")
    stub_bin = os.environ.get("TRITON_PYTHON_BIN") or str(Path(sys.executable).parent)
    env["PATH"] = stub_bin + os.pathsep + env.get("PATH", "")
    env["HF_HUB_OFFLINE"] = "1"
    env["OMP_NUM_THREADS"] = str(threads)
    env.pop("PYTHONPATH", None)
    return env


# APIs a client needs the admin header for (Triton docs, customization_guide/inference_protocols.md, "Limit
# Endpoint Access"): loading models (which runs their code), changing log settings, registering shared memory
# (the server would read any /dev/shm object a client names) and tracing. Inference, health, metadata and
# statistics stay open.
RESTRICTED_APIS = "model-repository,logging,shared-memory,trace"
ADMIN_HEADER = "admin-key"


def server_command(home: Path, repo: Path, http_port: int, grpc_port: int, metrics_port: int, admin_key: str,
                   shm_prefix: str, exit_timeout_s: int = 30) -> list:
    """Loopback only; explicit model control (the watchdog reloads a broken model) behind the admin key; the
    python backend's shared-memory regions named `shm_prefix`... so that exactly this server's can be removed."""
    exe = Path(os.environ.get("TRITONSERVER", home / "bin" / "tritonserver"))
    return [str(exe), f"--model-repository={repo}", f"--backend-directory={home / 'backends'}",
            f"--cache-directory={home / 'caches'}", "--http-address=127.0.0.1", f"--http-port={http_port}",
            "--grpc-address=127.0.0.1", f"--grpc-port={grpc_port}", "--metrics-address=127.0.0.1",
            f"--metrics-port={metrics_port}", "--log-verbose=0", f"--exit-timeout-secs={exit_timeout_s}",
            "--model-control-mode=explicit", "--load-model=*",
            f"--http-restricted-api={RESTRICTED_APIS}:{ADMIN_HEADER}={admin_key}",
            f"--grpc-restricted-protocol={RESTRICTED_APIS}:{ADMIN_HEADER}={admin_key}",
            f"--backend-config=python,shm-region-prefix-name={shm_prefix}"]


class TritonServer(ManagedProcess):
    """tritonserver in its own process group, plus a watchdog thread and a clean stop.

    Triton 2.51 keeps a model READY after its python-backend stub dies (and knows nothing of our
    tensor-parallel ranks). Every `watch_interval` s the watchdog compares the stubs and ranks under the
    server with those it had when ready; when one is gone it unloads that model (it turns unready, the
    ensemble with it), removes the dead stub's shared memory and loads the model again; if that fails, or
    the server itself died, it restarts the server. What it saw and did is in `.events` and the server log.
    stop() signals tritonserver alone first: it finishes in-flight requests and unloads the models (their
    finalize stops the ranks) before anything else is signalled; then the group; then this server's
    /dev/shm regions are removed. With `gate` (ft_gate.Gate options) the proxy runs beside it on its own port
    (`.urls["gate"]`, set by start()): started just before the server, kept up across the watchdog's restarts
    (answering 502 while the server is down), stopped first on stop() after its requests in flight finish."""

    def __init__(self, cmd, http: int, grpc: int, metrics: int, admin_key: str, shm_prefix: str,
                 watch_interval: float = 0.5, gate: Optional[dict] = None, **kw):
        super().__init__(cmd, ready=http_ready(f"http://127.0.0.1:{http}/v2/health/ready"), name="tritonserver", **kw)
        self.urls = {"http": f"127.0.0.1:{http}", "grpc": f"127.0.0.1:{grpc}", "metrics": f"127.0.0.1:{metrics}"}
        self.admin_key, self.shm_prefix, self.watch_interval = admin_key, shm_prefix, watch_interval
        self.events, self.removed_shm, self.expected = [], [], {}
        self._watch_stop = threading.Event()
        self._watcher = None
        self._restarting = False
        self.gate = None
        if gate is not None:   # ft_gate.Gate options ({} for the defaults); it stays up across restarts
            import ft_gate
            # port 0 unless given: the OS picks it when the gate binds, in start(). A port picked here by
            # free_port() and bound only once Triton is ready could be taken meanwhile (CI saw EADDRINUSE: the
            # ranks' and clients' outgoing connections use the same ephemeral range)
            self.gate = ft_gate.Gate(self.urls["http"], **gate)

    def admin_headers(self, protocol: str = "http") -> dict:
        """The header the restricted APIs need (gRPC prefixes it with triton-grpc-protocol-)."""
        return {(ADMIN_HEADER if protocol == "http" else f"triton-grpc-protocol-{ADMIN_HEADER}"): self.admin_key}

    def start(self) -> "TritonServer":
        # should this Python process die without stop() (a killed kernel), labkit's reaper ends the server's
        # group and removes these regions
        remove_if_owner_dies(f"/dev/shm/{self.shm_prefix}*")
        if self.gate is not None and not self.gate.running:
            # bound first, so its address is known and held; it answers 502 until Triton is ready
            self.gate.start()
            self.urls["gate"] = self.gate.url
        super().start()   # if it fails, it calls stop(), which stops the gate too
        self.expected = self.snapshot()
        if self.watch_interval:
            self._watch_stop = threading.Event()
            self._watcher = threading.Thread(target=self._watch, args=(self._watch_stop,), daemon=True,
                                             name="triton-watchdog")
            self._watcher.start()
        return self

    def stop(self) -> None:
        if self.gate is not None and not self._restarting:
            # the gate first: it accepts nothing new and lets its requests in flight finish (Triton would also
            # wait for the gate's open connections before draining)
            self.gate.stop(drain_s=self.drain_timeout or 5)
        self._watch_stop.set()
        if self._watcher is not None and self._watcher is not threading.current_thread():
            # a reload in progress holds an HTTP connection, which tritonserver would wait for when stopping
            self._watcher.join(timeout=self.drain_timeout or 5)
        super().stop()
        self._remove_shm(glob.glob(f"/dev/shm/{self.shm_prefix}*"))
        if not self._restarting:
            remove_if_owner_dies(f"/dev/shm/{self.shm_prefix}*", remove=False)

    def restart(self) -> "TritonServer":
        """Stop and start tritonserver (same ports); the gate stays up and answers 502 meanwhile."""
        self._restarting = True
        try:
            return super().restart()
        finally:
            self._restarting = False

    def snapshot(self) -> dict:
        """{model: {"stub": pid, "ranks": [pids], "shm": region}} for the live python-backend stubs."""
        import psutil
        out = {}
        try:
            kids = psutil.Process(self.pid).children()
        except (psutil.Error, TypeError):
            return out
        for c in kids:
            try:
                cmd = c.cmdline()
                if not cmd or not cmd[0].endswith("triton_python_backend_stub"):
                    continue
                ranks = []
                for g in c.children():
                    try:
                        if "spawn_main" in " ".join(g.cmdline()):
                            ranks.append(g.pid)
                    except psutil.Error:   # exited, or a zombie: not a live rank
                        pass
            except psutil.Error:
                continue
            out[Path(cmd[1]).parent.parent.name] = {"stub": c.pid, "ranks": ranks, "shm": cmd[2]}
        return out

    def event(self, message: str) -> None:
        self.events.append((time.time(), message))
        log.warning(message)
        try:
            self._log.write(f"[watchdog] {message}\n".encode())
            self._log.flush()
        except (AttributeError, ValueError):   # the log is closed
            pass

    def _watch(self, stop: threading.Event) -> None:
        while not stop.wait(self.watch_interval):
            now = self.snapshot()
            gone = {}
            for model, was in self.expected.items():
                cur = now.get(model)
                if cur is None:
                    gone[model] = f"its python-backend stub (pid {was['stub']}) is gone"
                elif len(cur["ranks"]) < len(was["ranks"]):
                    gone[model] = f"tensor-parallel rank processes {sorted(set(was['ranks']) - set(cur['ranks']))} are gone"
            if gone:   # a server being killed hands its children to init a moment before it can be reaped
                stop.wait(0.2)
            # asked after the snapshot: a server that died during it left no children to list, which is its exit,
            # not every model's stub gone (asked before, that read as a stub death and a reload of a dead server)
            if not self.alive():
                self.event(f"tritonserver exited with code {self.proc.returncode}; restarting it")
                self._restart(stop)
                return
            for model, why in gone.items():
                if not self._reload(model, why, self.expected[model], stop):
                    self._restart(stop)
                    return

    def _reload(self, model: str, why: str, was: dict, stop: threading.Event) -> bool:
        import psutil
        import tritonclient.http as tc
        self.event(f"{model}: {why}; unloading it (it reports unready) and loading it again")
        t0 = time.monotonic()
        c = tc.InferenceServerClient(self.urls["http"], network_timeout=600.0)
        try:
            c.unload_model(model, headers=self.admin_headers())
            self.event(f"{model}: unloaded, ready={c.is_model_ready(model)}")
            try:   # the dead instance's stub exits (or is already gone) before its shared memory is removed
                psutil.Process(was["stub"]).wait(timeout=30)
            except (psutil.Error, psutil.TimeoutExpired):
                pass
            self._remove_shm([f"/dev/shm/{was['shm']}"])
            c.load_model(model, headers=self.admin_headers())
            if not c.is_model_ready(model):
                raise RuntimeError("not ready after loading")
            self.expected[model] = self.snapshot()[model]
            self.event(f"{model}: loaded again and ready after {time.monotonic() - t0:.1f} s")
            return True
        except Exception as exc:
            if stop.is_set():   # stopping: nothing to recover
                return True
            self.event(f"{model}: reload failed ({type(exc).__name__}: {exc})")
            return False
        finally:
            c.close()

    def _restart(self, stop: threading.Event) -> None:
        if stop.is_set():
            return
        self.event("restarting tritonserver")
        try:
            self.restart()
            self.event("tritonserver restarted and ready")
        except Exception as exc:
            self.event(f"tritonserver restart failed: {exc}")

    def _remove_shm(self, paths) -> None:
        for path in paths:
            try:
                os.unlink(path)
                self.removed_shm.append(path)
            except FileNotFoundError:
                pass


def triton_server(repo: Path, cache: Path, log_path: Optional[Path] = None, start_timeout: float = 240.0,
                  threads: int = 1, watch_interval: float = 0.5, exit_timeout_s: int = 30,
                  gate: Optional[dict] = None) -> TritonServer:
    """A TritonServer on free loopback ports with a fresh admin key (use it as a context manager).
    `.urls` holds the HTTP, gRPC and metrics addresses, `.admin_headers(protocol)` the restricted APIs' header.
    gate={} (or ft_gate.Gate options, e.g. {"max_body_bytes": 2**20}) starts ft_gate's proxy beside the server:
    `.urls["gate"]` is the HTTP address to expose instead of `.urls["http"]`."""
    home = server_home(cache)
    http, grpc, metrics = free_port(), free_port(), free_port()
    while len({http, grpc, metrics}) < 3:
        grpc, metrics = free_port(), free_port()
    admin_key, shm_prefix = secrets.token_hex(16), f"ft01_{secrets.token_hex(4)}_"
    return TritonServer(server_command(home, repo, http, grpc, metrics, admin_key, shm_prefix, exit_timeout_s),
                        http, grpc, metrics, admin_key, shm_prefix, watch_interval=watch_interval, env=server_env(threads),
                        start_timeout=start_timeout, log_path=log_path, drain_timeout=exit_timeout_s + 15, gate=gate)


def tree(root: Path) -> str:
    """The repository as an indented listing (what the notebook shows)."""
    lines = []
    for p in sorted(Path(root).rglob("*")):
        if "__pycache__" in p.parts:
            continue
        depth = len(p.relative_to(root).parts) - 1
        lines.append("    " * depth + p.name + ("/" if p.is_dir() else ""))
    return "\n".join(lines)
