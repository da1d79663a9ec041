"""A real MONAI Label server on loopback: start, /info, /infer, save a label, stop (no process left)."""
import os

import nibabel as nib
import numpy as np
import pytest
import torch

import mo_label
import mo_train

pytestmark = pytest.mark.skipif(mo_label.available() is not None, reason="monailabel not installed")


def test_server_info_infer_and_label(subjects, tmp_path):
    net = mo_train.make_net("unet", "tiny", 16)
    md = mo_label.prepare_model_dir(tmp_path / "model", net, {"net": "unet", "size": "tiny", "pixdim": 6.0, "roi": 16})
    studies = mo_label.prepare_studies(tmp_path / "studies", {s["id"]: s["image"] for s in subjects[:2]})
    srv = mo_label.server(studies, md, tmp_path / "work", epochs=1)
    with srv:
        pgid = srv.pid
        c = mo_label.Client(srv.url)
        info = c.info()
        assert list(info["models"]) == ["tissue"] and list(info["trainers"]) == ["tissue"]
        assert info["datastore"]["total"] == 2
        lab = c.infer("tissue", subjects[0]["id"])
        assert lab.shape == nib.load(subjects[0]["image"]).shape
        assert set(np.unique(lab)) <= {0, 1, 2}
        res = c.save_label(subjects[0]["id"], subjects[0]["label"])
        assert res["image"] == subjects[0]["id"]
        assert c.info()["datastore"]["completed"] == 1
        with pytest.raises(RuntimeError, match="404|500"):
            c.infer("no_such_model", subjects[0]["id"])
    with pytest.raises(ProcessLookupError):
        os.killpg(pgid, 0)
