"""A real MONAI Label server on loopback: start, /info, /infer, save a label, stop (no process left); bad
requests get a 4xx with one clear line, and bad labels are neither stored nor counted."""
import io
import os

import nibabel as nib
import numpy as np
import pytest
import requests

import mo_label
import mo_train

pytestmark = pytest.mark.skipif(mo_label.available() is not None, reason="monailabel not installed")


def _nifti_bytes(arr, affine):
    buf = io.BytesIO()
    buf.write(nib.Nifti1Image(arr, affine).to_bytes())
    return buf.getvalue()


def _refused(r, status, words):
    """A refusal: the expected 4xx, and a one-line message that contains `words`."""
    detail = r.json()["detail"]
    assert r.status_code == status, (r.status_code, r.text)
    assert isinstance(detail, str) and "\n" not in detail and words in detail, detail


def test_server_info_infer_label_and_bad_requests(subjects, tmp_path):
    net = mo_train.make_net("unet", "tiny", 16)
    md = mo_label.prepare_model_dir(tmp_path / "model", net, {"net": "unet", "size": "tiny", "pixdim": 6.0, "roi": 16})
    studies = mo_label.prepare_studies(tmp_path / "studies", {s["id"]: s["image"] for s in subjects[:2]})
    srv = mo_label.server(studies, md, tmp_path / "work", epochs=1)
    sid = subjects[0]["id"]
    img = nib.load(subjects[0]["image"])
    true_label = np.asarray(nib.load(subjects[0]["label"]).dataobj)
    with srv:
        pgid = srv.pid
        c = mo_label.Client(srv.url)
        info = c.info()
        assert list(info["models"]) == ["tissue"] and list(info["trainers"]) == ["tissue"]
        assert info["datastore"]["total"] == 2
        lab = c.infer("tissue", sid)
        assert lab.shape == img.shape
        assert set(np.unique(lab)) <= {0, 1, 2}

        u = srv.url
        _refused(requests.post(f"{u}/infer/no_such_model", params={"image": sid}), 404, "unknown model 'no_such_model'")
        _refused(requests.post(f"{u}/infer/tissue", params={"image": "nobody"}), 404, "unknown image 'nobody'")
        _refused(requests.post(f"{u}/infer/tissue"), 400, "missing query parameter 'image'")
        _refused(requests.post(f"{u}/infer/tissue", params={"image": sid}, data={"params": "{device: cpu"}), 400,
                 "form field 'params' is not valid JSON")
        _refused(requests.post(f"{u}/infer/tissue", params={"image": sid}, json={"device": "cpu"}), 400,
                 "not a JSON body")
        _refused(requests.post(f"{u}/infer/tissue", params={"image": sid}, files={"params": ("p.json", b"{}")}), 400,
                 "form field 'params' must be text")
        _refused(requests.post(f"{u}/train/tissue", data="{max_epochs: 2", headers={"content-type": "application/json"}),
                 400, "the JSON body is not valid JSON")
        _refused(requests.post(f"{u}/train/tissue", json={"epochs": 2}), 400, "unknown training setting 'epochs'")
        _refused(requests.post(f"{u}/activelearning/smartest", json={}), 404, "unknown strategy 'smartest'")

        def put(content, name="label.nii.gz"):
            return requests.put(f"{u}/datastore/label", params={"image": sid, "tag": "final"},
                                files={"label": (name, content)}, data={"params": "{}"})

        _refused(put(b"not an image at all", "notes.txt"), 415, "'notes.txt' is not a NIfTI-1 image")
        _refused(put(_nifti_bytes(true_label[:-1].astype(np.uint8), img.affine)), 422, "has shape")
        five = true_label.astype(np.uint8).copy()
        five[0, 0, 0] = 5
        _refused(put(_nifti_bytes(five, img.affine)), 422, "values [5] outside the label set")
        _refused(put(_nifti_bytes(true_label.astype(np.float32) / 2, img.affine)), 422, "non-integer values [0.5]")
        _refused(put(_nifti_bytes(true_label.astype(np.uint8), img.affine * np.diag([2, 2, 2, 1]))), 422,
                 "different voxel-to-mm affine")
        assert c.info()["datastore"]["completed"] == 0          # none of the refused labels was stored

        res = c.save_label(sid, subjects[0]["label"])
        assert res["image"] == sid
        assert c.info()["datastore"]["completed"] == 1
    log = (tmp_path / "work" / "server.log").read_text()
    assert "refused PUT /datastore/label: 415" in log and "Traceback" not in log
    with pytest.raises(ProcessLookupError):
        os.killpg(pgid, 0)
