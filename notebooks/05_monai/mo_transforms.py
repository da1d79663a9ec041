"""MONAI dictionary-transform pipelines for the brain-tissue task.

    load -> channel first -> orientation (RAS) -> spacing -> intensity -> crop foreground
        -> [cache boundary] -> (to GPU) -> random crops by label class -> random affine

The deterministic part comes first so that `CacheDataset` can cache its output (MONAI caches every
transform up to the first random one). In the "fast" recipe `EnsureTyped(device=cuda)` sits right at the
boundary, so the random crops and the random affine run on the GPU.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from monai.transforms import (
    Activationsd, AsDiscreted, ClassesToIndicesd, Compose, CropForegroundd, EnsureChannelFirstd, EnsureTyped, Invertd,
    LoadImaged, NormalizeIntensityd, Orientationd, RandAffined, RandCropByLabelClassesd, Spacingd,
)

KEYS = ("image", "label")
# what the letters of axcodes="RAS" mean: towards Right, Anterior, Superior (the NIfTI sense)
RAS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))


def deterministic(pixdim: float, keys: Sequence[str] = KEYS, margin: int = 4, reader=None) -> list:
    """The part of the pipeline that gives the same output every epoch (cacheable). `reader`: LoadImaged's
    image reader (default: chosen by file type)."""
    has_label = "label" in keys
    out = [
        LoadImaged(keys=list(keys), image_only=False, reader=reader),
        EnsureChannelFirstd(keys=list(keys)),
        Orientationd(keys=list(keys), axcodes="RAS", labels=RAS_LABELS),
        Spacingd(keys=list(keys), pixdim=(pixdim,) * 3,
                 mode=("bilinear", "nearest") if has_label else ("bilinear",)),
        NormalizeIntensityd(keys="image", nonzero=True),
        CropForegroundd(keys=list(keys), source_key="image", margin=margin, allow_smaller=True),
    ]
    if has_label:
        out.append(EnsureTyped(keys="label", dtype=torch.uint8))
    return out


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
                     num_classes: int = 3) -> Compose:
    """Training pipeline. device='cuda' moves data to the GPU before the random transforms (fast recipe)."""
    to_device = [EnsureTyped(keys=list(KEYS), device=torch.device(device), track_meta=False)] if device else [
        EnsureTyped(keys=list(KEYS), track_meta=False)]
    return Compose(deterministic(pixdim) + class_indices(num_classes) + to_device
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
