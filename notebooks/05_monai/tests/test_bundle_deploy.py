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


def test_bundle_run_failure_is_reported(tiny_net, tmp_path):
    b = mo_bundle.export(tiny_net, tmp_path / "bundle", "unet", "tiny", 16, 6.0)
    (b / "models" / "model.pt").write_bytes(b"not a checkpoint")
    (b / "sample_data").mkdir()
    shutil.copyfile(__file__, b / "sample_data" / "x_t1.nii.gz")
    with pytest.raises(RuntimeError, match="monai.bundle run failed"):
        mo_bundle.run_bundle(b)


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
