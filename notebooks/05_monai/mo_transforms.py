"""MONAI dictionary-transform pipelines for the brain-tissue task.

    load -> channel first -> orientation (RAS) -> spacing -> intensity -> crop foreground
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
    EnsureTyped, Invertd, LoadImaged, MapTransform, NormalizeIntensityd, Orientationd, RandAffined,
    RandCropByLabelClassesd, RandomizableTransform, Spacingd,
)

KEYS = ("image", "label")
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
        out.append(NormalizeIntensityd(keys="image", nonzero=True))
    out.append(CropForegroundd(keys=keys, source_key="image" if "image" in keys else "gen", margin=margin,
                               allow_smaller=True))
    if labels:
        out.append(EnsureTyped(keys=labels, dtype=torch.uint8))
    return out


def synthesize(gen: torch.Tensor, R: np.random.RandomState, g: Optional[torch.Generator] = None) -> torch.Tensor:
    """One SynthSeg-style image (float32, channel-first like `gen`) from a map of generation labels.

    Per structure a random mean intensity (0..1; air 0 half of the time) and spread; then a random Gaussian
    blur per axis (0-1.5 voxels: lower resolution, partial volume), a smooth multiplicative bias field,
    min-max scaling, a random gamma and Gaussian noise. Parameters come from R (numpy); voxel noise from
    `g` (a torch.Generator on gen's device), so it runs where the data is (the GPU in the fast recipe)."""
    import torch.nn.functional as F
    from monai.networks.layers import GaussianFilter
    dev = gen.device
    n = int(gen.max()) + 1
    mean = torch.as_tensor(R.uniform(0.0, 1.0, n), dtype=torch.float32, device=dev)
    std = torch.as_tensor(R.uniform(0.0, 0.08, n), dtype=torch.float32, device=dev)
    if R.rand() < 0.5:
        mean[0], std[0] = 0.0, 0.0
    idx = gen.long()
    x = mean[idx] + std[idx] * torch.randn(gen.shape, generator=g, device=dev)
    sigma = [float(v) for v in R.uniform(0.0, 1.5, 3)]
    if max(sigma) > 0.1:
        x = GaussianFilter(3, [max(v, 1e-3) for v in sigma]).to(dev)(x[None])[0]
    coarse = torch.randn((1, 1, 4, 4, 4), generator=g, device=dev) * float(R.uniform(0.0, 0.3))
    x = x * torch.exp(F.interpolate(coarse, size=tuple(gen.shape[1:]), mode="trilinear", align_corners=True))[0]
    x = (x - x.min()) / (x.max() - x.min() + 1e-6)
    x = x ** float(np.exp(R.normal(0.0, 0.25)))
    x = x + float(R.uniform(0.0, 0.05)) * torch.randn(gen.shape, generator=g, device=dev)
    return x.clamp_min(0.0).to(torch.float32)


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
    make_image = [RandSynthd(), NormalizeIntensityd(keys="image", nonzero=True), DeleteItemsd(keys="gen")] if synth else []
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
