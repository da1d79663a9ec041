"""Request checks in front of the MONAI Label server: bad input gets a 4xx and one clear line.

monailabel 0.8.5 answers several bad requests with 500 "Internal Server Error" (an unknown model, an unknown
image id, a missing `image` parameter, a `params` form field that is not JSON), ignores a JSON body on
/infer (it reads a form field), and stores any uploaded file as a label (a text file counts as "completed").
This ASGI middleware checks the requests the tutorial's client and viewers send before monailabel sees them:

    POST /infer/{model}        model known (404); image= given (400) and in the datastore (404);
                               form field `params` a JSON object (400); no JSON body (400)
    PUT  /datastore/label      image= known; a `label` file that is a NIfTI volume of the image's shape and
                               affine with values in the label set (415 / 422, via mo_data.check_label)
    POST /train/{model}        trainer known (404); body empty or a JSON object of known settings (400)
    POST /activelearning/{s}   strategy known (404); body empty or a JSON object (400)

The server runs it through monailabel's own option for another ASGI app:
`monailabel start_server ... --uvicorn_app mo_label_guard:app` (mo_label.server passes it).
"""
from __future__ import annotations

import gzip
import json
import logging
import re

import numpy as np
from monailabel.app import app as monailabel_app
from monailabel.interfaces.utils.app import app_instance
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse

logger = logging.getLogger("mo_label_guard")
TRAIN_SETTINGS = {"max_epochs": int}   # what TissueTrain reads from a /train request


class Refused(Exception):
    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status, self.detail = status, detail


def _json_object(text, what: str) -> dict:
    """Parse `text` as a JSON object or refuse with 400 naming `what`."""
    if not isinstance(text, (str, bytes)):
        raise Refused(400, f"{what} must be text (a JSON object), not a file")
    try:
        value = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise Refused(400, f"{what} is not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise Refused(400, f"{what} must be a JSON object, got {type(value).__name__}")
    return value


def _known(kind: str, name: str, names) -> None:
    if name not in names:
        raise Refused(404, f"unknown {kind} {name!r}; this server has: {', '.join(sorted(names)) or 'none'}")


def _image_id(request: Request) -> str:
    image = request.query_params.get("image", "")
    if not image:
        raise Refused(400, "missing query parameter 'image' (the id of an image in the datastore)")
    ds = app_instance().datastore()
    ids = ds.list_images()
    if image not in ids:
        raise Refused(404, f"unknown image {image!r}: the datastore has {len(ids)} images"
                           + (f" (e.g. {', '.join(sorted(ids)[:3])})" if ids else ""))
    return image


def _is_json(request: Request) -> bool:
    return request.headers.get("content-type", "").split(";")[0].strip().lower() == "application/json"


def _read_nifti(data: bytes, filename: str):
    import nibabel as nib
    try:
        raw = gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data
        return nib.Nifti1Image.from_bytes(raw)
    except Exception as exc:   # nibabel raises several kinds for a file that is not NIfTI-1
        raise Refused(415, f"label file {filename!r} is not a NIfTI-1 image ({type(exc).__name__}: "
                           f"{str(exc)[:100]})") from None


def _check_label(image: str, data: bytes, filename: str) -> None:
    import nibabel as nib
    import mo_data
    lab = _read_nifti(data, filename)
    img = nib.load(app_instance().datastore().get_image_uri(image))
    try:
        mo_data.check_label(lab, repr(filename), img.shape, img.affine, len(mo_data.LABEL_NAMES))
    except mo_data.LabelError as exc:
        raise Refused(422, f"{exc} (image {image!r})") from None


async def _form(request: Request):
    if _is_json(request):
        raise Refused(400, f"{request.url.path} takes multipart form fields (params=<JSON object>), not a JSON body")
    return await request.form()


async def check(request: Request, body: bytes) -> None:
    """Raise Refused for a bad request to one of the routes above; return for everything else."""
    method, path = request.method, request.url.path.rstrip("/")
    info = app_instance().info()
    if method == "POST" and (m := re.fullmatch(r"/infer/([^/]+)", path)):
        _known("model", m.group(1), info.get("models", {}))
        form = await _form(request)
        if "file" not in form:
            _image_id(request)
        _json_object(form.get("params", "{}"), "form field 'params'")
    elif method == "PUT" and path == "/datastore/label":
        image = _image_id(request)
        form = await _form(request)
        _json_object(form.get("params", "{}"), "form field 'params'")
        up = form.get("label")
        if up is None or isinstance(up, str):
            raise Refused(400, "missing file field 'label' (a NIfTI label map)")
        await run_in_threadpool(_check_label, image, await up.read(), up.filename or "label")
    elif method == "POST" and (m := re.fullmatch(r"/train/([^/]+)", path)):
        _known("trainer", m.group(1), info.get("trainers", {}))
        params = _json_object(body, "the JSON body") if body.strip() else {}
        for k, v in params.items():
            if k not in TRAIN_SETTINGS:
                raise Refused(400, f"unknown training setting {k!r}; this trainer takes {', '.join(TRAIN_SETTINGS)}")
            if not isinstance(v, TRAIN_SETTINGS[k]) or isinstance(v, bool) or v < 1:
                raise Refused(400, f"training setting {k!r} must be a positive integer, got {v!r}")
    elif method == "POST" and (m := re.fullmatch(r"/activelearning/([^/]+)", path)):
        _known("strategy", m.group(1), info.get("strategies", {}))
        if body.strip():
            _json_object(body, "the JSON body")


class Guard:
    """ASGI middleware: buffer the body, run `check`, answer 4xx or pass the request on unchanged."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT"):
            return await self.app(scope, receive, send)
        chunks, more = [], True
        while more:
            msg = await receive()
            chunks.append(msg.get("body", b""))
            more = msg.get("more_body", False)
        body = b"".join(chunks)

        def replay():
            sent = False

            async def _receive():
                nonlocal sent
                if not sent:
                    sent = True
                    return {"type": "http.request", "body": body, "more_body": False}
                return await receive()
            return _receive

        request = Request(scope, replay())
        try:
            await check(request, body)
        except Refused as r:
            logger.warning("refused %s %s: %d %s", scope["method"], scope["path"], r.status, r.detail)
            return await JSONResponse({"detail": r.detail}, status_code=r.status)(scope, receive, send)
        finally:
            await request.close()      # the spooled upload files of a parsed form
        return await self.app(scope, replay(), send)


app = Guard(monailabel_app)
