import numpy as np
import pytest
import torch

import mo_train


def test_dice_per_class():
    a = torch.tensor([0, 1, 1, 2, 2, 2])
    b = torch.tensor([0, 1, 2, 2, 2, 0])
    d = mo_train.dice_per_class(a, b)
    assert d == pytest.approx([2 * 1 / 3, 2 * 2 / 6])
    assert mo_train.dice_per_class(a, a).tolist() == [1.0, 1.0]


@pytest.mark.parametrize("kind", ["unet", "unetr"])
def test_networks_map_patch_to_three_class_logits(kind):
    net = mo_train.make_net(kind, "tiny", 32).eval()
    with torch.no_grad():
        y = net(torch.zeros(1, 1, 32, 32, 32))
    assert tuple(y.shape) == (1, 3, 32, 32, 32)


def test_unetr_rejects_bad_patch_size():
    with pytest.raises(ValueError, match="divisible by 16"):
        mo_train.make_net("unetr", "tiny", 24)


@pytest.mark.parametrize("recipe", ["regular", "fast"])
def test_fit_lowers_the_loss_and_validates(subjects, recipe, tmp_path):
    cfg = mo_train.Config(recipe=recipe, pixdim=6.0, roi=16, num_samples=4, batch_size=2, epochs=6, val_every=3,
                          num_workers=0, cache_workers=1, optimizer="adam", lr=3e-3)
    torch.manual_seed(0)
    net, h = mo_train.fit(cfg, subjects[:3], subjects[3:], "cpu", checkpoint=tmp_path / "ck.pt")
    assert len(h.epoch_seconds) == 6 and h.val_epochs == [3, 6]
    assert h.loss[-1] < h.loss[0]
    assert all(0.0 <= v <= 1.0 for d in h.val_dice for v in d)
    net2, cfg2 = mo_train.load_checkpoint(tmp_path / "ck.pt")
    assert cfg2.recipe == recipe
    x = torch.randn(1, 1, 16, 16, 16)
    net.eval()
    with torch.no_grad():
        assert torch.allclose(net(x), net2(x), atol=1e-5)


def test_history_targets():
    h = mo_train.History(val_epochs=[2, 4], val_dice=[[0.4, 0.6], [0.8, 0.9]], wall=[1.0, 2.0])
    assert h.time_to_target(0.5) == 1.0 and h.epochs_to_target(0.8) == 4 and h.time_to_target(0.95) is None


def test_ddp_launch_single_process(subjects, tmp_path):
    import mo_ddp
    cfg = mo_train.Config(recipe="fast", pixdim=6.0, roi=16, num_samples=2, epochs=1, val_every=1, cache_workers=1)
    hist, ckpt, log = mo_ddp.launch(cfg, subjects[:2], subjects[2:3], tmp_path, nproc=1, timeout=300)
    assert hist.world_size == 1 and len(hist.val_dice) == 1 and ckpt.exists()


@pytest.mark.parametrize("case, words", [
    ("float", "is stored as float32 (file dtype float32); a label map holds integer classes 0..2, and this one has "
              "non-integer values [0.5]"),
    ("minus_one", "has values [-1] outside the label set 0..2"),
    ("shape", "has shape"),
    ("affine", "different voxel-to-mm affine"),
])
def test_fit_refuses_bad_label_maps_up_front_naming_the_file(subjects, tmp_path, case, words):
    import nibabel as nib
    import mo_data
    src = nib.load(subjects[1]["label"])
    lab = np.asarray(src.dataobj).astype(np.int16)
    affine = src.affine
    if case == "float":
        lab = lab.astype(np.float32) / 2          # 0 / 0.5 / 1: grey matter would become "0.5"
    elif case == "minus_one":
        lab[0, 0, 0] = -1
    elif case == "shape":
        lab = lab[:, :, :-2]
    else:
        affine = affine @ np.diag([1.0, 1.0, 2.0, 1.0])
    bad = tmp_path / f"{case}_label.nii.gz"
    nib.save(nib.Nifti1Image(lab, affine), str(bad))
    items = [subjects[0], {**subjects[1], "label": str(bad)}]
    cfg = mo_train.Config(recipe="fast", pixdim=6.0, roi=16, epochs=1, cache_workers=1)
    with pytest.raises(mo_data.LabelError) as err:
        mo_train.fit(cfg, items, [], "cpu", checkpoint=tmp_path / "ck.pt")
    assert str(bad) in str(err.value) and words in str(err.value), str(err.value)
    assert not (tmp_path / "ck.pt").exists()
