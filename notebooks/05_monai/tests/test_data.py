import numpy as np
import pytest

import mo_data


def test_tissue_labels_classes_and_threshold():
    gm = np.array([0.0, 0.1, 0.6, 0.2, 0.5], dtype=np.float32)
    wm = np.array([0.0, 0.1, 0.3, 0.7, 0.5], dtype=np.float32)
    lab = mo_data.tissue_labels(gm, wm, min_tissue=0.3)
    assert lab.tolist() == [0, 0, 1, 2, 1]      # ties go to grey matter; gm+wm < 0.3 is background


def test_template_is_the_real_mni152(small_template):
    full = mo_data.load_mni152()
    assert full.t1.shape == (197, 233, 189) and full.spacing == (1.0, 1.0, 1.0)
    assert 0.0 <= full.t1.min() and full.t1.max() <= 1.0
    lab = mo_data.tissue_labels(small_template.gm, small_template.wm)
    counts = np.bincount(lab.ravel(), minlength=3)
    assert counts[1] > 0 and counts[2] > 0 and counts[0] > counts[2]
    assert small_template.spacing == pytest.approx((6.0, 6.0, 6.0))


def test_random_subject_moves_image_and_label_together(small_template):
    rng = np.random.default_rng(1)
    img, lab = mo_data.random_subject(small_template, rng)
    assert img.shape == lab.shape == small_template.t1.shape
    assert set(np.unique(lab)) <= {0, 1, 2}
    # tissue sits where the image has signal
    assert img[lab > 0].mean() > 3 * img[(lab == 0)].mean()
    img2, lab2 = mo_data.random_subject(small_template, np.random.default_rng(2))
    assert not np.array_equal(lab, lab2)


def test_write_subjects_reuses_files(small_template, tmp_path):
    items = mo_data.write_subjects(small_template, tmp_path, 2, seed=3)
    mtimes = [(tmp_path / f"subj00{i}_t1.nii.gz").stat().st_mtime_ns for i in range(2)]
    again = mo_data.write_subjects(small_template, tmp_path, 2, seed=3)
    assert items == again
    assert mtimes == [(tmp_path / f"subj00{i}_t1.nii.gz").stat().st_mtime_ns for i in range(2)]


def test_synthetic_volumes_have_requested_classes():
    vols = mo_data.synthetic_volumes(1, 32, num_seg_classes=3, seed=0)
    img, seg = vols[0]
    assert img.shape == seg.shape == (32, 32, 32)
    assert set(np.unique(seg)) <= {0, 1, 2, 3} and seg.max() > 0


def test_dicom_and_nifti_samples_read_through_monai():
    d = mo_data.read_dicom_samples()
    assert tuple(d["CT_small"].shape) == (1, 128, 128)
    assert tuple(d["MR_small"].shape) == (1, 64, 64)
    assert float(d["CT_small"].std()) > 0
    assert tuple(mo_data.read_nibabel_sample().shape) == (33, 41, 25)


def test_synthetic_subjects_are_drawn_from_label_maps_with_shells(small_template, synth_subjects):
    import nibabel as nib
    import torch
    import mo_transforms
    it = synth_subjects[0]
    gen, lab = (np.asarray(nib.load(it[k]).dataobj) for k in ("gen", "label"))
    assert set(np.unique(gen)) <= set(mo_data.GEN_LABELS) and {1, 2, 3}.issubset(set(np.unique(gen)))
    assert np.array_equal(lab, np.where(gen <= 2, gen, 0))          # the target keeps GM and WM only
    # padded for the shells: the synthetic volume is larger than the template crop
    assert gen.shape[0] > small_template.t1.shape[0]
    with_shells = [np.isin(np.asarray(nib.load(s["gen"]).dataobj), (5, 6)).any() for s in synth_subjects]
    assert any(with_shells)
    draws = [mo_transforms.synthesize(torch.from_numpy(gen)[None], np.random.RandomState(s),
                                      torch.Generator().manual_seed(s))[0].numpy() for s in (0, 1)]
    means = [[float(d[gen == k].mean()) for k in (1, 2, 3)] for d in draws]
    assert means[0] != pytest.approx(means[1], abs=0.02)               # a new contrast every draw
    assert all(d.shape == gen.shape and d.min() >= 0 for d in draws)


def test_threshold_baseline_on_the_real_t1_is_strong_but_not_perfect(small_template):
    import torch
    import mo_train
    lab = mo_data.tissue_labels(small_template.gm, small_template.wm)
    base = mo_data.threshold_baseline(small_template.t1)
    d = mo_train.dice_per_class(torch.from_numpy(base), torch.from_numpy(lab))
    assert (d > 0.6).all() and (d < 0.98).all()
    # a threshold rule knows contrast only: inverted contrast turns it upside down
    inv = np.where(small_template.t1 > 0, 1.0 - small_template.t1, 0.0)
    d_inv = mo_train.dice_per_class(torch.from_numpy(mo_data.threshold_baseline(inv)), torch.from_numpy(lab))
    assert d_inv[1] < 0.2
