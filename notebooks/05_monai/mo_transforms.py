"""MONAI dictionary-transform pipelines for the brain-tissue task.

    load -> channel first -> orientation (RAS) -> spacing -> intensity (percentiles to 0..1) -> crop foreground
        -> [cache boundary] -> (to GPU) -> random crops by label class -> random affine

The deterministic part comes first so that `CacheDataset` can cache its output (MONAI caches every
transform up to the first random one). In the "fast" recipe `EnsureTyped(device=cuda)` sits right at the
boundary, so the random crops and the random affine run on the GPU.

Synthetic training (SynthSeg-style, `synth=True`): the cached volumes are label maps ("gen", the structures
of mo_data.GEN_LABELS, and "label"), and the first random transform, `RandSynthd`, draws a new image from
"gen" every time (random intensity per structure, blur, bias field, gamma, noise), on the data's device.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch
from monai.transforms import (
    Activationsd, AsDiscreted, ClassesToIndicesd, Compose, CropForegroundd, DeleteItemsd, EnsureChannelFirstd,
    EnsureTyped, Invertd, LoadImaged, MapTransform, Orientationd, RandAffined, RandCropByLabelClassesd,
    RandomizableTransform, ScaleIntensityRangePercentilesd, Spacingd,
)

KEYS = ("image", "label")
# Intensity scaling of every image (training, validation, test, inference, the bundle, the Label app): the
# 0.5th..99.5th percentile range to 0..1, clipped, as SynthSeg normalises. Not a z-score over the non-zero
# voxels: that puts a skull-stripped T1's zero background at the brain's mean intensity, which in a T1 is
# grey matter's, so the brain's outer border vanishes (measured: real T1 GM -0.17, background 0.00).
PERCENTILES = dict(lower=0.5, upper=99.5, b_min=0.0, b_max=1.0, clip=True)
# what the letters of axcodes="RAS" mean: towards Right, Anterior, Superior (the NIfTI sense)
RAS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))


def deterministic(pixdim: float, keys: Sequence[str] = KEYS, margin: int = 4, reader=None) -> list:
    """The part of the pipeline that gives the same output every epoch (cacheable). `reader`: LoadImaged's
    image reader (default: chosen by file type). Keys other than "image" are label maps (nearest-neighbour
    resampling, uint8); without an "image" the foreground crop follows "gen" (synthetic training)."""
    keys = list(keys)
    labels = [k for k in keys if k != "image"]
    out = [
        LoadImaged(keys=keys, image_only=False, reader=reader),
        EnsureChannelFirstd(keys=keys),
        Orientationd(keys=keys, axcodes="RAS", labels=RAS_LABELS),
        Spacingd(keys=keys, pixdim=(pixdim,) * 3, mode=tuple("bilinear" if k == "image" else "nearest" for k in keys)),
    ]
    if "image" in keys:
        out.append(ScaleIntensityRangePercentilesd(keys="image", **PERCENTILES))
    out.append(CropForegroundd(keys=keys, source_key="image" if "image" in keys else "gen", margin=margin,
                               allow_smaller=True))
    if labels:
        out.append(EnsureTyped(keys=labels, dtype=torch.uint8))
    return out


# Share of drawn images whose structure means follow a generic T1 ordering (t1_like_means) instead of being
# uniform at random (contrast-agnostic); SynthSeg's authors train both ways (uniform priors, or priors of one
# contrast: Billot et al., MIDL 2020). All T1-ordered here: on the CPU probe (mo_probe.py, 3 mm, SGD, 2-core
# CPU) the real T1's Dice after 100 steps was 0.37 with half the draws uniform and 0.75 with none.
P_T1_LIKE = 1.0


def t1_like_means(R: np.random.RandomState, n: int) -> np.ndarray:
    """Random structure means in a generic T1 order (GEN_LABELS): CSF and dura dark, grey matter in the middle,
    white matter brighter than grey, skull dark, scalp (fat) bright; wide ranges, not fitted to any image."""
    gm = R.uniform(0.3, 0.7)
    ranges = {0: (0.0, 0.1), 1: (gm, gm), 2: (gm + 0.08, min(1.0, gm + 0.4)), 3: (0.0, gm - 0.15),
              4: (0.0, gm - 0.1), 5: (0.0, 0.3), 6: (0.3, 1.0)}
    return np.array([R.uniform(*ranges.get(i, (0.0, 1.0))) for i in range(n)])


def gaussian_blur(x: torch.Tensor, sigma: Sequence[float], truncated: float = 4.0) -> torch.Tensor:
    """MONAI's GaussianFilter(3, sigma) on a channel-first volume (same kernels: gaussian_1d, erf, truncated at
    4 sigma; zero padding), computed as a sum of shifted copies per axis instead of cuDNN convolutions. Why: the
    fast recipe turns on cuDNN's benchmark for its fixed-size training patches, and a random sigma on a volume
    of each subject's own shape is a new convolution shape almost every draw, so cuDNN re-tuned at every image
    (3.7 of a 4.4 s epoch on an H200, 2026-12-01: mo_fast_bench --mode epoch/profile)."""
    import torch.nn.functional as F
    from monai.networks.layers.convutils import gaussian_1d
    for axis, s in zip(range(x.ndim - 3, x.ndim), sigma):
        k = gaussian_1d(torch.tensor(float(s)), truncated=truncated, approx="erf").to(x.device, x.dtype)
        r = (k.numel() - 1) // 2
        if r == 0:
            continue
        pad = [0, 0] * (x.ndim - 1 - axis) + [r, r]       # F.pad counts axes from the last one
        xp = F.pad(x, pad)
        n = x.shape[axis]
        out = k[0] * xp.narrow(axis, 0, n)
        for i in range(1, k.numel()):
            out = out + k[i] * xp.narrow(axis, i, n)
        x = out
    return x


def synthesize(gen: torch.Tensor, R: np.random.RandomState, g: Optional[torch.Generator] = None,
               p_t1_like: Optional[float] = None) -> torch.Tensor:
    """One SynthSeg-style image (float32, channel-first like `gen`) from a map of generation labels.

    Per structure a random mean intensity (0..1, uniform; with probability `p_t1_like`, default P_T1_LIKE, in
    a generic T1 order instead: t1_like_means; air 0 half of the time) and spread; then a random Gaussian
    blur per axis (0-1.5 voxels: lower resolution, partial volume), a smooth multiplicative bias field,
    min-max scaling, a random gamma and Gaussian noise. Parameters come from R (numpy); voxel noise from
    `g` (a torch.Generator on gen's device), so it runs where the data is (the GPU in the fast recipe)."""
    import torch.nn.functional as F
    dev = gen.device
    n = int(gen.max()) + 1
    p = P_T1_LIKE if p_t1_like is None else p_t1_like
    means = t1_like_means(R, n) if R.rand() < p else R.uniform(0.0, 1.0, n)
    mean = torch.as_tensor(means, dtype=torch.float32, device=dev)
    std = torch.as_tensor(R.uniform(0.0, 0.08, n), dtype=torch.float32, device=dev)
    if R.rand() < 0.5:
        mean[0], std[0] = 0.0, 0.0
    idx = gen.long()
    x = mean[idx] + std[idx] * torch.randn(gen.shape, generator=g, device=dev)
    sigma = [float(v) for v in R.uniform(0.0, 1.5, 3)]
    if max(sigma) > 0.1:
        x = gaussian_blur(x, [max(v, 1e-3) for v in sigma])
    coarse = torch.randn((1, 1, 4, 4, 4), generator=g, device=dev) * float(R.uniform(0.0, 0.3))
    x = x * torch.exp(F.interpolate(coarse, size=tuple(gen.shape[1:]), mode="trilinear", align_corners=True))[0]
    x = (x - x.min()) / (x.max() - x.min() + 1e-6)
    x = x ** float(np.exp(R.normal(0.0, 0.25)))
    x = x + float(R.uniform(0.0, 0.05)) * torch.randn(gen.shape, generator=g, device=dev)
    return x.clamp_min(0.0).to(torch.float32)


class ScalePercentilesd(MapTransform):
    """ScaleIntensityRangePercentilesd(**PERCENTILES) computed where the data is: MONAI's copies a tensor of more
    than 1e6 voxels to the host for np.percentile (monai.transforms.utils_pytorch_numpy_unification.percentile),
    a device-to-host copy per drawn image in the fast recipe; torch.quantile (linear, as numpy's default) runs
    on the GPU and gives the same values (tests/test_transforms.py)."""

    def __init__(self, keys="image"):
        super().__init__(keys)
        p = PERCENTILES
        self.q, self.b = (p["lower"] / 100.0, p["upper"] / 100.0), (p["b_min"], p["b_max"])

    def __call__(self, data):
        d = dict(data)
        for k in self.key_iterator(d):
            x = d[k]
            flat = x.reshape(-1).float()
            step = -(-flat.numel() // (1 << 24))      # torch.quantile takes at most 2^24 values
            lo, hi = torch.quantile(flat[::step], torch.tensor(self.q, device=x.device, dtype=flat.dtype)).tolist()
            y = (x - lo) / max(hi - lo, 1e-8) * (self.b[1] - self.b[0]) + self.b[0]
            d[k] = y.clamp(self.b[0], self.b[1]) if PERCENTILES["clip"] else y
        return d


class RandSynthd(RandomizableTransform, MapTransform):
    """Draw a new "image" from the generation label map "gen" (see `synthesize`) every call."""

    def __init__(self, gen_key: str = "gen", image_key: str = "image"):
        RandomizableTransform.__init__(self, prob=1.0)
        MapTransform.__init__(self, [gen_key])
        self.gen_key, self.image_key = gen_key, image_key

    def __call__(self, data):
        d = dict(data)
        gen = torch.as_tensor(d[self.gen_key])
        g = torch.Generator(device=gen.device).manual_seed(int(self.R.randint(1 << 31)))
        d[self.image_key] = synthesize(gen, self.R, g)
        return d


def class_indices(num_classes: int = 3) -> list:
    """Where each class lies in the volume, computed once (and cached) instead of at every random crop.
    MONAI's fast_training_tutorial does the same with FgBgToIndicesd."""
    return [ClassesToIndicesd(keys="label", num_classes=num_classes, indices_postfix="_cls_indices")]


def random_part(roi: int, num_samples: int, num_classes: int = 3, ratios: Optional[Sequence[float]] = None,
                rotate_deg: float = 10.0, scale: float = 0.1, prob: float = 0.5, device: Optional[str] = None) -> list:
    """The random part: crops balanced over classes, then a random affine (image bilinear, label nearest).

    device (fast recipe): `RandAffined` builds its sampling grid there and keeps the identity grid cached
    (`cache_grid`). Without it MONAI builds the roi^3 grid on the CPU for every patch and copies it to the
    GPU before resampling (about a third of the epoch on an H100, see results/fast_bench.full.json)."""
    import math
    ratios = list(ratios) if ratios is not None else [1.0] * num_classes
    r = math.radians(rotate_deg)
    return [
        RandCropByLabelClassesd(keys=list(KEYS), label_key="label", spatial_size=(roi,) * 3,
                                num_classes=num_classes, ratios=ratios, num_samples=num_samples,
                                indices_key="label_cls_indices", allow_smaller=True),
        RandAffined(keys=list(KEYS), prob=prob, rotate_range=(r, r, r), scale_range=(scale,) * 3,
                    mode=("bilinear", "nearest"), padding_mode="zeros", spatial_size=(roi,) * 3,
                    **({"device": torch.device(device), "cache_grid": True} if device else {})),
    ]


def train_transforms(pixdim: float, roi: int, num_samples: int, device: Optional[str] = None,
                     num_classes: int = 3, synth: bool = False) -> Compose:
    """Training pipeline. device='cuda' moves data to the GPU before the random transforms (fast recipe).
    synth=True: items are {"gen", "label"} and every use draws a new image from "gen" (RandSynthd)."""
    keys = ["label", "gen"] if synth else list(KEYS)
    dev = {"device": torch.device(device)} if device else {}
    to_device = [EnsureTyped(keys=keys, track_meta=False, **dev)]
    make_image = [RandSynthd(), ScalePercentilesd(keys="image"), DeleteItemsd(keys="gen")] if synth else []
    return Compose(deterministic(pixdim, keys=keys) + class_indices(num_classes) + to_device + make_image
                   + random_part(roi, num_samples, num_classes, device=device))


def val_transforms(pixdim: float, device: Optional[str] = None) -> Compose:
    return Compose(deterministic(pixdim) + [EnsureTyped(keys=list(KEYS), device=torch.device(device) if device else None)])


def infer_transforms(pixdim: float, reader=None) -> Compose:
    """Image only (no label), for inference on new data: the deterministic part, then a tensor."""
    return Compose(deterministic(pixdim, keys=("image",), reader=reader) + [EnsureTyped(keys="image")])


def infer_postprocess(pre: Compose) -> Compose:
    """From the network's logits ("pred") to a label map on the input file's voxel grid: softmax, undo `pre`'s
    spatial steps (orientation, spacing, crop), argmax."""
    return Compose([Activationsd(keys="pred", softmax=True),
                    Invertd(keys="pred", transform=pre, orig_keys="image", nearest_interp=False, to_tensor=True),
                    AsDiscreted(keys="pred", argmax=True)])


def describe(compose: Compose) -> list:
    """[(name, key settings)] for showing a pipeline as a table."""
    rows = []
    for t in compose.transforms:
        name = type(t).__name__
        extra = ""
        if hasattr(t, "spacing_transform"):
            extra = f"pixdim={tuple(float(x) for x in t.spacing_transform.pixdim)}"
        elif hasattr(t, "ornt_transform"):
            extra = f"axcodes={t.ornt_transform.axcodes}"
        elif name == "RandCropByLabelClassesd":
            extra = f"size={tuple(t.cropper.spatial_size)}, samples={t.cropper.num_samples}"
        elif name == "RandAffined":
            extra = f"prob={t.prob}"
        elif name == "EnsureTyped":
            dev = getattr(t.converter, "device", None)
            extra = f"device={dev}" if dev is not None else ""
        rows.append((name, extra))
    return rows
