"""Solutions of the notebook's exercises (run by tests/test_solutions.py)."""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import numpy as np


def exercise_1(thresholds: Sequence[float] = (0.1, 0.3, 0.6), spacing: float = 3.0, tpl=None) -> Dict[float, list]:
    """Fraction of voxels in background / GM / WM for each `min_tissue` threshold."""
    import mo_data
    tpl = tpl or mo_data.resample_template(mo_data.load_mni152(), spacing)
    out = {}
    for t in thresholds:
        lab = mo_data.tissue_labels(tpl.gm, tpl.wm, min_tissue=t)
        out[float(t)] = [float(v) for v in np.bincount(lab.ravel(), minlength=3) / lab.size]
    return out


def exercise_2(spacings: Sequence[float] = (1.5, 3.0), shift: int = 1, tpl=None) -> Dict[float, np.ndarray]:
    """Per-class Dice (GM, WM) of the template's label map against itself shifted by `shift` voxels along x,
    at several voxel sizes. A one-voxel error costs more Dice the coarser the grid (the voxel is more mm),
    and it costs both thin and bulky classes several points: Dice differences of a few hundredths between
    models are differences of a fraction of a voxel along the boundaries."""
    import torch
    import mo_data
    import mo_train
    tpl = tpl or mo_data.load_mni152()
    out = {}
    for sp in spacings:
        r = mo_data.resample_template(tpl, sp)
        label = mo_data.tissue_labels(r.gm, r.wm)
        shifted = np.roll(label, shift, axis=0)
        out[float(sp)] = mo_train.dice_per_class(torch.from_numpy(shifted), torch.from_numpy(label))
    return out


def exercise_3(item: dict, pixdim: float = 3.0, roi: int = 32, num_samples: int = 2):
    """The training pipeline with two more random intensity transforms appended; returns its output on `item`.

    A new deterministic transform belongs before the first random one (before RandCropByLabelClassesd),
    so that CacheDataset caches it."""
    from monai.transforms import Compose, RandAdjustContrastd, RandGaussianNoised
    import mo_transforms
    base = mo_transforms.train_transforms(pixdim, roi, num_samples)
    extra = [RandGaussianNoised(keys="image", prob=1.0, std=0.05), RandAdjustContrastd(keys="image", prob=1.0)]
    pipeline = Compose(list(base.transforms) + extra)
    pipeline.set_random_state(seed=0)
    return pipeline(item)
