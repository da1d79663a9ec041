"""End-to-end checks of the bundle and the MONAI Deploy app (each runs a fresh Python process)."""
import json
import shutil

import nibabel as nib
import numpy as np
import pytest
import torch

import mo_bundle
import mo_deploy_app
import mo_dicom
import mo_train


@pytest.fixture(scope="module")
def tiny_net(subjects):
    cfg = mo_train.Config(recipe="fast", pixdim=6.0, roi=16, num_samples=2, epochs=2, val_every=100, cache_workers=1)
    torch.manual_seed(0)
    net, _ = mo_train.fit(cfg, subjects[:2], [], "cpu")
    return net.eval()


def test_bundle_run_reproduces_python_predictions(tiny_net, subjects, tmp_path):
    b = mo_bundle.export(tiny_net, tmp_path / "bundle", "unet", "tiny", 16, 6.0,
                         sample_files=[subjects[3]["image"]])
    meta = json.loads((b / "configs" / "metadata.json").read_text())
    assert meta["network_data_format"]["outputs"]["pred"]["num_channels"] == 3
    outs = mo_bundle.run_bundle(b)
    assert len(outs) == 1
    mine = mo_bundle.predict_file(tiny_net, subjects[3]["image"], 16, 6.0)
    theirs = np.asarray(nib.load(str(outs[0])).dataobj)
    assert theirs.shape == mine.shape == nib.load(subjects[3]["image"]).shape
    assert (theirs == mine).mean() == 1.0


@pytest.mark.parametrize("broken", ["checkpoint", "image"])
def test_bundle_run_failure_keeps_root_cause_and_file(tiny_net, subjects, tmp_path, broken):
    b = mo_bundle.export(tiny_net, tmp_path / "bundle", "unet", "tiny", 16, 6.0, sample_files=[subjects[3]["image"]])
    if broken == "checkpoint":
        (b / "models" / "model.pt").write_bytes(b"not a checkpoint")
        cause, name = "UnpicklingError", str(b / "models" / "model.pt")
    else:
        bad = b / "sample_data" / "x_t1.nii.gz"
        bad.write_text("not an image")
        cause, name = "ImageFileError", str(bad)
    with pytest.raises(RuntimeError) as err:
        mo_bundle.run_bundle(b)
    msg = str(err.value)
    root = [l for l in msg.splitlines() if l.startswith("root cause:")]
    assert msg.startswith("monai.bundle run failed") and root and cause in root[0], msg
    assert name in msg and "full log: " in msg and (b / "eval" / "bundle_run.log").exists()


needs_sdk = pytest.mark.skipif(mo_deploy_app.available() is not None, reason="MONAI Deploy App SDK not installed")


@pytest.mark.parametrize("case", ["missing", "empty", "not_dicom", "wrong_modality"])
def test_check_input_rejects_bad_input(case, tmp_path):
    import pydicom
    from pydicom.data import get_testdata_file
    p = tmp_path / case
    if case == "empty":
        p.mkdir()
    elif case == "not_dicom":
        p.mkdir()
        (p / "a.txt").write_text("hello")
    elif case == "wrong_modality":
        p.mkdir()
        shutil.copyfile(get_testdata_file("CT_small.dcm", download=False), p / "ct.dcm")
    with pytest.raises(mo_deploy_app.BadInput):
        mo_deploy_app.check_input(p)


def _series(tmp_path, shape=(20, 24, 12), spacing=(8.0, 8.0, 10.0), drop=None):
    vol = np.random.default_rng(0).uniform(0, 1, size=shape).astype(np.float32)
    files = mo_dicom.write_dicom_series(vol, np.diag(list(spacing) + [1.0]), tmp_path / "series")
    if drop is not None:
        files[drop].unlink()
    return tmp_path / "series"


def test_check_input_describes_a_brain_sized_series(tmp_path):
    g = mo_deploy_app.check_input(_series(tmp_path))
    assert g["slices"] == 12 and g["spacing_mm"] == pytest.approx((8.0, 8.0, 10.0))
    assert g["fov_mm"] == pytest.approx((160.0, 192.0, 120.0)) and g["warnings"] == []


def test_check_input_refuses_a_single_slice_and_a_gap(tmp_path):
    from pydicom.data import get_testdata_file
    mr = tmp_path / "mr_small"
    mr.mkdir()
    shutil.copyfile(get_testdata_file("MR_small.dcm", download=False), mr / "MR_small.dcm")
    with pytest.raises(mo_deploy_app.BadInput, match=r"has 1 slice\(s\).*at least 8"):
        mo_deploy_app.check_input(mr)
    with pytest.raises(mo_deploy_app.BadInput, match="slice spacing varies from 10 to 20 mm"):
        mo_deploy_app.check_input(_series(tmp_path, drop=5))


def test_check_input_warns_on_a_field_of_view_smaller_than_a_head(tmp_path):
    g = mo_deploy_app.check_input(_series(tmp_path, shape=(64, 64, 10), spacing=(0.3125, 0.3125, 0.8)))
    assert len(g["warnings"]) == 1 and "field of view 20 x 20 x 8 mm is smaller than a head" in g["warnings"][0]


def test_main_refuses_mr_small_and_writes_nothing(tmp_path, capsys):
    from pydicom.data import get_testdata_file
    (tmp_path / "in").mkdir()
    shutil.copyfile(get_testdata_file("MR_small.dcm", download=False), tmp_path / "in" / "MR_small.dcm")
    (tmp_path / "model.ts.json").write_text(json.dumps({"pixdim": 6.0, "roi": 16}))
    rc = mo_deploy_app.main(["-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "-m", str(tmp_path / "model.ts")])
    err = capsys.readouterr().err
    assert rc == 2 and not (tmp_path / "out").exists()
    assert err.startswith("ERROR (bad input): an MR series has 1 slice(s)"), err


def test_main_exits_2_and_writes_nothing_on_bad_input(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "notes.txt").write_text("not dicom")
    (tmp_path / "model.ts.json").write_text(json.dumps({"pixdim": 6.0, "roi": 16}))
    rc = mo_deploy_app.main(["-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "-m", str(tmp_path / "model.ts")])
    assert rc == 2 and not (tmp_path / "out").exists()


@needs_sdk
def test_app_turns_a_dicom_series_into_a_matching_seg(tiny_net, subjects, tmp_path):
    img = nib.load(subjects[3]["image"])
    series = tmp_path / "series"
    mo_dicom.write_dicom_series(np.asarray(img.dataobj), img.affine, series)
    model = mo_deploy_app.export_torchscript(tiny_net, tmp_path / "m" / "model.ts", 6.0, 16)
    rc, log = mo_deploy_app.run_subprocess(series, tmp_path / "out", model)
    assert rc == 0, log[-2000:]
    seg = mo_dicom.find_seg(tmp_path / "out")
    back = mo_dicom.read_seg_as_volume(seg, series)
    mine = mo_bundle.predict_file(tiny_net, subjects[3]["image"], 16, 6.0)
    assert back["segments"] == {1: "grey matter", 2: "white matter"}
    assert (back["labels"] == mine).mean() > 0.999
    check = mo_dicom.dciodvfy(seg)
    if check is None:
        pytest.skip("dciodvfy (Debian package dicom3tools) is not installed: the SEG was not validated")
    # the app passes a ModelInfo; with the SDK's default one the SEG has an empty Manufacturer (see mo_deploy_app)
    assert check["errors"] == [], check["errors"]
