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
    # normalised over the non-zero voxels
    nz = d["image"][d["image"] != 0]
    assert abs(float(nz.mean())) < 0.2
    first_random = [type(t).__name__ for t in mo_transforms.train_transforms(6.0, 16, 2).transforms].index(
        "RandCropByLabelClassesd")
    names = [n for n, _ in mo_transforms.describe(mo_transforms.train_transforms(6.0, 16, 2))]
    assert names[:first_random] == ["LoadImaged", "EnsureChannelFirstd", "Orientationd", "Spacingd",
                                    "NormalizeIntensityd", "CropForegroundd", "EnsureTyped", "ClassesToIndicesd",
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
