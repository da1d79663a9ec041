"""An interactive renderer for pipelines, in JupyterLab with ipywidgets (Wisp's viewer, small).

Controls: pipeline, orbit (azimuth), elevation, zoom (camera distance), LOD, channel (RGB, depth,
normals), overlays (training-camera frustums, occupied cells of the occupancy grid or octree), and a
button that trains the selected pipeline a few more steps and redraws. Where no person is looking
(papermill, nbconvert, pytest, a plain script) ``show()`` draws a turntable strip instead, so the
executed notebook still shows the field.
"""
from __future__ import annotations

import io
import os
import time
from typing import Callable, Dict, Optional

import numpy as np
import torch

from nf_data import orbit_camera
from nf_tracers import VolumeTracer, render_image

CHANNELS = ("rgb", "depth", "normals")
_BATCH_PARENTS = ("papermill", "nbconvert", "nbclient", "pytest", "nbval")


def live_frontend() -> bool:
    """True in a kernel driven by a person's front end (JupyterLab, Notebook, VS Code).

    NF_VIEWER=live|static forces the answer. Otherwise: no IPython kernel -> False; a kernel whose
    ancestor processes are papermill / nbconvert / nbclient / pytest -> False (batch execution)."""
    forced = os.environ.get("NF_VIEWER", "").lower()
    if forced in ("live", "static"):
        return forced == "live"
    try:
        from IPython import get_ipython
        ip = get_ipython()
    except ImportError:
        return False
    if ip is None or "ZMQ" not in type(ip).__name__:
        return False
    try:
        import psutil
        proc = psutil.Process().parent()
        while proc is not None:
            cmd = " ".join(proc.cmdline()).lower()
            if any(name in cmd for name in _BATCH_PARENTS):
                return False
            proc = proc.parent()
    except Exception:  # psutil missing or a process vanished: assume a person is there
        pass
    return True


def project(points: torch.Tensor, c2w: torch.Tensor, width: int, height: int, fov_deg: float):
    """Pixel coordinates (N, 2) and camera depth (N,) of world points (same model as camera_rays)."""
    focal = 0.5 * width / np.tan(0.5 * np.radians(fov_deg))
    rel = points - c2w[:, 3]
    cam = rel @ c2w[:, :3]                                              # (right, up, back) components
    z = -cam[:, 2]
    u = width / 2 + focal * cam[:, 0] / z.clamp_min(1e-6) - 0.5
    v = height / 2 - focal * cam[:, 1] / z.clamp_min(1e-6) - 0.5
    return torch.stack([u, v], -1), z


def frustum_segments(c2w: torch.Tensor, fov_deg: float, scale: float = 0.35) -> torch.Tensor:
    """The 8 line segments (8, 2, 3) of a camera's frustum drawn to depth `scale`."""
    t = np.tan(0.5 * np.radians(fov_deg)) * scale
    eye, right, up, back = c2w[:, 3], c2w[:, 0], c2w[:, 1], c2w[:, 2]
    corners = [eye + sx * t * right + sy * t * up - scale * back for sx, sy in ((-1, -1), (1, -1), (1, 1), (-1, 1))]
    segs = [(eye, c) for c in corners] + [(corners[i], corners[(i + 1) % 4]) for i in range(4)]
    return torch.stack([torch.stack(s) for s in segs])


def draw_segments(img: np.ndarray, segs: torch.Tensor, c2w, fov_deg, color=(1.0, 0.2, 0.1), samples: int = 64):
    """Draw 3-D segments (S, 2, 3) onto img (H, W, 3) in place (points sampled along each segment)."""
    h, w = img.shape[:2]
    t = torch.linspace(0, 1, samples)[None, :, None]
    pts = (segs[:, :1] * (1 - t) + segs[:, 1:] * t).reshape(-1, 3)
    uv, z = project(pts, c2w, w, h, fov_deg)
    uv = uv.round().long()
    ok = (z > 0) & (uv[:, 0] >= 0) & (uv[:, 0] < w) & (uv[:, 1] >= 0) & (uv[:, 1] < h)
    img[uv[ok, 1].numpy(), uv[ok, 0].numpy()] = color


def draw_points(img: np.ndarray, pts: torch.Tensor, c2w, fov_deg, color=(0.1, 0.6, 1.0), alpha: float = 0.5):
    h, w = img.shape[:2]
    uv, z = project(pts, c2w, w, h, fov_deg)
    uv = uv.round().long()
    ok = (z > 0) & (uv[:, 0] >= 0) & (uv[:, 0] < w) & (uv[:, 1] >= 0) & (uv[:, 1] < h)
    r, c = uv[ok, 1].numpy(), uv[ok, 0].numpy()
    img[r, c] = (1 - alpha) * img[r, c] + alpha * np.asarray(color)


def occupied_centers(pipeline, lod: Optional[int], limit: int = 4000) -> Optional[torch.Tensor]:
    """Centres of occupied cells: the tracer's occupancy grid, else an octree grid's cells at `lod`."""
    occ = getattr(pipeline.tracer, "occupancy", None)
    if occ is not None:
        pts = occ.cell_centers()[occ.mask]
    elif getattr(pipeline.field.grid, "kind", "") == "octree":
        g = pipeline.field.grid
        lod = g.check_lod(lod)
        pts = (g.occupied_cells(lod).float() + 0.5) / 2 ** (g.base_level + lod) * 2 - 1
    else:
        return None
    if pts.shape[0] > limit:
        pts = pts[torch.randperm(pts.shape[0], generator=torch.Generator().manual_seed(0))[:limit].to(pts.device)]
    return pts.float().cpu()


class Viewer:
    def __init__(self, pipelines: Dict[str, object], trainers: Optional[Dict[str, Callable[[int], object]]] = None,
                 cameras: Optional[Dict[str, torch.Tensor]] = None, fov_deg: float = 40.0, size: int = 256,
                 radius: float = 2.7, train_steps: int = 50):
        self.pipelines = pipelines
        self.trainers = trainers or {}
        self.cameras = cameras or {}
        self.fov, self.size, self.radius, self.train_steps = fov_deg, size, radius, train_steps
        self.last_frame_ms = self.last_render_ms = None
        self._widgets = None

    def camera(self, azimuth: float, elevation: float, zoom: float = 1.0) -> torch.Tensor:
        return orbit_camera(azimuth, elevation, self.radius / zoom)

    @torch.no_grad()
    def render_frame(self, name: str, azimuth: float = 30.0, elevation: float = 20.0, zoom: float = 1.0,
                     lod: Optional[int] = None, channel: str = "rgb", frustums: bool = False,
                     occupancy: bool = False, size: Optional[int] = None) -> np.ndarray:
        """One frame (H, W, 3) float in [0, 1] with its overlays; the time from the call until the
        array is drawn (render, GPU synchronized, and overlays) lands in last_frame_ms."""
        if channel not in CHANNELS:
            raise ValueError(f"channel={channel!r}; choose from {CHANNELS}")
        pipe = self.pipelines[name]
        size = size or self.size
        dev = next(pipe.field.parameters()).device
        c2w = self.camera(azimuth, elevation, zoom)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = render_image(pipe, c2w.to(dev), size, size, self.fov, lod, normals=(channel == "normals"))
        if channel == "rgb":
            img = out["rgb"]
        elif channel == "depth":
            d, a = out["depth"], out["alpha"] > 0.5
            lo, hi = self.radius / zoom - 1.8, self.radius / zoom + 1.8
            v = ((d - lo) / (hi - lo)).clamp(0, 1)
            img = torch.where(a[..., None], torch.stack([v, v ** 0.5, 1 - v], -1), torch.ones(*v.shape, 3, device=v.device))
        else:
            n, a = out["normal"], out["alpha"] > 0.5
            img = torch.where(a[..., None], 0.5 + 0.5 * n, torch.ones_like(n))
        img = img.float().clamp(0, 1).cpu().numpy().copy()       # waits for the GPU
        if occupancy:
            pts = occupied_centers(pipe, lod)
            if pts is not None:
                draw_points(img, pts, c2w, self.fov)
        if frustums and name in self.cameras:
            segs = torch.cat([frustum_segments(pose, self.fov) for pose in self.cameras[name].cpu()])
            draw_segments(img, segs, c2w, self.fov)
        self.last_frame_ms = self.last_render_ms = (time.perf_counter() - t0) * 1e3
        return img

    def frame_png(self, *args, **kw) -> bytes:
        """A frame as the widget shows it: render_frame's arguments, returns PNG bytes. last_frame_ms
        then holds the whole time a learner waits for (render, overlays and PNG encoding), and
        last_render_ms the part before the encoding."""
        t0 = time.perf_counter()
        png = _png(self.render_frame(*args, **kw))
        self.last_frame_ms = (time.perf_counter() - t0) * 1e3
        return png

    def turntable(self, name: str, views: int = 6, size: int = 128, elevation: float = 20.0, **kw):
        """A strip of frames around the object (what papermill runs show instead of the widget)."""
        import labkit
        frames = [self.render_frame(name, azimuth=360 * i / views, elevation=elevation, size=size, **kw)
                  for i in range(views)]
        return labkit.plots.image_grid(frames, [f"azimuth {360 * i // views} deg" for i in range(views)],
                                       ncols=views, size=2.0)

    # ---- the live widget --------------------------------------------------------------------------
    def widget(self):
        import ipywidgets as W
        names = list(self.pipelines)
        first = self.pipelines[names[0]]
        c = {
            "name": W.Dropdown(options=names, description="pipeline"),
            "azimuth": W.FloatSlider(value=30, min=0, max=360, step=5, description="orbit"),
            "elevation": W.FloatSlider(value=20, min=-80, max=80, step=5, description="elevation"),
            "zoom": W.FloatSlider(value=1.0, min=0.5, max=2.5, step=0.05, description="zoom"),
            "lod": W.IntSlider(value=first.num_lods - 1, min=0, max=first.num_lods - 1, description="LOD"),
            "channel": W.ToggleButtons(options=list(CHANNELS), description="channel"),
            "frustums": W.Checkbox(value=False, description="camera frustums"),
            "occupancy": W.Checkbox(value=False, description="occupancy"),
        }
        image = W.Image(format="png", width=self.size, height=self.size)
        status = W.Label()
        train = W.Button(description=f"train {self.train_steps} steps", icon="play")

        def redraw(*_):
            image.value = self.frame_png(c["name"].value, c["azimuth"].value, c["elevation"].value, c["zoom"].value,
                                         c["lod"].value, c["channel"].value, c["frustums"].value, c["occupancy"].value)
            status.value = f"{self.last_frame_ms:.0f} ms per frame at {self.size}x{self.size} (render, overlays, PNG)"

        def on_pipeline(change):
            c["lod"].max = self.pipelines[change["new"]].num_lods - 1
            c["lod"].value = c["lod"].max
            train.disabled = change["new"] not in self.trainers
            redraw()

        def on_train(_):
            name = c["name"].value
            if name in self.trainers:
                train.disabled = True
                status.value = "training..."
                self.trainers[name](self.train_steps)
                train.disabled = False
                redraw()

        c["name"].observe(on_pipeline, names="value")
        for k, w in c.items():
            if k != "name":
                w.observe(redraw, names="value")
        train.on_click(on_train)
        train.disabled = names[0] not in self.trainers
        redraw()
        controls = W.VBox([c["name"], c["azimuth"], c["elevation"], c["zoom"], c["lod"], c["channel"],
                           W.HBox([c["frustums"], c["occupancy"]]), train, status])
        self._widgets = c
        return W.HBox([image, controls])

    def show(self, name: Optional[str] = None, live: Optional[bool] = None, **turntable_kw):
        """The live widget where a person is looking, else a turntable figure (returned)."""
        live = live_frontend() if live is None else live
        if live:
            from IPython.display import display
            display(self.widget())
            return None
        return self.turntable(name or next(iter(self.pipelines)), **turntable_kw)


def _png(img: np.ndarray) -> bytes:
    """PNG bytes of a float image in [0, 1]; zlib level 1, since a live view is re-encoded every frame."""
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray((np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()
