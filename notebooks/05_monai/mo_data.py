"""Data for the MONAI notebook: the MNI152 brain, tissue labels, synthetic "subjects", test volumes, DICOM.

Everything here is offline. The MNI152 2009a template (T1 + grey/white-matter probability maps, from the
`mni152` data source) is ONE averaged brain. Two kinds of "subjects" are made from it:

- synthetic (training and validation), the way SynthSeg does it: the template's label maps are deformed at
  random, given CSF and synthetic skull/scalp shells, and an image is *synthesised from the labels* (random
  intensity per structure, blur, bias field, gamma, noise: mo_transforms.synthesize). No real T1 intensity
  is used, so a network trained on them has to segment by shape and local contrast.
- real-intensity (testing): the template's own T1, deformed and with scanner-like intensity changes, and
  the undeformed template T1 itself. The generator above never produces these images.
Both are deformations of the same one brain, and the notebook says so: the test measures generalisation to
real T1 intensities, not to other people's anatomy.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

LABEL_NAMES = {0: "background", 1: "grey matter", 2: "white matter"}


@dataclass
class Template:
    t1: np.ndarray        # float32, 0..1
    gm: np.ndarray        # float32 probability 0..1
    wm: np.ndarray        # float32 probability 0..1
    affine: np.ndarray    # 4x4 voxel -> mm (RAS)

    @property
    def spacing(self) -> Tuple[float, float, float]:
        return tuple(float(s) for s in np.sqrt((self.affine[:3, :3] ** 2).sum(0)))


def load_mni152(folder: Optional[Path] = None) -> Template:
    """The MNI152 template from the registered `mni152` data source (t1/gm/wm .nii.gz)."""
    import nibabel as nib
    if folder is None:
        import labkit
        folder = labkit.data.require("mni152")
    folder = Path(folder)
    vols = {}
    for name in ("t1", "gm", "wm"):
        img = nib.load(str(folder / f"{name}.nii.gz"))
        vols[name] = (np.asarray(img.dataobj, dtype=np.float32) / 255.0).astype(np.float32)
        affine = img.affine
    return Template(vols["t1"], vols["gm"], vols["wm"], np.asarray(affine, dtype=np.float64))


def tissue_labels(gm: np.ndarray, wm: np.ndarray, min_tissue: float = 0.3) -> np.ndarray:
    """3-class map: 0 background, 1 grey matter, 2 white matter.

    A voxel is tissue when gm + wm >= `min_tissue`; it gets the class with the larger probability.
    """
    gm = np.asarray(gm, dtype=np.float32)
    wm = np.asarray(wm, dtype=np.float32)
    lab = np.where(wm > gm, 2, 1).astype(np.uint8)
    lab[(gm + wm) < min_tissue] = 0
    return lab


def brain_bbox(mask: np.ndarray, margin: int = 4) -> Tuple[slice, slice, slice]:
    idx = np.argwhere(mask)
    lo = np.maximum(idx.min(0) - margin, 0)
    hi = np.minimum(idx.max(0) + 1 + margin, mask.shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))


def resample_template(tpl: Template, spacing: float) -> Template:
    """Crop to the brain and resample to isotropic `spacing` mm (linear for images and probabilities)."""
    from scipy import ndimage
    box = brain_bbox((tpl.t1 > 0) | (tpl.gm + tpl.wm > 0.05))
    t1, gm, wm = (v[box] for v in (tpl.t1, tpl.gm, tpl.wm))
    src = np.array(tpl.spacing)
    zoom = src / spacing
    out = [ndimage.zoom(v, zoom, order=1, prefilter=False).astype(np.float32) for v in (t1, gm, wm)]
    affine = tpl.affine.copy()
    offset = np.array([s.start for s in box], dtype=np.float64)
    affine[:3, 3] = tpl.affine[:3, :3] @ offset + tpl.affine[:3, 3]
    affine[:3, :3] = tpl.affine[:3, :3] / src * spacing
    return Template(out[0], out[1], out[2], affine)


def _smooth_field(shape, rng, sigma: float, amplitude: float) -> np.ndarray:
    """A smooth random scalar field on `shape` (noise on a coarse grid, upsampled, scaled to +-amplitude)."""
    from scipy import ndimage
    coarse = [max(2, int(round(s / sigma))) for s in shape]
    noise = rng.standard_normal(coarse).astype(np.float32)
    field = ndimage.zoom(noise, [s / c for s, c in zip(shape, coarse)], order=3)
    field = field[: shape[0], : shape[1], : shape[2]]
    pad = [(0, s - f) for s, f in zip(shape, field.shape)]
    field = np.pad(field, pad, mode="edge")
    m = np.abs(field).max()
    return (field / (m + 1e-6) * amplitude).astype(np.float32)


def _random_warp(shape, spacing, rng: np.random.Generator, max_rot_deg: float = 8.0, max_scale: float = 0.08,
                 warp_mm: float = 3.0, warp_scale_mm: float = 24.0):
    """A random affine (rotation, scaling about the centre) plus a smooth displacement field, as a function
    that resamples a volume (linear interpolation, zero outside)."""
    from scipy import ndimage
    sp = np.asarray(spacing, dtype=np.float64)
    centre = (np.array(shape) - 1) / 2.0
    ang = np.deg2rad(rng.uniform(-max_rot_deg, max_rot_deg, 3))
    cx, cy, cz = np.cos(ang)
    sx, sy, sz = np.sin(ang)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    scale = np.diag(1.0 + rng.uniform(-max_scale, max_scale, 3))
    A = rx @ ry @ rz @ scale
    grid = np.indices(shape, dtype=np.float32).reshape(3, -1) - centre[:, None]
    coords = ((A @ grid) + centre[:, None]).reshape((3,) + tuple(shape)).astype(np.float32)
    for ax in range(3):
        coords[ax] += _smooth_field(shape, rng, warp_scale_mm / sp[ax], warp_mm / sp[ax])
    return lambda v: ndimage.map_coordinates(v, coords, order=1, mode="constant", cval=0.0, prefilter=False)


def random_subject(tpl: Template, rng: np.random.Generator, bias: float = 0.25, noise: float = 0.03,
                   **warp_args) -> Tuple[np.ndarray, np.ndarray]:
    """A real-intensity test "subject": the template's T1 deformed (random affine + smooth warp) with
    intensity changes (bias field, gamma, contrast, Rician-like noise).

    Returns (t1 float32 0..~1, label uint8). The label is computed from the deformed GM/WM maps, so image
    and label move together exactly.
    """
    shape = tpl.t1.shape
    sp = np.array(tpl.spacing)
    warp = _random_warp(shape, sp, rng, **warp_args)
    t1, gm, wm = warp(tpl.t1), warp(tpl.gm), warp(tpl.wm)
    label = tissue_labels(gm, wm)
    brain = t1 > 0.02
    field = np.exp(_smooth_field(shape, rng, 40.0 / sp[0], bias))
    gamma = float(np.exp(rng.uniform(-0.3, 0.3)))
    t1 = np.clip(t1, 0, None) ** gamma * field
    t1 = t1 * rng.uniform(0.8, 1.2) + rng.uniform(-0.05, 0.05) * brain
    t1 = np.sqrt((t1 + rng.normal(0, noise, shape)) ** 2 + rng.normal(0, noise, shape) ** 2)
    return t1.astype(np.float32), label


# the structures a synthetic image is drawn from (the training target keeps only 0, 1, 2)
GEN_LABELS = {0: "air", 1: "grey matter", 2: "white matter", 3: "CSF", 4: "CSF/dura outside the brain",
              5: "skull", 6: "scalp"}
SHELL_MM = 24.0   # room around the brain for the synthetic shells


def pad_template(tpl: Template, mm: float = SHELL_MM) -> Template:
    """The template with `mm` of empty space added on every side (the affine keeps voxels in place)."""
    n = int(np.ceil(mm / min(tpl.spacing)))
    pad = lambda v: np.pad(v, n)
    affine = tpl.affine.copy()
    affine[:3, 3] -= affine[:3, :3] @ np.full(3, n)
    return Template(pad(tpl.t1), pad(tpl.gm), pad(tpl.wm), affine)


def generation_labels(tpl: Template, rng: np.random.Generator, p_shells: float = 0.8,
                      **warp_args) -> Tuple[np.ndarray, np.ndarray]:
    """A deformed label map of the structures in GEN_LABELS (uint8) and its 3-class training label.

    The brain is the template's (skull-stripped) head: tissue where GM+WM >= 0.3, CSF elsewhere inside it.
    With probability `p_shells` it gets random-thickness shells around it: CSF/dura (1-4 mm), skull (3-8 mm),
    scalp (2-7 mm), as SynthSeg's label maps have; otherwise it stays skull-stripped like the test images.
    `tpl` should be padded (pad_template) so that the shells fit."""
    from scipy import ndimage
    sp = np.array(tpl.spacing)
    warp = _random_warp(tpl.t1.shape, sp, rng, **warp_args)
    t1, gm, wm = warp(tpl.t1), warp(tpl.gm), warp(tpl.wm)
    label = tissue_labels(gm, wm)
    brain = ndimage.binary_fill_holes((t1 > 0.02) | (label > 0))
    gen = label.copy()
    gen[brain & (label == 0)] = 3
    if rng.random() < p_shells:
        d = ndimage.distance_transform_edt(~brain, sampling=sp)
        r1 = rng.uniform(1, 4)
        r2 = r1 + rng.uniform(3, 8)
        r3 = r2 + rng.uniform(2, 7)
        gen[(d > 0) & (d <= r1)] = 4
        gen[(d > r1) & (d <= r2)] = 5
        gen[(d > r2) & (d <= r3)] = 6
    return gen.astype(np.uint8), label


def draw_image(gen: np.ndarray, seed: Sequence[int], p_t1_like: float = 1.0) -> np.ndarray:
    """One image drawn from a generation label map by mo_transforms.synthesize (training draws a new one
    every time it uses the subject; this one is kept in the file for validation and for looking at).
    Structure means in the T1 order by default: validation asks for the contrast the test images have (a
    uniform draw can make grey and white matter equally bright, and no Dice target means anything there),
    with the generator's random bias, blur, gamma and noise, and never a test image's intensities."""
    import torch
    import mo_transforms
    rng = np.random.default_rng(list(seed))
    g = torch.Generator().manual_seed(int(rng.integers(1 << 62)))
    return mo_transforms.synthesize(torch.from_numpy(gen)[None], np.random.RandomState(int(rng.integers(1 << 31))),
                                    g, p_t1_like)[0].numpy()


def _save(arr: np.ndarray, affine: np.ndarray, path: str) -> None:
    import nibabel as nib
    tmp = Path(path).with_name(".tmp_" + Path(path).name)
    nib.save(nib.Nifti1Image(arr, affine), str(tmp))
    tmp.replace(path)


def _write_one(args) -> None:
    """Worker: a real-intensity subject (image, label) or a synthetic one's label maps (label, gen); numpy and
    scipy only, so forked workers never touch torch's thread pools."""
    tpl, kind, seed, i, paths = args
    rng = np.random.default_rng([seed, i])
    arrays = random_subject(tpl, rng) if kind == "real" else generation_labels(tpl, rng)[::-1]
    for arr, path in zip(arrays, paths):
        _save(arr, tpl.affine, path)


def write_subjects(tpl: Template, out_dir: Path, n: int, seed: int, prefix: str = "subj",
                   workers: int = 1, kind: str = "real") -> List[Dict[str, str]]:
    """Write n subjects as NIfTI and return MONAI-style datalist dicts {"image", "label", "id"} (synthetic
    ones also "gen", their generation label map). kind: "real" (random_subject) or "synth" (generation_labels
    on the template padded for the shells, and one image drawn from them).

    Re-uses files written before with the same parameters (a small JSON manifest records them).
    """
    if kind not in ("real", "synth"):
        raise ValueError(f"kind={kind!r}; use 'real' or 'synth'")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if kind == "synth":
        tpl = pad_template(tpl)
    manifest = out_dir / f"{prefix}_manifest.json"
    key = {"n": n, "seed": seed, "shape": list(tpl.t1.shape), "spacing": list(tpl.spacing), "kind": kind, "v": 6}
    names = ("image", "label") + (("gen",) if kind == "synth" else ())
    suffix = {"image": "t1", "label": "label", "gen": "gen"}
    items = [{**{k: str(out_dir / f"{prefix}{i:03d}_{suffix[k]}.nii.gz") for k in names}, "id": f"{prefix}{i:03d}"}
             for i in range(n)]
    if manifest.exists() and json.loads(manifest.read_text()) == key and all(
            Path(it[k]).exists() for it in items for k in names):
        return items
    files = ("image", "label") if kind == "real" else ("label", "gen")
    jobs = [(tpl, kind, seed, i, [it[k] for k in files]) for i, it in enumerate(items)]
    if workers > 1:
        import multiprocessing as mp
        with mp.get_context("fork").Pool(workers) as pool:
            pool.map(_write_one, jobs)
    else:
        for job in jobs:
            _write_one(job)
    if kind == "synth":      # one image per subject, drawn here (torch) from the label maps the workers wrote
        import nibabel as nib
        for i, it in enumerate(items):
            _save(draw_image(np.asarray(nib.load(it["gen"]).dataobj), (seed, i, 1)), tpl.affine, it["image"])
    tmp = manifest.with_suffix(".tmp")
    tmp.write_text(json.dumps(key))
    tmp.replace(manifest)
    return items


def write_template_item(tpl: Template, out_dir: Path, name: str = "mni152_real_t1") -> Dict[str, str]:
    """The undeformed template T1 and its label as a test item: real intensities, never synthesised."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    item = {"image": str(out_dir / f"{name}_t1.nii.gz"), "label": str(out_dir / f"{name}_label.nii.gz"), "id": name}
    for arr, path in ((tpl.t1, item["image"]), (tissue_labels(tpl.gm, tpl.wm), item["label"])):
        _save(arr, tpl.affine, path)
    return item


def threshold_baseline(image: np.ndarray) -> np.ndarray:
    """The no-learning rule: two intensity thresholds (multi-Otsu over the non-zero voxels) split a T1 into
    background/CSF (darkest), grey matter and white matter (brightest). It knows T1 contrast and nothing else."""
    from skimage.filters import threshold_multiotsu
    x = np.asarray(image, dtype=np.float32)
    fg = x != 0
    t_gm, t_wm = threshold_multiotsu(x[fg], classes=3)
    lab = np.zeros(x.shape, np.uint8)
    lab[fg & (x > t_gm)] = 1
    lab[fg & (x > t_wm)] = 2
    return lab


def synthetic_volumes(n: int, size: int, num_seg_classes: int = 2, seed: int = 0,
                      num_objs: int = 6, rad_max: Optional[int] = None) -> List[Tuple[np.ndarray, np.ndarray]]:
    """MONAI's own synthetic 3-D segmentation data: `create_test_image_3d` spheres in noise."""
    from monai.data import create_test_image_3d
    rs = np.random.RandomState(seed)
    rad_max = rad_max or max(3, size // 6)
    out = []
    for _ in range(n):
        img, seg = create_test_image_3d(size, size, size, num_objs=num_objs, rad_max=rad_max,
                                        rad_min=max(2, rad_max // 3), num_seg_classes=num_seg_classes,
                                        channel_dim=None, random_state=rs)
        out.append((img.astype(np.float32), seg.astype(np.uint8)))
    return out


def read_dicom_samples(folder: Optional[Path] = None):
    """Read the pydicom test files (CT_small.dcm, MR_small.dcm) through MONAI's PydicomReader.

    Returns {name: MetaTensor} (channel-first after EnsureChannelFirst), with the DICOM meta data kept.
    """
    from monai.transforms import Compose, EnsureChannelFirst, LoadImage
    if folder is None:
        import labkit
        folder = labkit.data.require("dicom_samples")
    load = Compose([LoadImage(reader="PydicomReader", image_only=True), EnsureChannelFirst()])
    return {name: load(str(Path(folder) / f"{name}.dcm")) for name in ("CT_small", "MR_small")}


def read_nibabel_sample(folder: Optional[Path] = None):
    """nibabel's real MR test volume (anatomical.nii, 33x41x25) through MONAI's NibabelReader."""
    from monai.transforms import LoadImage
    if folder is None:
        import labkit
        folder = labkit.data.require("nibabel_samples")
    return LoadImage(reader="NibabelReader", image_only=True)(str(Path(folder) / "anatomical.nii"))


class LabelError(ValueError):
    """A label map that does not fit its image or the label set (the message names the file)."""


def check_label(label_img, name: str, image_shape: Sequence[int], image_affine: Optional[np.ndarray] = None,
                num_classes: int = len(LABEL_NAMES), atol_mm: float = 1e-3) -> np.ndarray:
    """Check a label map (a nibabel image) against its image and the label set; return its values as uint8.

    A label map must be stored as integers (a float map such as 0/0.5/1 would be cast, and 0.5 silently
    become a class), hold only classes 0..num_classes-1, have the image's 3-D shape and the same voxel-to-mm
    affine (else label and image voxels would not be the same places). Raises LabelError naming `name`."""
    dtype = label_img.get_data_dtype()
    arr = np.asanyarray(label_img.dataobj)
    if dtype.kind not in "iub" or arr.dtype.kind not in "iub":
        frac = np.unique(arr[np.mod(arr, 1) != 0])[:5] if arr.dtype.kind == "f" else []
        raise LabelError(f"label map {name} is stored as {arr.dtype} (file dtype {dtype}); a label map holds integer "
                         f"classes 0..{num_classes - 1}" + (f", and this one has non-integer values {list(frac)}"
                                                           if len(frac) else ""))
    arr = np.squeeze(arr) if arr.ndim > 3 else arr
    if tuple(arr.shape) != tuple(image_shape)[:3] or arr.ndim != 3:
        raise LabelError(f"label map {name} has shape {tuple(arr.shape)}; its image has shape {tuple(image_shape)}")
    bad = np.setdiff1d(np.unique(arr), np.arange(num_classes))
    if bad.size:
        raise LabelError(f"label map {name} has values {bad[:10].tolist()} outside the label set "
                         f"0..{num_classes - 1} ({', '.join(LABEL_NAMES.values())})")
    if image_affine is not None and not np.allclose(label_img.affine, image_affine, atol=atol_mm):
        raise LabelError(f"label map {name} has a different voxel-to-mm affine from its image "
                         f"(largest difference {np.abs(label_img.affine - image_affine).max():.3g}); "
                         "resample it onto the image grid first")
    return arr.astype(np.uint8)


def check_items(items: Sequence[dict], num_classes: int = len(LABEL_NAMES)) -> None:
    """check_label for every label map of a datalist against its image (or, for synthetic items, its
    generation label map): headers of the images, whole label maps."""
    import nibabel as nib
    for it in items:
        if "label" not in it:
            continue
        img = nib.load(str(it.get("image") or it["gen"]))
        check_label(nib.load(str(it["label"])), str(it["label"]), img.shape, img.affine, num_classes)


def split(items: Sequence, n_train: int, n_val: int) -> Tuple[list, list, list]:
    items = list(items)
    return items[:n_train], items[n_train:n_train + n_val], items[n_train + n_val:]
