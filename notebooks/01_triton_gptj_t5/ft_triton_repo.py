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

The server: the `tritonserver` binary that the PyPI wheel nvidia-pytriton bundles (Triton 2.51, python
backend only), copied to a writable folder with the python-backend stub for this Python version; started
by labkit.procs.ManagedProcess (own process group, loopback only, readiness poll, stopped in `finally`).
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import sysconfig
import textwrap
from pathlib import Path
from typing import Optional

HERE = Path(__file__).resolve().parent
RUNTIME_MODULES = ["ft_convert.py", "ft_runtime_common.py", "ft_runtime_gptj.py", "ft_runtime_t5.py", "ft_gemm.py"]


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

PREPROCESSING_PY = '''\
"""Triton python-backend model: text -> GPT-2 BPE ids (generated by ft_triton_repo; do not edit)."""
import os
import numpy as np
import triton_python_backend_utils as pb_utils
from tokenizers import Tokenizer


class TritonPythonModel:
    def initialize(self, args):
        self.tok = Tokenizer.from_file(os.path.join(os.path.dirname(__file__), "tokenizer.json"))

    def execute(self, requests):
        responses = []
        for req in requests:
            try:
                texts = pb_utils.get_input_tensor_by_name(req, "QUERY").as_numpy().reshape(-1)
                out_len = pb_utils.get_input_tensor_by_name(req, "REQUEST_OUTPUT_LEN").as_numpy().reshape(-1, 1)
                ids = []
                for t in texts:
                    t = t.decode("utf-8") if isinstance(t, bytes) else str(t)
                    if not t.strip():
                        raise ValueError("preprocessing: empty prompt; INPUT_0 must hold some text")
                    ids.append(self.tok.encode(t).ids)
                n = max(len(x) for x in ids)
                arr = np.full((len(ids), n), 50256, dtype=np.uint32)
                for i, x in enumerate(ids):
                    arr[i, :len(x)] = x
                lens = np.array([[len(x)] for x in ids], dtype=np.uint32)
                responses.append(pb_utils.InferenceResponse(output_tensors=[
                    pb_utils.Tensor("INPUT_ID", arr), pb_utils.Tensor("REQUEST_INPUT_LEN", lens),
                    pb_utils.Tensor("REQUEST_OUTPUT_LEN_OUT", out_len.astype(np.uint32))]))
            except Exception as exc:
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc))))
        return responses
'''

POSTPROCESSING_PY = '''\
"""Triton python-backend model: GPT-2 BPE ids -> text (generated by ft_triton_repo; do not edit)."""
import os
import numpy as np
import triton_python_backend_utils as pb_utils
from tokenizers import Tokenizer


class TritonPythonModel:
    def initialize(self, args):
        self.tok = Tokenizer.from_file(os.path.join(os.path.dirname(__file__), "tokenizer.json"))

    def execute(self, requests):
        responses = []
        for req in requests:
            ids = pb_utils.get_input_tensor_by_name(req, "TOKENS_BATCH").as_numpy()
            lens = pb_utils.get_input_tensor_by_name(req, "sequence_length").as_numpy()
            texts = []
            for row, n in zip(ids[:, 0], lens[:, 0]):
                texts.append(self.tok.decode([int(t) for t in row[:int(n)] if int(t) != 50256]).encode("utf-8"))
            responses.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor("OUTPUT", np.array(texts, dtype=object).reshape(-1, 1))]))
        return responses
'''

MODEL_PY = '''\
"""Triton python-backend model running the project's {kind} runtime (generated by ft_triton_repo; do not edit).

Requests that arrive together (dynamic batching) and share their sampling parameters run as one batch.
Bad requests get a per-request error; the others in the batch are still answered.
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

import numpy as np
import torch
import triton_python_backend_utils as pb_utils

import ft_gemm
from ft_runtime_common import TPEngine

KIND = "{kind}"


def _opt(req, name, default, cast):
    t = pb_utils.get_input_tensor_by_name(req, name)
    return default if t is None else cast(t.as_numpy().reshape(-1)[0])


class TritonPythonModel:
    def initialize(self, args):
        cfg = json.loads(args["model_config"])
        p = {{k: v["string_value"] for k, v in cfg.get("parameters", {{}}).items()}}
        self.tp = int(p.get("tensor_para_size", "1"))
        if int(p.get("pipeline_para_size", "1")) != 1:
            raise pb_utils.TritonModelException("pipeline_para_size must be 1 in this runtime")
        self.max_output_len = int(p.get("max_output_len", "64"))
        self.max_batch = int(cfg.get("max_batch_size", 8)) or 1
        ckpt = p["model_checkpoint_path"]
        dtype, device = p.get("data_type", "fp32"), p.get("device", "cpu")
        torch.set_num_threads(int(p.get("num_threads", "1")))
        plan = ft_gemm.plan_from_config(p["gemm_config"]) if p.get("gemm_config") else None
        graph = device.startswith("cuda") and p.get("cuda_graph", "1") == "1"
        if KIND == "gptj":
            import ft_runtime_gptj as rt
            fac = rt.factory(ckpt, dtype, device, plan, self.max_batch, int(p.get("max_seq_len", "256")), graph)
        else:
            import ft_runtime_t5 as rt
            fac = rt.factory(ckpt, dtype, device, plan, self.max_batch * 4, self.max_output_len, graph)
        if self.tp == 1:
            from ft_runtime_common import TP
            self.rt, self.engine = fac(0, 1, TP()), None
        else:
            self.rt, self.engine = None, TPEngine(fac, self.tp, device=device)
        if p.get("warmup", "0") == "1":  # compile + capture the batch-1 decode step before the server is READY
            self._call("generate", input_ids=[[1, 2, 3, 4]], max_new_tokens=2)

    def _call(self, method, **kw):
        if self.engine is None:
            return getattr(self.rt, method)(**kw)
        return self.engine.call(method, **kw)

    def _parse(self, req):
        ids = pb_utils.get_input_tensor_by_name(req, "input_ids").as_numpy()
        len_name, out_name = ("input_lengths", "request_output_len") if KIND == "gptj" else ("sequence_length", "max_output_len")
        lens = pb_utils.get_input_tensor_by_name(req, len_name).as_numpy().reshape(-1)
        out_len = int(pb_utils.get_input_tensor_by_name(req, out_name).as_numpy().reshape(-1)[0])
        if ids.ndim != 2 or len(lens) != ids.shape[0]:
            raise ValueError(f"input_ids must be [batch, tokens] with one {{len_name}} per row")
        prompts = []
        for row, n in zip(ids, lens):
            n = int(n)
            if n <= 0 or n > row.shape[0]:
                raise ValueError(f"{{len_name}}={{n}} is invalid for input_ids of {{row.shape[0]}} tokens (empty prompt?)")
            prompts.append([int(t) for t in row[:n]])
        if out_len <= 0 or out_len > self.max_output_len:
            raise ValueError(f"{{out_name}}={{out_len}} is outside 1..{{self.max_output_len}} (the model's max_output_len)")
        params = (_opt(req, "runtime_top_k", 1, int), round(_opt(req, "runtime_top_p", 0.0, float), 6),
                  round(_opt(req, "temperature", 1.0, float), 6), _opt(req, "random_seed", None, int),
                  _opt(req, "beam_width", 1, int), round(_opt(req, "len_penalty", 1.0, float), 6))
        if KIND == "gptj" and params[4] != 1:
            raise ValueError("beam_width > 1 is not supported for GPT-J by this runtime (use sampling)")
        return prompts, out_len, params

    def execute(self, requests):
        responses = [None] * len(requests)
        groups = {{}}
        for i, req in enumerate(requests):
            try:
                prompts, out_len, params = self._parse(req)
                groups.setdefault(params, []).append((i, prompts, out_len))
            except Exception as exc:
                responses[i] = pb_utils.InferenceResponse(error=pb_utils.TritonError(f"{{KIND}}: {{exc}}"))
        for params, items in groups.items():
            top_k, top_p, temp, seed, beam, lp = params
            prompts = [p for _, ps, _ in items for p in ps]
            out_len = max(n for _, _, n in items)
            try:
                if KIND == "gptj":
                    toks, lens = self._call("generate", input_ids=prompts, max_new_tokens=out_len, top_k=top_k,
                                            top_p=top_p, temperature=temp, seed=seed)
                    toks, lens, cum = toks[:, None], lens[:, None], None
                else:
                    toks, lens, cum = self._call("generate", input_ids=prompts, max_new_tokens=out_len, beam_width=beam,
                                                 top_k=top_k, top_p=top_p, temperature=temp, seed=seed, len_penalty=lp)
            except Exception as exc:
                for i, _, _ in items:
                    responses[i] = pb_utils.InferenceResponse(error=pb_utils.TritonError(f"{{KIND}}: {{exc}}"))
                continue
            row = 0
            for i, ps, n in items:
                outs, seqlens = [], []
                for p in ps:
                    gen = toks[row, :, :n].numpy()
                    gl = np.minimum(lens[row].numpy(), n)
                    if KIND == "gptj":  # FT's GPT-J returns prompt + generated ids
                        full = np.concatenate([np.tile(np.array(p)[None], (gen.shape[0], 1)), gen], axis=1)
                        outs.append(full)
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
                    c = cum[row - len(ps):row, :].numpy().astype(np.float32)
                    tensors.append(pb_utils.Tensor("cum_log_probs", c))
                responses[i] = pb_utils.InferenceResponse(output_tensors=tensors)
        return responses

    def finalize(self):
        if self.engine is not None:
            self.engine.close()
'''


def build_repository(root: Path, gptj_ckpt: Path, t5_ckpt: Optional[Path], tokenizer_json: Path,
                     tensor_para_size: int = 1, t5_tensor_para_size: int = 1, data_type: str = "fp32",
                     device: str = "cpu", max_batch_size: int = 8, max_output_len: int = 32,
                     gemm_config: Optional[Path] = None, num_threads: int = 1, gptj_params: Optional[dict] = None) -> Path:
    """Write the whole model repository under `root` (replacing it) and return `root`. Without `t5_ckpt`
    the repository holds the GPT-J models only; `gptj_params` adds parameters to gptj's config
    (e.g. warmup=1, max_seq_len)."""
    root = Path(root)
    if root.exists():
        shutil.rmtree(root)
    kind = "KIND_GPU" if device.startswith("cuda") else "KIND_CPU"

    def model(name, config, source, files=()):
        d = root / name / "1"
        d.mkdir(parents=True)
        (root / name / "config.pbtxt").write_text(config)
        if source is not None:
            (d / "model.py").write_text(source)
        for f in files:
            shutil.copy(f, d / Path(f).name)

    model("preprocessing", python_config("preprocessing", [("QUERY", "TYPE_STRING", [1]), ("REQUEST_OUTPUT_LEN", "TYPE_UINT32", [1])],
                                         [("INPUT_ID", "TYPE_UINT32", [-1]), ("REQUEST_INPUT_LEN", "TYPE_UINT32", [1]),
                                          ("REQUEST_OUTPUT_LEN_OUT", "TYPE_UINT32", [1])], max_batch_size,
                                         dynamic_batching=False), PREPROCESSING_PY, [tokenizer_json])
    model("postprocessing", python_config("postprocessing", [("TOKENS_BATCH", "TYPE_UINT32", [-1, -1]),
                                                             ("sequence_length", "TYPE_UINT32", [-1])],
                                          [("OUTPUT", "TYPE_STRING", [1])], max_batch_size, dynamic_batching=False),
          POSTPROCESSING_PY, [tokenizer_json])
    common = {"pipeline_para_size": 1, "data_type": data_type, "device": device, "max_output_len": max_output_len,
              "gemm_config": str(gemm_config or ""), "num_threads": num_threads}
    mods = [HERE / m for m in RUNTIME_MODULES]
    model("gptj", python_config("gptj", GPTJ_INPUTS, GPTJ_OUTPUTS, max_batch_size,
                                dict(common, tensor_para_size=tensor_para_size, model_checkpoint_path=Path(gptj_ckpt).resolve(),
                                     **(gptj_params or {})),
                                kind), MODEL_PY.format(kind="gptj"), mods)
    model("ensemble", ensemble_config(max_batch_size), None)
    (root / "ensemble" / "1").mkdir(exist_ok=True)
    if t5_ckpt is None:
        return root
    model("t5", python_config("t5", T5_INPUTS, T5_OUTPUTS, max_batch_size,
                              dict(common, tensor_para_size=t5_tensor_para_size, model_checkpoint_path=Path(t5_ckpt).resolve()),
                              kind), MODEL_PY.format(kind="t5"), mods)
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
    with numpy < 2 (the bundled python backend breaks with numpy 2) where this one has numpy 2."""
    env = dict(os.environ)
    libs = [str(pytriton_dir().parent / "nvidia_pytriton.libs"), sysconfig.get_config_var("LIBDIR") or ""]
    env["LD_LIBRARY_PATH"] = ":".join([p for p in libs if p] + [env.get("LD_LIBRARY_PATH", "")]).rstrip(":")
    stub_bin = os.environ.get("TRITON_PYTHON_BIN") or str(Path(sys.executable).parent)
    env["PATH"] = stub_bin + os.pathsep + env.get("PATH", "")
    env["HF_HUB_OFFLINE"] = "1"
    env["OMP_NUM_THREADS"] = str(threads)
    env.pop("PYTHONPATH", None)
    return env


def server_command(home: Path, repo: Path, http_port: int, grpc_port: int, metrics_port: int) -> list:
    exe = Path(os.environ.get("TRITONSERVER", home / "bin" / "tritonserver"))
    return [str(exe), f"--model-repository={repo}", f"--backend-directory={home / 'backends'}",
            f"--cache-directory={home / 'caches'}", "--http-address=127.0.0.1", f"--http-port={http_port}",
            "--grpc-address=127.0.0.1", f"--grpc-port={grpc_port}", "--metrics-address=127.0.0.1",
            f"--metrics-port={metrics_port}", "--log-verbose=0", "--exit-timeout-secs=10"]


def triton_server(repo: Path, cache: Path, log_path: Optional[Path] = None, start_timeout: float = 240.0, threads: int = 1):
    """A labkit ManagedProcess for tritonserver on free loopback ports (use it as a context manager).
    Its `.urls` holds the HTTP and gRPC addresses."""
    import labkit
    from labkit.procs import ManagedProcess, free_port, http_ready
    home = server_home(cache)
    http, grpc, metrics = free_port(), free_port(), free_port()
    while len({http, grpc, metrics}) < 3:
        grpc, metrics = free_port(), free_port()
    proc = ManagedProcess(server_command(home, repo, http, grpc, metrics),
                          ready=http_ready(f"http://127.0.0.1:{http}/v2/health/ready"), name="tritonserver",
                          env=server_env(threads), start_timeout=start_timeout, log_path=log_path)
    proc.urls = {"http": f"127.0.0.1:{http}", "grpc": f"127.0.0.1:{grpc}", "metrics": f"127.0.0.1:{metrics}"}
    return proc


def tree(root: Path) -> str:
    """The repository as an indented listing (what the notebook shows)."""
    lines = []
    for p in sorted(Path(root).rglob("*")):
        if "__pycache__" in p.parts:
            continue
        depth = len(p.relative_to(root).parts) - 1
        lines.append("    " * depth + p.name + ("/" if p.is_dir() else ""))
    return "\n".join(lines)
