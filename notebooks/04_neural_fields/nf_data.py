"""Data for the neural-field notebook: an image, a mesh with its exact SDF, and a posed multi-view set.

* ``load_image``: an RGB image as a float tensor (H, W, 3) in [0, 1] (the astronaut).
* ``read_ply``: a small PLY reader (ASCII, binary little- and big-endian; vertices + polygon faces),
  so the notebook needs no mesh library at run time.
* ``Mesh``: vertices/faces with normalisation into the unit box, area-weighted surface sampling,
  the exact signed distance (point-triangle distance, sign from the generalized winding number)
  and SDF training samples (near-surface and uniform, as in NGLOD).
* ``Scene`` + ``render_dataset``: an analytic textured scene (spheres and a box with solid
  procedural textures, Lambertian light, white background) ray-traced exactly from cameras on a
  sphere into train and held-out views, anti-aliased by supersampling.
"""
from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np
import torch

# ------------------------------------------------------------------------------------------------ files

def data_folder(name: str) -> Path:
    """The verified folder of a registered data source (labkit.data.require)."""
    import labkit
    return labkit.data.require(name)


def load_image(path) -> torch.Tensor:
    """PNG/JPEG -> float tensor (H, W, 3) in [0, 1] (alpha dropped, grey expanded)."""
    from PIL import Image
    with Image.open(path) as im:
        arr = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(arr.copy())


_PLY_TYPES = {
    "char": "b", "int8": "b", "uchar": "B", "uint8": "B", "short": "h", "int16": "h", "ushort": "H",
    "uint16": "H", "int": "i", "int32": "i", "uint": "I", "uint32": "I", "float": "f", "float32": "f",
    "double": "d", "float64": "d",
}


def read_ply(path) -> Tuple[np.ndarray, np.ndarray]:
    """Read a PLY file's vertex positions (V, 3) float64 and faces (F, 3) int64 (polygons fanned
    into triangles). Supports format ascii 1.0, binary_little_endian 1.0 and binary_big_endian 1.0."""
    data = Path(path).read_bytes()
    end = data.find(b"end_header")
    if not data.startswith(b"ply") or end < 0:
        raise ValueError(f"{path} is not a PLY file (no 'ply' magic or no end_header)")
    header = data[:end].decode("ascii", errors="replace").splitlines()
    body_start = data.index(b"\n", end) + 1
    fmt, elements = None, []
    for line in header[1:]:
        parts = line.split()
        if not parts or parts[0] in ("comment", "obj_info"):
            continue
        if parts[0] == "format":
            fmt = parts[1]
        elif parts[0] == "element":
            elements.append({"name": parts[1], "count": int(parts[2]), "props": []})
        elif parts[0] == "property":
            if parts[1] == "list":
                elements[-1]["props"].append((parts[4], "list", parts[2], parts[3]))
            else:
                elements[-1]["props"].append((parts[2], parts[1]))
    if fmt not in ("ascii", "binary_little_endian", "binary_big_endian"):
        raise ValueError(f"{path}: unsupported PLY format {fmt!r}")
    verts, faces = None, []
    if fmt == "ascii":
        tokens = data[body_start:].split()
        pos = 0
        for el in elements:
            rows = []
            for _ in range(el["count"]):
                row = {}
                for prop in el["props"]:
                    if prop[1] == "list":
                        n = int(tokens[pos]); pos += 1
                        row[prop[0]] = [int(t) for t in tokens[pos:pos + n]]; pos += n
                    else:
                        row[prop[0]] = float(tokens[pos]); pos += 1
                rows.append(row)
            if el["name"] == "vertex":
                verts = np.array([[r["x"], r["y"], r["z"]] for r in rows], dtype=np.float64)
            elif el["name"] == "face":
                key = el["props"][0][0]
                faces = [r[key] for r in rows]
    else:
        endian = "<" if fmt == "binary_little_endian" else ">"
        pos = body_start
        for el in elements:
            simple = all(p[1] != "list" for p in el["props"])
            if simple:                                            # fixed-size rows: one numpy read
                dtype = np.dtype([(p[0], endian + _PLY_TYPES[p[1]]) for p in el["props"]])
                arr = np.frombuffer(data, dtype=dtype, count=el["count"], offset=pos)
                pos += dtype.itemsize * el["count"]
                if el["name"] == "vertex":
                    verts = np.stack([arr["x"], arr["y"], arr["z"]], -1).astype(np.float64)
                continue
            rows = []
            for _ in range(el["count"]):
                row = {}
                for prop in el["props"]:
                    if prop[1] == "list":
                        cnt_fmt, item_fmt = endian + _PLY_TYPES[prop[2]], _PLY_TYPES[prop[3]]
                        (n,) = struct.unpack_from(cnt_fmt, data, pos); pos += struct.calcsize(cnt_fmt)
                        f = f"{endian}{n}{item_fmt}"
                        row[prop[0]] = list(struct.unpack_from(f, data, pos)); pos += struct.calcsize(f)
                    else:
                        f = endian + _PLY_TYPES[prop[1]]
                        (row[prop[0]],) = struct.unpack_from(f, data, pos); pos += struct.calcsize(f)
                rows.append(row)
            if el["name"] == "face":
                key = el["props"][0][0]
                faces = [r[key] for r in rows]
    if verts is None:
        raise ValueError(f"{path} has no vertex element with x, y, z")
    tris = [(poly[0], poly[k], poly[k + 1]) for poly in faces for k in range(1, len(poly) - 1)]
    return verts, np.asarray(tris, dtype=np.int64).reshape(-1, 3)


def write_ply(path, verts: np.ndarray, faces: np.ndarray, binary: bool = True) -> None:
    """Write a triangle mesh (used by the tests to round-trip the reader)."""
    head = ["ply", f"format {'binary_little_endian' if binary else 'ascii'} 1.0",
            f"element vertex {len(verts)}", "property float x", "property float y", "property float z",
            f"element face {len(faces)}", "property list uchar int vertex_indices", "end_header"]
    out = ("\n".join(head) + "\n").encode()
    if binary:
        out += np.asarray(verts, "<f4").tobytes()
        for f in faces:
            out += struct.pack("<B3i", 3, *map(int, f))
    else:
        out += "".join(f"{x} {y} {z}\n" for x, y, z in verts).encode()
        out += "".join(f"3 {a} {b} {c}\n" for a, b, c in faces).encode()
    Path(path).write_bytes(out)


# ------------------------------------------------------------------------------------------------ mesh
def point_triangle_distance(p: torch.Tensor, tri: torch.Tensor) -> torch.Tensor:
    """Unsigned distance from points p (N, 3) to triangles tri (M, 3, 3): (N, M).

    Ericson's closest-point-on-triangle regions (Real-Time Collision Detection, 5.1.5), with every
    dot product written as a matrix product so the work is (N, M) scalars, in float64."""
    p, tri = p.double(), tri.double()
    a, b, c = tri[:, 0], tri[:, 1], tri[:, 2]
    ab, ac = b - a, c - a
    dot = lambda e, x: p @ e.t() - (e * x).sum(-1)[None]             # e . (p - x) for all pairs
    d1, d2 = dot(ab, a), dot(ac, a)
    d3, d4 = dot(ab, b), dot(ac, b)
    d5, d6 = dot(ab, c), dot(ac, c)
    va, vb, vc = d3 * d6 - d5 * d4, d5 * d2 - d1 * d6, d1 * d4 - d3 * d2
    safe = lambda x: torch.where(x.abs() < 1e-300, torch.full_like(x, 1e-300), x)
    denom = 1.0 / safe(va + vb + vc)
    v, w = vb * denom, vc * denom                                    # face region (default)
    one, zero = torch.ones_like(v), torch.zeros_like(v)
    # edge bc, edge ac, vertex c, edge ab, vertex b, vertex a: later assignments win (Ericson's order)
    e_bc = (va <= 0) & (d4 - d3 >= 0) & (d5 - d6 >= 0)
    t = (d4 - d3) / safe((d4 - d3) + (d5 - d6))
    v, w = torch.where(e_bc, 1 - t, v), torch.where(e_bc, t, w)
    e_ac = (vb <= 0) & (d2 >= 0) & (d6 <= 0)
    t = d2 / safe(d2 - d6)
    v, w = torch.where(e_ac, zero, v), torch.where(e_ac, t, w)
    v_c = (d6 >= 0) & (d5 <= d6)
    v, w = torch.where(v_c, zero, v), torch.where(v_c, one, w)
    e_ab = (vc <= 0) & (d1 >= 0) & (d3 <= 0)
    t = d1 / safe(d1 - d3)
    v, w = torch.where(e_ab, t, v), torch.where(e_ab, zero, w)
    v_b = (d3 >= 0) & (d4 <= d3)
    v, w = torch.where(v_b, one, v), torch.where(v_b, zero, w)
    v_a = (d1 <= 0) & (d2 <= 0)
    v, w = torch.where(v_a, zero, v), torch.where(v_a, zero, w)
    # |p - a - v ab - w ac|^2, expanded (float64 keeps the cancellation harmless)
    pa2 = (p * p).sum(-1)[:, None] - 2 * p @ a.t() + (a * a).sum(-1)[None]
    d2_ = (pa2 - 2 * v * d1 - 2 * w * d2 + v * v * (ab * ab).sum(-1) + 2 * v * w * (ab * ac).sum(-1)
           + w * w * (ac * ac).sum(-1))
    return d2_.clamp_min(0).sqrt()


def winding_number(p: torch.Tensor, tri: torch.Tensor) -> torch.Tensor:
    """Generalized winding number (Jacobson et al. 2013) of points p (N, 3) w.r.t. triangles (M, 3, 3):
    ~1 inside a closed outward-oriented mesh, ~0 outside (solid angles by Van Oosterom-Strackee),
    with the triple products and dot products expanded into matrix products (float64)."""
    p, tri = p.double(), tri.double()
    A, B, C = tri[:, 0], tri[:, 1], tri[:, 2]
    pp = (p * p).sum(-1)[:, None]
    norm = lambda X: (pp - 2 * p @ X.t() + (X * X).sum(-1)[None]).clamp_min(0).sqrt()
    pdot = lambda X, Y: (X * Y).sum(-1)[None] - p @ (X + Y).t() + pp       # (X - p).(Y - p)
    la, lb, lc = norm(A), norm(B), norm(C)
    bxc, cxa, axb = torch.cross(B, C, dim=-1), torch.cross(C, A, dim=-1), torch.cross(A, B, dim=-1)
    num = (A * bxc).sum(-1)[None] - p @ (bxc + cxa + axb).t()
    den = la * lb * lc + pdot(A, B) * lc + pdot(B, C) * la + pdot(C, A) * lb
    return (2 * torch.atan2(num, den)).sum(-1) / (4 * math.pi)


@dataclass
class Mesh:
    verts: torch.Tensor   # (V, 3) float32
    faces: torch.Tensor   # (F, 3) int64

    @classmethod
    def from_ply(cls, path, normalize: float = 0.8, device="cpu") -> "Mesh":
        v, f = read_ply(path)
        m = cls(torch.tensor(v, dtype=torch.float32), torch.tensor(f, dtype=torch.int64))
        if normalize:
            m = m.normalized(normalize)
        return m.to(device)

    def to(self, device) -> "Mesh":
        return Mesh(self.verts.to(device), self.faces.to(device))

    def normalized(self, half_extent: float = 0.8) -> "Mesh":
        """Centre the bounding box at 0 and scale its longest half side to `half_extent`."""
        lo, hi = self.verts.min(0).values, self.verts.max(0).values
        scale = half_extent / ((hi - lo).max() / 2)
        return Mesh((self.verts - (lo + hi) / 2) * scale, self.faces)

    @property
    def triangles(self) -> torch.Tensor:
        return self.verts[self.faces]                                  # (F, 3, 3)

    def is_watertight(self) -> bool:
        """Every edge is shared by exactly two faces."""
        f = self.faces
        edges = torch.cat([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]]).sort(dim=1).values
        _, counts = torch.unique(edges, dim=0, return_counts=True)
        return bool((counts == 2).all())

    def sample_surface(self, n: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """n points uniformly on the surface (area-weighted triangles, uniform barycentrics)."""
        tri = self.triangles
        area = torch.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0], dim=-1).norm(dim=-1)
        idx = torch.multinomial(area, n, replacement=True, generator=generator)
        r1 = torch.rand(n, 1, device=tri.device, generator=generator).sqrt()
        r2 = torch.rand(n, 1, device=tri.device, generator=generator)
        t = tri[idx]
        return (1 - r1) * t[:, 0] + r1 * (1 - r2) * t[:, 1] + r1 * r2 * t[:, 2]

    def sdf(self, p: torch.Tensor, chunk: int = 2048) -> torch.Tensor:
        """Exact signed distance (negative inside) of points (N, 3)."""
        tri = self.triangles
        out = []
        for s in range(0, p.shape[0], chunk):
            q = p[s:s + chunk]
            d = point_triangle_distance(q, tri).min(1).values
            inside = winding_number(q, tri).abs() > 0.5
            out.append(torch.where(inside, -d, d).to(p.dtype))
        return torch.cat(out) if out else p.new_zeros(0)

    def sdf_samples(self, n: int, near_sigma: Tuple[float, ...] = (0.01, 0.05), uniform_frac: float = 0.2,
                    generator: Optional[torch.Generator] = None):
        """NGLOD-style training set: surface points jittered by each sigma, plus uniform box points.
        Returns points (n, 3) and their exact SDF (n,)."""
        n_uni = int(n * uniform_frac)
        per = (n - n_uni) // len(near_sigma)
        parts = []
        for s in near_sigma:
            q = self.sample_surface(per, generator)
            parts.append(q + s * torch.randn(q.shape, device=q.device, generator=generator))
        parts.append(torch.rand(n - per * len(near_sigma), 3, device=self.verts.device, generator=generator) * 2 - 1)
        pts = torch.cat(parts).clamp(-1, 1)
        return pts, self.sdf(pts)


# ------------------------------------------------------------------------------------------------ cameras
def look_at(eye: torch.Tensor, target=(0.0, 0.0, 0.0), up=(0.0, 1.0, 0.0)) -> torch.Tensor:
    """Camera-to-world 3x4 (OpenGL convention: camera looks down -z, y up)."""
    eye = torch.as_tensor(eye, dtype=torch.float32)
    target = torch.as_tensor(target, dtype=torch.float32, device=eye.device)
    up = torch.as_tensor(up, dtype=torch.float32, device=eye.device)
    fwd = target - eye
    fwd = fwd / fwd.norm()
    if torch.cross(fwd, up, dim=0).norm() < 1e-6:                    # looking straight up/down
        up = torch.tensor([0.0, 0.0, 1.0], device=eye.device)
    right = torch.cross(fwd, up, dim=0)
    right = right / right.norm()
    true_up = torch.cross(right, fwd, dim=0)
    return torch.stack([right, true_up, -fwd, eye], dim=1)          # columns: x, y, z axes, position


def orbit_camera(azimuth_deg: float, elevation_deg: float, radius: float, target=(0.0, 0.0, 0.0)) -> torch.Tensor:
    az, el = math.radians(azimuth_deg), math.radians(elevation_deg)
    eye = torch.tensor([radius * math.cos(el) * math.sin(az), radius * math.sin(el),
                        radius * math.cos(el) * math.cos(az)]) + torch.tensor(target)
    return look_at(eye, target)


def sphere_cameras(n: int, radius: float, seed: int = 0, min_elevation: float = -30.0,
                   max_elevation: float = 80.0) -> torch.Tensor:
    """n cameras on a sphere looking at the origin (Fibonacci spiral in azimuth, elevation range)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    golden = math.pi * (3 - math.sqrt(5))
    jitter = torch.rand(n, generator=g)
    for i in range(n):
        s = (i + 0.5 * (1 + jitter[i].item())) / (n + 1)
        el = min_elevation + (max_elevation - min_elevation) * s
        az = math.degrees(i * golden + seed) % 360
        out.append(orbit_camera(az, el, radius))
    return torch.stack(out)


def camera_pose(c2w: torch.Tensor) -> torch.Tensor:
    """A camera-to-world pose as (3, 4): a (3, 4) matrix as is, a homogeneous (4, 4) one whose last row
    is (0, 0, 0, 1) without that row; anything else is an error."""
    c2w = torch.as_tensor(c2w)
    if c2w.shape == (4, 4):
        if not torch.allclose(c2w[3].double().cpu(), torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=torch.float64)):
            raise ValueError(f"a 4x4 camera-to-world pose must end in the row (0, 0, 0, 1); got {c2w[3].tolist()}")
        c2w = c2w[:3]
    if c2w.shape != (3, 4):
        raise ValueError(f"camera pose must be a camera-to-world matrix of shape (3, 4) or (4, 4); got {tuple(c2w.shape)}")
    return c2w.float()


def camera_rays(c2w: torch.Tensor, width: int, height: int, fov_deg: float, offset=(0.5, 0.5)):
    """Ray origins and unit directions (H*W, 3) through pixel (i + offset) of a pinhole camera.
    c2w: camera-to-world (3, 4), or (4, 4) with last row (0, 0, 0, 1)."""
    c2w = camera_pose(c2w)
    device = c2w.device
    focal = 0.5 * width / math.tan(0.5 * math.radians(fov_deg))
    j, i = torch.meshgrid(torch.arange(height, device=device, dtype=torch.float32),
                          torch.arange(width, device=device, dtype=torch.float32), indexing="ij")
    dirs = torch.stack([(i + offset[0] - width / 2) / focal, -(j + offset[1] - height / 2) / focal,
                        -torch.ones_like(i)], -1).reshape(-1, 3)
    d = dirs @ c2w[:, :3].t()
    d = d / d.norm(dim=-1, keepdim=True)
    o = c2w[:, 3].expand_as(d)
    return o.contiguous(), d


# ------------------------------------------------------------------------------------------------ scene
class Scene:
    """Spheres and an axis-aligned box with solid procedural textures, lit by a directional light."""

    def __init__(self, device="cpu"):
        t = lambda *v: torch.tensor(v, dtype=torch.float32, device=device)
        self.spheres = [(t(-0.35, 0.05, -0.15), 0.38), (t(0.42, 0.3, 0.12), 0.26), (t(0.25, -0.45, -0.45), 0.2)]
        self.box = (t(0.15, -0.4, 0.35), t(0.3, 0.22, 0.25))          # centre, half sizes
        self.light = t(0.4, 0.8, 0.45) / t(0.4, 0.8, 0.45).norm()
        self.background = t(1.0, 1.0, 1.0)

    def texture(self, obj: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Albedo (N, 3) of object ids obj at points x."""
        checker = ((torch.floor(x * 6).sum(-1)) % 2)[:, None]
        stripes = (0.5 + 0.5 * torch.sin(18 * x[:, 1:2] + 6 * x[:, 0:1]))
        rings = (0.5 + 0.5 * torch.cos(25 * x[:, [0, 2]].norm(dim=-1, keepdim=True)))
        c0 = checker * torch.tensor([0.9, 0.25, 0.2], device=x.device) + (1 - checker) * torch.tensor([0.95, 0.85, 0.3], device=x.device)
        c1 = stripes * torch.tensor([0.2, 0.45, 0.9], device=x.device) + (1 - stripes) * torch.tensor([0.9, 0.9, 0.95], device=x.device)
        c2 = rings * torch.tensor([0.25, 0.7, 0.3], device=x.device) + (1 - rings) * torch.tensor([0.1, 0.25, 0.15], device=x.device)
        grid = ((x * 10).frac() - 0.5).abs().min(-1).values[:, None] > 0.08
        c3 = torch.where(grid, torch.tensor([0.55, 0.35, 0.7], device=x.device), torch.tensor([0.15, 0.1, 0.2], device=x.device))
        table = torch.stack([c0, c1, c2, c3], 1)                       # (N, 4, 3)
        return table[torch.arange(x.shape[0], device=x.device), obj.clamp(0, 3)]

    def intersect(self, o: torch.Tensor, d: torch.Tensor):
        """Nearest hit: t (N,) (inf if none), object id (N,), normal (N, 3)."""
        n = o.shape[0]
        best_t = torch.full((n,), float("inf"), device=o.device)
        obj = torch.full((n,), -1, dtype=torch.long, device=o.device)
        normal = torch.zeros_like(o)
        for k, (c, r) in enumerate(self.spheres):
            oc = o - c
            b = (oc * d).sum(-1)
            disc = b * b - ((oc * oc).sum(-1) - r * r)
            t = -b - disc.clamp_min(0).sqrt()
            hit = (disc > 0) & (t > 1e-4) & (t < best_t)
            best_t = torch.where(hit, t, best_t)
            obj = torch.where(hit, torch.full_like(obj, k), obj)
            normal = torch.where(hit[:, None], (o + t[:, None] * d - c) / r, normal)
        c, h = self.box
        inv = 1.0 / torch.where(d.abs() < 1e-9, torch.full_like(d, 1e-9), d)
        t0, t1 = (c - h - o) * inv, (c + h - o) * inv
        tmin, tmax = torch.minimum(t0, t1), torch.maximum(t0, t1)
        tn, axis = tmin.max(-1)
        tf = tmax.min(-1).values
        hit = (tn <= tf) & (tn > 1e-4) & (tn < best_t)
        best_t = torch.where(hit, tn, best_t)
        obj = torch.where(hit, torch.full_like(obj, 3), obj)
        nb = torch.zeros_like(o).scatter_(1, axis[:, None], -torch.sign(d.gather(1, axis[:, None])))
        normal = torch.where(hit[:, None], nb, normal)
        return best_t, obj, normal

    def shade(self, o: torch.Tensor, d: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Colour (N, 3) and depth (N,) (inf for background) of rays."""
        t, obj, n = self.intersect(o, d)
        hit = torch.isfinite(t)
        x = o + torch.where(hit, t, torch.zeros_like(t))[:, None] * d
        albedo = self.texture(obj, x)
        lam = (n * self.light).sum(-1, keepdim=True).clamp_min(0)
        # shadows: a ray toward the light that hits anything darkens the point
        ts, _, _ = self.intersect(x + 1e-3 * n, self.light.expand_as(x))
        lit = (~torch.isfinite(ts)).float()[:, None]
        colour = albedo * (0.35 + 0.65 * lam * lit)
        colour = torch.where(hit[:, None], colour, self.background.expand_as(colour))
        return colour.clamp(0, 1), t

    def render(self, c2w: torch.Tensor, width: int, height: int, fov_deg: float, supersample: int = 2):
        """Anti-aliased image (H, W, 3) and the centre ray's depth (H, W)."""
        acc = 0
        for a in range(supersample):
            for b in range(supersample):
                off = ((a + 0.5) / supersample, (b + 0.5) / supersample)
                o, d = camera_rays(c2w, width, height, fov_deg, off)
                acc = acc + self.shade(o, d)[0]
        o, d = camera_rays(c2w, width, height, fov_deg)
        depth = self.shade(o, d)[1]
        return (acc / supersample ** 2).reshape(height, width, 3), depth.reshape(height, width)


@dataclass
class MultiViewDataset:
    images: torch.Tensor      # (V, H, W, 3)
    poses: torch.Tensor       # (V, 3, 4) camera-to-world
    width: int
    height: int
    fov_deg: float
    masks: Optional[torch.Tensor] = None    # (V, H, W) bool: the pixel's centre ray hits an object

    def rays(self) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """All rays: origins, directions (V*H*W, 3) and colours (V*H*W, 3)."""
        os_, ds = zip(*[camera_rays(p, self.width, self.height, self.fov_deg) for p in self.poses])
        return torch.cat(os_), torch.cat(ds), self.images.reshape(-1, 3)

    def to(self, device) -> "MultiViewDataset":
        return MultiViewDataset(self.images.to(device), self.poses.to(device), self.width, self.height, self.fov_deg,
                                None if self.masks is None else self.masks.to(device))


def render_dataset(scene: Scene, n_train: int, n_test: int, size: int, fov_deg: float = 40.0,
                   radius: float = 2.7, seed: int = 0, supersample: int = 2) -> Dict[str, MultiViewDataset]:
    """Train and held-out views of `scene` from cameras on a sphere (different seeds, so the held-out
    cameras are not among the training ones). Each view's mask marks the object pixels (centre ray hits)."""
    out = {}
    for split, n, s in (("train", n_train, seed), ("test", n_test, seed + 1000)):
        poses = sphere_cameras(n, radius, seed=s)
        dev = scene.light.device
        imgs, masks = zip(*[scene.render(p.to(dev), size, size, fov_deg, supersample) for p in poses])
        out[split] = MultiViewDataset(torch.stack(imgs), poses.to(dev), size, size, fov_deg,
                                      torch.isfinite(torch.stack(masks)))
    return out


def check_image_pair(pred: torch.Tensor, target: torch.Tensor, what: str = "PSNR") -> None:
    """Images compared by a metric: same shape, floating point, values in [0, 1]. A prediction may
    stray a little outside [0, 1] (it is clipped, as a display would); 0..255 images are refused."""
    if pred.shape != target.shape:
        raise ValueError(f"{what}: prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    for name, img, lo, hi in (("target", target, 0.0, 1.0), ("prediction", pred, -0.5, 1.5)):
        if not img.is_floating_point():
            raise TypeError(f"{what}: the {name} is {img.dtype}; convert to float in [0, 1] (e.g. uint8 / 255)")
        if img.numel():
            mn, mx = float(img.min()), float(img.max())
            if mn < lo - 1e-3 or mx > hi + 1e-3:
                raise ValueError(f"{what}: the {name} has values in [{mn:.3g}, {mx:.3g}], outside [0, 1]; "
                                 "images must be scaled to [0, 1] (divide 0..255 images by 255)")


def psnr(pred: torch.Tensor, target: torch.Tensor, mask: Optional[torch.Tensor] = None) -> float:
    """Peak signal-to-noise ratio in dB for images (..., C) in [0, 1]; with a boolean mask of shape
    pred.shape[:-1], over the masked pixels only (NaN if the mask is empty)."""
    check_image_pair(pred, target)
    err = (pred.float().clamp(0, 1) - target.float()) ** 2
    if mask is not None:
        if mask.shape != pred.shape[:-1]:
            raise ValueError(f"PSNR mask {tuple(mask.shape)} must match the image's pixels {tuple(pred.shape[:-1])}")
        if not bool(mask.any()):
            return float("nan")
        err = err[mask.bool()]
    mse = torch.mean(err).item()
    return float("inf") if mse == 0 else -10.0 * math.log10(mse)


def ssim(pred: torch.Tensor, target: torch.Tensor, mask: Optional[torch.Tensor] = None, sigma: float = 1.5,
         k1: float = 0.01, k2: float = 0.03) -> float:
    """Structural similarity (Wang et al. 2004) of images (H, W, C) in [0, 1]: Gaussian window of
    sigma 1.5 (11x11), data range 1, the mean over channels and over the pixels whose window lies
    inside the image; this is scikit-image's structural_similarity(gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=1) (tests/test_data.py compares the two). With a mask
    (H, W), the SSIM map is averaged over the masked pixels among those."""
    check_image_pair(pred, target, "SSIM")
    if pred.ndim != 3:
        raise ValueError(f"SSIM expects images (H, W, C); got {tuple(pred.shape)}")
    r = int(3.5 * sigma + 0.5)                                # scikit-image's truncate=3.5 radius
    if min(pred.shape[:2]) < 2 * r + 1:
        raise ValueError(f"SSIM needs images of at least {2 * r + 1}x{2 * r + 1} pixels; got {tuple(pred.shape[:2])}")
    g = torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=torch.float64) / sigma) ** 2)
    g = (g / g.sum()).to(pred.device)
    win = (g[:, None] * g[None, :])[None, None]              # (1, 1, 2r+1, 2r+1)
    x = pred.double().clamp(0, 1).permute(2, 0, 1)[:, None]  # (C, 1, H, W)
    y = target.double().permute(2, 0, 1)[:, None]
    blur = lambda z: torch.nn.functional.conv2d(z, win)       # valid region only
    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    c1, c2 = k1 ** 2, k2 ** 2
    smap = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    smap = smap.mean(0)[0]                                    # mean over channels: (H - 2r, W - 2r)
    if mask is None:
        return float(smap.mean())
    if mask.shape != pred.shape[:2]:
        raise ValueError(f"SSIM mask {tuple(mask.shape)} must match the image's pixels {tuple(pred.shape[:2])}")
    m = mask.bool()[r:-r, r:-r]
    return float(smap[m].mean()) if bool(m.any()) else float("nan")
