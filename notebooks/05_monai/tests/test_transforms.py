import torch

import mo_transforms


def test_train_pipeline_gives_class_balanced_patches(subjects):
    out = mo_transforms.train_transforms(6.0, 16, 3)(subjects[0])
    assert len(out) == 3
    for p in out:
        assert tuple(p["image"].shape) == (1, 16, 16, 16) == tuple(p["label"].shape)
        assert set(torch.unique(p["label"]).tolist()) <= {0.0, 1.0, 2.0}


def test_deterministic_part_orients_resamples_and_crops(subjects):
    d = mo_transforms.val_transforms(6.0)(subjects[0])
    assert d["image"].shape == d["label"].shape
    # scaled to 0..1 between the 0.5th and 99.5th percentiles
    assert float(d["image"].min()) == 0.0 and float(d["image"].max()) == 1.0
    first_random = [type(t).__name__ for t in mo_transforms.train_transforms(6.0, 16, 2).transforms].index(
        "RandCropByLabelClassesd")
    names = [n for n, _ in mo_transforms.describe(mo_transforms.train_transforms(6.0, 16, 2))]
    assert names[:first_random] == ["LoadImaged", "EnsureChannelFirstd", "Orientationd", "Spacingd",
                                    "ScaleIntensityRangePercentilesd", "CropForegroundd", "EnsureTyped", "ClassesToIndicesd",
                                    "EnsureTyped"]


def test_synthetic_training_pipeline_draws_a_new_image_every_time(synth_subjects):
    tf = mo_transforms.train_transforms(6.0, 16, 2, synth=True)
    names = [n for n, _ in mo_transforms.describe(tf)]
    assert names.index("RandSynthd") < names.index("RandCropByLabelClassesd")
    item = {k: synth_subjects[0][k] for k in ("gen", "label")}
    tf.set_random_state(seed=0)
    a = tf(item)
    b = tf(item)
    assert len(a) == 2 and set(a[0]) >= {"image", "label"} and "gen" not in a[0]
    assert tuple(a[0]["image"].shape) == (1, 16, 16, 16) and not torch.equal(a[0]["image"], b[0]["image"])


def test_skull_stripped_background_stays_darkest(small_template, tmp_path):
    """A z-score over the non-zero voxels put the real T1's zero background at the brain's mean, i.e. at grey
    matter's intensity (the brain's outer border vanished); the percentile scaling keeps it the darkest value."""
    import mo_data
    item = mo_data.write_template_item(small_template, tmp_path)
    d = mo_transforms.val_transforms(6.0)(item)
    x, lab = d["image"][0], d["label"][0]
    gm, wm, bg = (float(x[lab == c].mean()) for c in (1, 2, 0))
    assert float(x.min()) == 0.0 and bg < gm - 0.2 < wm - 0.2     # z-scored: bg -0.13 above GM -0.17


def test_percentiles_on_the_device_equal_monais():
    from monai.transforms import ScaleIntensityRangePercentilesd
    g = torch.Generator().manual_seed(0)
    for shape in ((1, 20, 30, 40), (1, 110, 100, 100)):     # MONAI: torch.quantile below 1e6 voxels, numpy above
        x = torch.rand(shape, generator=g) ** 3
        x[:, :5] = 0.0
        ours = mo_transforms.ScalePercentilesd("image")({"image": x})["image"]
        theirs = ScaleIntensityRangePercentilesd("image", **mo_transforms.PERCENTILES)({"image": x})["image"]
        assert torch.allclose(torch.as_tensor(ours), torch.as_tensor(theirs), atol=1e-5)


def test_t1_like_means_keep_the_t1_order_and_synthesize_mixes_both_kinds():
    import numpy as np
    R = np.random.RandomState(0)
    for _ in range(200):
        m = mo_transforms.t1_like_means(R, 7)
        assert m[3] < m[1] < m[2] and m[4] < m[1] and 0.0 <= m.min() and m.max() <= 1.0   # CSF < GM < WM
    gen = torch.zeros((1, 36, 12, 12), dtype=torch.uint8)
    gen[:, :12], gen[:, 12:24], gen[:, 24:] = 3, 1, 2          # CSF, GM, WM blocks
    t1 = {p: np.mean([bool(x[gen == 3].mean() < x[gen == 1].mean() < x[gen == 2].mean()) for x in (
        mo_transforms.synthesize(gen, np.random.RandomState(s), torch.Generator().manual_seed(s), p) for s in range(40))])
        for p in (1.0, 0.0)}
    # p=1: T1-ordered means (a bias field can still flip a close pair); p=0: uniform, any order (1/6 is CSF<GM<WM)
    assert t1[1.0] >= 0.85 and t1[0.0] <= 0.45, t1


def test_gaussian_blur_equals_monais_filter_without_a_convolution(monkeypatch):
    """The synthesis blur gives MONAI GaussianFilter's values (same kernels, zero padding) for sub-voxel, mixed
    and ~0 sigmas, and runs no convolution: under the fast recipe's cudnn.benchmark a random-sigma convolution
    on each subject's volume shape was re-tuned by cuDNN at every draw (3.7 s of a 4.4 s epoch on an H200)."""
    import numpy as np
    from monai.networks.layers import GaussianFilter
    g = torch.Generator().manual_seed(0)
    cases = [((1, 23, 30, 17), [0.3, 1.2, 1.5]), ((1, 9, 11, 13), [1e-3, 0.7, 0.05]), ((2, 8, 8, 8), [1.5] * 3)]
    xs = [torch.rand(sh, generator=g) for sh, _ in cases]
    want = [GaussianFilter(3, s)(x[None])[0] for x, (_, s) in zip(xs, cases)]   # before conv3d is patched away

    def no_conv(*a, **k):
        raise AssertionError("a convolution ran")
    monkeypatch.setattr(torch.nn.functional, "conv3d", no_conv)
    for x, (_, s), w in zip(xs, cases, want):
        got = mo_transforms.gaussian_blur(x, s)
        assert got.shape == x.shape and torch.allclose(got, w, atol=1e-6)
    gen = torch.randint(0, 4, (1, 12, 12, 12))
    for seed in range(5):   # the whole synthesis runs (a blur is drawn unless all 3 sigmas are <= 0.1) without one
        img = mo_transforms.synthesize(gen, np.random.RandomState(seed), torch.Generator().manual_seed(seed))
        assert img.shape == gen.shape and torch.isfinite(img).all()
