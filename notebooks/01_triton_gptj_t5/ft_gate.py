"""A small reverse proxy ("gate") that a deployment exposes instead of Triton's HTTP port.

Triton 2.51 (the tritonserver of nvidia-pytriton 0.7.0) reads any body size into memory (`--http-max-input-size`
came later: 64 MiB by default, HTTP_DEFAULT_MAX_INPUT_SIZE in the server's src/common.h) and answers broken
JSON or a -1 for a UINT32 input with 500 from its own parser. The gate, in front of it:

* refuses a body over `max_body_bytes` with 413 (from Content-Length before reading anything, or counting the
  bytes of a chunked body as they arrive): a request holds at most the limit in memory, plus a copy of its JSON
  part (at most `max_json_bytes`) while that is parsed;
* parses KServe v2 infer requests (JSON header, then binary tensors if `Inference-Header-Content-Length` says
  so) and answers 400 for malformed JSON, missing or ill-typed fields and JSON `data` that does not fit the
  declared datatype (UINT32 -1 or 2**32, NaN for an integer type, ...): generic per datatype, no model knowledge;
* forwards only inference, health, server/model metadata, model config and model readiness: repository, logging,
  shared memory, trace and statistics are refused with 403;
* passes Triton's status and body through; an unreachable upstream gives 502, a slow one 504. Every error is
  JSON {"error": "<one line>"} (what Triton itself sends, so tritonclient reports it).

One thread per connection (http.server's ThreadingHTTPServer), at most `max_connections` at once; stop() closes
the listening socket and every open connection and joins all threads. TLS and authentication are not its job:
put it behind (or make it) the TLS-terminating proxy of the deployment.

    with Gate("127.0.0.1:8000") as gate:      # loopback by default; host="0.0.0.0" to expose it
        ... http://{gate.url}/v2/models/ensemble/infer
"""
from __future__ import annotations

import http.client
import json
import logging
import math
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Optional

log = logging.getLogger(__name__)

MiB = 1 << 20
# Integer ranges of the KServe v2 datatypes; floats: largest finite value (a larger JSON number would become inf)
INT_RANGE = {f"{s}INT{b}": ((0, 2 ** b - 1) if s else (-2 ** (b - 1), 2 ** (b - 1) - 1))
             for s in ("", "U") for b in (8, 16, 32, 64)}
FLOAT_MAX = {"FP16": 65504.0, "FP32": 3.4028234663852886e38, "FP64": 1.7976931348623157e308,
             "BF16": 3.3895313892515355e38}
DATATYPES = set(INT_RANGE) | set(FLOAT_MAX) | {"BOOL", "BYTES"}

_MODEL = r"/v2/models/[^/]+(?:/versions/[0-9]+)?"
ROUTES = [("GET", re.compile(r"/v2")), ("GET", re.compile(r"/v2/health/(?:live|ready)")),
          ("GET", re.compile(_MODEL)), ("GET", re.compile(_MODEL + r"/(?:ready|config)")),
          ("POST", re.compile(_MODEL + r"/infer"))]
INFER = ROUTES[-1][1]
# Triton answers GET /v2/models/stats (every model's statistics) and .../trace/setting on paths the model routes
# above would match with a model named "stats" or "trace": refused first
DENY = re.compile(r"/v2/models(?:/[^/]+(?:/versions/[0-9]+)?)?/(?:stats|trace(?:/setting)?)")
# Request headers Triton's HTTP front end reads for these routes (src/http_server.cc); all others stay here
FORWARD_REQUEST = ("Content-Type", "Accept", "Accept-Encoding", "Inference-Header-Content-Length")
FORWARD_RESPONSE = ("Content-Type", "Content-Encoding", "Inference-Header-Content-Length")


class Refused(Exception):
    """The request is refused with `status` and a one-line message."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def _show(v) -> str:
    """A JSON value for an error message, cut short (a client's 8 MB string is not echoed back)."""
    text = json.dumps(v)
    return text if len(text) <= 40 else text[:37] + "..."


def check_infer(body: bytes, header_length: Optional[str], max_json_bytes: int) -> None:
    """Raise Refused(400/413) unless `body` is a well-formed KServe v2 infer request.

    Triton's HTTPAPIServer::GetInferenceHeaderLength (src/http_server.cc): without Inference-Header-Content-Length
    the whole body is the JSON header; with it, the value (atoi) must lie in 0..Content-Length and the bytes after
    it are the binary tensors, in input order, `parameters.binary_data_size` bytes each (ParseJsonTritonIO, which
    also refuses missing or extra binary bytes). We are stricter where Triton's atoi would read junk as 0."""
    json_len = len(body)
    if header_length is not None:
        if not header_length.strip().isdigit() or not 0 < int(header_length) <= len(body):
            raise Refused(400, f"Inference-Header-Content-Length must be an integer in 1..{len(body)} "
                               f"(the body's length), got {header_length!r}")
        json_len = int(header_length)
    if json_len > max_json_bytes:
        raise Refused(413, f"the JSON part of the request is {json_len} bytes; the limit is {max_json_bytes} "
                           f"(send large tensors with the binary tensor extension)")
    try:
        req = json.loads(bytes(memoryview(body)[:json_len]))
    except RecursionError:
        raise Refused(400, "malformed JSON: nested too deeply") from None
    except ValueError as e:   # JSONDecodeError and UnicodeDecodeError
        raise Refused(400, f"malformed JSON: {str(e).splitlines()[0]}") from None
    if not isinstance(req, dict):
        raise Refused(400, f"the request must be a JSON object, got {type(req).__name__}")
    inputs = req.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise Refused(400, "'inputs' must be a non-empty list of tensors")
    binary = 0
    for i, t in enumerate(inputs):
        binary += _check_input(i, t)
    if binary != len(body) - json_len:
        raise Refused(400, f"the inputs declare {binary} bytes of binary data (binary_data_size) but "
                           f"{len(body) - json_len} follow the JSON header")
    outputs = req.get("outputs", [])
    if not isinstance(outputs, list) or not all(isinstance(o, dict) and isinstance(o.get("name"), str) for o in outputs):
        raise Refused(400, "'outputs' must be a list of objects with a string 'name'")
    for o in outputs:
        if any(k.startswith("shared_memory") for k in (o.get("parameters") or {})):
            raise Refused(400, f"output {o['name']!r}: shared memory is not available through this gate")


def _check_input(i: int, t) -> int:
    """Check one input tensor; return its binary_data_size (0 for JSON data)."""
    if not isinstance(t, dict) or not isinstance(t.get("name"), str) or not t["name"]:
        raise Refused(400, f"inputs[{i}] must be an object with a non-empty string 'name'")
    name, dtype, shape = t["name"], t.get("datatype"), t.get("shape")
    if dtype not in DATATYPES:
        raise Refused(400, f"input {name!r}: datatype {dtype!r} is not one of {', '.join(sorted(DATATYPES))}")
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise Refused(400, f"input {name!r}: 'shape' must be a list of non-negative integers, got {_show(shape)}")
    params = t.get("parameters") or {}
    if not isinstance(params, dict):
        raise Refused(400, f"input {name!r}: 'parameters' must be an object")
    if any(k.startswith("shared_memory") for k in params):
        raise Refused(400, f"input {name!r}: shared memory is not available through this gate")
    if "binary_data_size" in params:
        size = params["binary_data_size"]
        if type(size) is not int or size < 0:
            raise Refused(400, f"input {name!r}: binary_data_size must be a non-negative integer, got {_show(size)}")
        if "data" in t:
            raise Refused(400, f"input {name!r} has both 'data' and binary_data_size")
        return size
    if "data" not in t:
        raise Refused(400, f"input {name!r} has neither 'data' nor parameters.binary_data_size")
    values = _flatten(name, t["data"])
    need = math.prod(shape)
    if len(values) != need:
        raise Refused(400, f"input {name!r}: shape {shape} holds {need} values, 'data' has {len(values)}")
    _check_values(name, dtype, values)
    return 0


def _flatten(name: str, data) -> list:
    if not isinstance(data, list):
        raise Refused(400, f"input {name!r}: 'data' must be a list, got {type(data).__name__}")
    out, stack = [], [iter(data)]
    while stack:   # iterative: nesting depth is bounded by json.loads already, but no recursion here either
        for v in stack[-1]:
            if isinstance(v, list):
                stack.append(iter(v))
                break
            out.append(v)
        else:
            stack.pop()
    return out


def _check_values(name: str, dtype: str, values: list) -> None:
    if dtype in INT_RANGE:
        lo, hi = INT_RANGE[dtype]
        for v in values:
            if type(v) is not int:   # bool is not an int here, nor is 1.0, NaN or Infinity
                raise Refused(400, f"input {name!r}: {dtype} data must be integers, got {_show(v)}")
            if not lo <= v <= hi:
                raise Refused(400, f"input {name!r}: {v} is outside the range of {dtype} ({lo}..{hi})")
    elif dtype in FLOAT_MAX:
        top = FLOAT_MAX[dtype]
        for v in values:
            if type(v) not in (int, float):
                raise Refused(400, f"input {name!r}: {dtype} data must be numbers, got {_show(v)}")
            if math.isfinite(v) and abs(v) > top:
                raise Refused(400, f"input {name!r}: {v} is outside the range of {dtype} (|x| <= {top:g})")
    elif dtype == "BOOL":
        if not all(type(v) is bool for v in values):
            raise Refused(400, f"input {name!r}: BOOL data must be true or false")
    elif not all(isinstance(v, str) for v in values):   # BYTES
        raise Refused(400, f"input {name!r}: BYTES data must be strings (or send them in binary)")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"   # keep-alive, as tritonclient expects

    def version_string(self):
        return "ft-gate"
    gate: "Gate"

    def setup(self):
        self.timeout = self.gate.client_timeout_s   # a client idle this long is dropped
        super().setup()

    def log_message(self, fmt, *args):   # http.server writes every request to stderr
        log.debug("%s " + fmt, self.address_string(), *args)

    def handle_expect_100(self):
        """`Expect: 100-continue` (curl sends it for large bodies): refuse before the client sends the body."""
        try:
            self._check_length()
        except Refused as e:
            self._body_read = False
            self._refuse(e, drain=False)
            return False
        return super().handle_expect_100()

    def do_GET(self):
        self._serve("GET")

    def do_POST(self):
        self._serve("POST")

    def do_PUT(self):
        self._serve("PUT")

    def do_DELETE(self):
        self._serve("DELETE")

    def _serve(self, method: str) -> None:
        self._body_read = False
        self.gate._busy(+1)
        try:
            path = self.path.split("?", 1)[0]
            body = self._read_body()
            self._body_read = True
            allowed = [] if DENY.fullmatch(path) else [m for m, rx in ROUTES if rx.fullmatch(path)]
            if not allowed:
                raise Refused(403 if path.startswith("/v2") else 404,
                              f"{path} is not exposed by this gate (inference, health, model metadata, config and "
                              f"readiness are)")
            if method not in allowed:
                raise Refused(405, f"{method} is not allowed on {path}")
            if self.headers.get("Content-Encoding", "identity") != "identity":
                raise Refused(415, "compressed request bodies are not accepted by this gate")
            if INFER.fullmatch(path):
                check_infer(body, self.headers.get("Inference-Header-Content-Length"), self.gate.max_json_bytes)
            self._forward(method, path, body)
        except Refused as e:
            self._refuse(e)
        except (ConnectionError, socket.timeout):   # the client went away
            self.close_connection = True
        except Exception:
            log.exception("gate: unexpected error on %s %s", method, self.path)
            self._refuse(Refused(500, "gate: internal error"))
        finally:
            self.gate._busy(-1)

    def _check_length(self) -> Optional[int]:
        te, cl = self.headers.get_all("Transfer-Encoding", []), self.headers.get_all("Content-Length", [])
        if (te and cl) or len(te) > 1 or len(cl) > 1:   # ambiguous framing (request smuggling): refuse
            raise Refused(400, "send exactly one of Content-Length and Transfer-Encoding: chunked")
        te = te[0] if te else None
        if te is not None:
            if te.strip().lower() != "chunked":
                raise Refused(501, f"Transfer-Encoding {te!r} is not supported (only chunked)")
            return None
        raw = self.headers.get("Content-Length", "0")
        if not raw.strip().isdigit():
            raise Refused(400, f"Content-Length must be a non-negative integer, got {raw!r}")
        n = int(raw)
        if n > self.gate.max_body_bytes:
            raise Refused(413, f"the request body is {n} bytes; the limit is {self.gate.max_body_bytes}")
        return n

    def _read_body(self) -> bytearray:
        """The body, never more than max_body_bytes of it (one buffer, no copies), within body_timeout_s."""
        n = self._check_length()
        self._deadline = time.monotonic() + self.gate.body_timeout_s
        body = bytearray()
        if n is not None:
            self._read_into(body, n)
            return body
        while True:   # chunked (RFC 9112 section 7.1): size line, data, CRLF; trailers after the last chunk
            line = self._read_line()
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise Refused(400, f"malformed chunk size line {line[:40]!r}") from None
            if size == 0:
                while self._read_line().strip():
                    pass
                return body
            if len(body) + size > self.gate.max_body_bytes:
                raise Refused(413, f"the chunked request body exceeds the limit of {self.gate.max_body_bytes} bytes")
            self._read_into(body, size)
            if self._read_line().strip():
                raise Refused(400, "malformed chunked body (no CRLF after a chunk)")

    def _read_into(self, buf: bytearray, n: int) -> None:
        end = len(buf) + n
        while len(buf) < end:
            chunk = self._before_deadline(self.rfile.read1, min(end - len(buf), 1 << 16))
            if not chunk:
                raise ConnectionError("client closed the connection mid-body")
            buf += chunk

    def _before_deadline(self, read, arg):
        """One read that gives up at the body deadline (408) rather than at the idle timeout."""
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise Refused(408, f"the request body did not arrive within {self.gate.body_timeout_s:g} s")
        self.connection.settimeout(min(left, self.gate.client_timeout_s))
        try:
            return read(arg)
        except TimeoutError:
            if time.monotonic() < self._deadline:
                raise   # idle past client_timeout_s: the client is gone
            raise Refused(408, f"the request body did not arrive within {self.gate.body_timeout_s:g} s") from None
        finally:
            self.connection.settimeout(self.gate.client_timeout_s)

    def _read_line(self) -> bytes:
        line = self._before_deadline(self.rfile.readline, 1024)
        if not line.endswith(b"\n"):
            raise Refused(400, "malformed chunked body (line too long or cut off)")
        return line

    def _forward(self, method: str, path: str, body: bytes) -> None:
        host, port = self.gate.upstream
        conn = http.client.HTTPConnection(host, port, timeout=self.gate.upstream_timeout_s)
        self.gate._track(conn, add=True)
        try:
            headers = {k: self.headers[k] for k in FORWARD_REQUEST if k in self.headers}
            headers["Content-Length"] = str(len(body))
            headers["Connection"] = "close"   # an idle upstream connection would hold Triton's drain on stop
            conn.request(method, path, body=body if body or method == "POST" else None, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
        except (TimeoutError, socket.timeout):
            raise Refused(504, f"upstream {host}:{port} did not answer within {self.gate.upstream_timeout_s:g} s") from None
        except (OSError, http.client.HTTPException) as e:
            raise Refused(502, f"upstream {host}:{port} unavailable ({type(e).__name__})") from None
        finally:
            conn.close()
            self.gate._track(conn, add=False)
        self.send_response(resp.status)
        for k in FORWARD_RESPONSE:
            if resp.getheader(k) is not None:
                self.send_header(k, resp.getheader(k))
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def send_error(self, code, message=None, explain=None):
        """http.server's own errors (bad request line, header too long, unknown method): one-line JSON too."""
        self._body_read = False
        self._refuse(Refused(code, message or self.responses.get(code, ("error",))[0]))

    def _refuse(self, e: Refused, drain: bool = True) -> None:
        """One-line JSON error. After 413/408/400-in-body the rest of the body is unread: close the connection,
        after discarding what the client is still sending for a moment, so that it can read the answer (closing
        with unread data would make the kernel reset the connection before the client sees the 413)."""
        msg = str(e).replace("\n", " ")
        msg = msg if len(msg) <= 300 else msg[:297] + "..."   # names and headers come from the client
        if e.status >= 500:
            log.warning("gate: %s %s -> %d %s", self.command, self.path, e.status, msg)
        unread = not getattr(self, "_body_read", False)
        data = json.dumps({"error": msg}).encode()
        try:
            self.send_response(e.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if unread:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(data)
            self.wfile.flush()
            if unread:
                self.close_connection = True
                if drain:
                    self._discard()
        except OSError:
            self.close_connection = True

    def _discard(self, seconds: float = 2.0) -> None:
        _linger(self.connection, seconds)


def _linger(sock: socket.socket, seconds: float) -> None:
    """After the answer: shut our side, then read and drop what the client still sends, for at most `seconds`."""
    try:
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(0.25)
        end, buf = time.monotonic() + seconds, bytearray(1 << 16)
        while time.monotonic() < end and sock.recv_into(buf):
            pass
    except OSError:
        pass


class _Server(ThreadingHTTPServer):
    """One named thread per connection, at most gate.max_connections at once; the gate joins them on stop."""

    def __init__(self, addr, handler, gate):
        self.gate = gate
        super().__init__(addr, handler)

    def process_request(self, request, client_address):
        ok = self.gate._track(request, add=True, limit=self.gate.max_connections)
        # over the limit: a short-lived thread answers 503 (and reads what the client still sends for a moment:
        # closing a socket with unread data resets it before the client can read the answer)
        t = threading.Thread(target=self.process_request_thread if ok else self._reject, args=(request, client_address),
                             daemon=True, name=f"ft-gate-{self.server_address[1]}-{'conn' if ok else 'reject'}")
        with self.gate._lock:
            self.gate._threads = [x for x in self.gate._threads if x.is_alive()] + [t]
        t.start()

    def _reject(self, request, client_address):
        body = b'{"error": "gate: too many connections now"}'
        try:
            request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                            b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            _linger(request, 0.5)
        except OSError:
            pass
        super().shutdown_request(request)

    def shutdown_request(self, request):
        self.gate._track(request, add=False)
        super().shutdown_request(request)


class Gate:
    """The gate in front of Triton's HTTP endpoint `upstream` ("host:port"); `url` is where clients go.

    max_json_bytes bounds the JSON part of an infer request, which the gate parses and checks in Python (holding
    the GIL): 8 MiB of small integers took 1.0 s here (0.36 s of it in json.loads, which no other gate thread can
    interrupt), so the default is 1 MiB; bulk tensors belong in the binary extension, which is not parsed."""

    def __init__(self, upstream: str, host: str = "127.0.0.1", port: int = 0, max_body_bytes: int = 64 * MiB,
                 max_json_bytes: int = MiB, upstream_timeout_s: float = 300.0, client_timeout_s: float = 30.0,
                 body_timeout_s: float = 60.0, max_connections: int = 64):
        up_host, _, up_port = upstream.rpartition(":")
        self.upstream = (up_host, int(up_port))
        self.host, self.port = host, port
        self.max_body_bytes, self.max_json_bytes = max_body_bytes, min(max_json_bytes, max_body_bytes)
        self.upstream_timeout_s, self.client_timeout_s = upstream_timeout_s, client_timeout_s
        self.body_timeout_s, self.max_connections = body_timeout_s, max_connections
        self._server: Optional[_Server] = None
        self._thread: Optional[threading.Thread] = None
        self._open, self._threads, self._lock = set(), [], threading.Lock()
        self._in_flight = 0

    @property
    def url(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._server is not None

    def _track(self, obj, add: bool, limit: Optional[int] = None) -> bool:
        with self._lock:
            if not add:
                self._open.discard(obj)
                return True
            if limit is not None and sum(isinstance(o, socket.socket) for o in self._open) >= limit:
                return False
            self._open.add(obj)
            return True

    def _busy(self, n: int) -> None:
        with self._lock:
            self._in_flight += n

    def start(self) -> "Gate":
        handler = type("Handler", (_Handler,), {"gate": self})
        self._server = _Server((self.host, self.port), handler, self)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name=f"ft-gate-{self.port}", daemon=True)
        self._thread.start()
        log.info("gate on %s -> %s:%d", self.url, *self.upstream)
        return self

    def stop(self, drain_s: float = 0.0) -> None:
        """Stop accepting; let requests in flight finish for up to `drain_s`; then cut the open client and upstream
        connections and join every thread. Safe to call twice."""
        if self._server is None:
            return
        self._server.shutdown()
        self._thread.join()
        end = time.monotonic() + drain_s
        while self._in_flight and time.monotonic() < end:
            time.sleep(0.05)
        with self._lock:
            open_now = list(self._open)
        for o in open_now:
            try:
                (o if isinstance(o, socket.socket) else o.sock).shutdown(socket.SHUT_RDWR)
            except (OSError, AttributeError):
                pass
        self._server.server_close()
        for t in self._threads:   # each ends once its socket is shut (an upstream call: once that is cut)
            t.join(timeout=10)
        self._server, self._threads = None, [t for t in self._threads if t.is_alive()]
        if self._threads:
            log.warning("gate: %d connection threads still running after stop", len(self._threads))

    def __enter__(self) -> "Gate":
        return self.start()

    def __exit__(self, *exc) -> bool:
        self.stop()
        return False


def request(url: str, method: str, path: str, body=None, headers: Optional[dict] = None, timeout: float = 60.0):
    """(status, text) of one plain HTTP request to "host:port" (what a client without tritonclient sends); `body`
    may be bytes or an iterable of bytes (sent chunked). Connection errors raise."""
    host, _, port = url.rpartition(":")
    c = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        return r.status, r.read().decode(errors="replace")
    finally:
        c.close()


def main(argv=None) -> None:
    import argparse
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--upstream", required=True, help="Triton's HTTP address, host:port")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--max-body-bytes", type=int, default=64 * MiB)
    a = p.parse_args(argv)
    gate = Gate(a.upstream, a.host, a.port, max_body_bytes=a.max_body_bytes).start()
    print(f"gate on {gate.url} -> {a.upstream}")
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        gate.stop()


if __name__ == "__main__":
    main()
