"""A MONAI Label app around the notebook's tissue-segmentation network.

Started by `monailabel start_server --app <this folder> --studies <folder> --conf model_dir <dir> ...`
(see mo_label.py). It offers one inference task ("tissue": grey/white matter), one training task that
fine-tunes the network on every image with a final label in the datastore, and MONAI Label's built-in
active-learning strategies ("random", "first").
Settings come from --conf: model_dir (holds model.pt and settings.json), epochs (per /train call).
"""
from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path

import torch
from monai.inferers import SlidingWindowInferer
from monai.transforms import (Activationsd, AsDiscreted, CropForegroundd, EnsureChannelFirstd, EnsureTyped,
                              LoadImaged, Orientationd, ScaleIntensityRangePercentilesd, Spacingd, SqueezeDimd)
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.interfaces.tasks.train import TrainTask
from monailabel.tasks.activelearning.first import First
from monailabel.tasks.activelearning.random import Random
from monailabel.tasks.infer.basic_infer import BasicInferTask
from mo_transforms import PERCENTILES, RAS_LABELS   # the notebook folder is on PYTHONPATH (mo_label.server sets it)

logger = logging.getLogger(__name__)
LABELS = {"grey matter": 1, "white matter": 2}


def _settings(model_dir: Path) -> dict:
    return json.loads((model_dir / "settings.json").read_text())


class _StashKey:
    """Move one dictionary key out of the way and back (a version-skew workaround, see below).

    monailabel 0.8.5 puts the request's file name in data["image_path"]; MONAI 1.6's Spacingd treats every
    key starting with "image_" as a meta-data dict of "image" and calls .update() on it, which fails on a
    string. So "image_path" is parked under another name while Spacingd runs.
    """

    def __init__(self, src: str, dst: str):
        self.src, self.dst = src, dst

    def __call__(self, data):
        d = dict(data)
        if self.src in d:
            d[self.dst] = d.pop(self.src)
        return d


class TissueInfer(BasicInferTask):
    def __init__(self, model_dir: Path):
        import mo_train
        self.s = _settings(model_dir)
        super().__init__(path=str(model_dir / "model.pt"), network=mo_train.make_net(self.s["net"], self.s["size"], self.s["roi"]),
                         type=InferType.SEGMENTATION, labels=LABELS, dimension=3,
                         description="grey/white matter from T1 (tutorial network)")

    def pre_transforms(self, data=None):
        px = (float(self.s["pixdim"]),) * 3
        return [LoadImaged(keys="image"), EnsureChannelFirstd(keys="image"),
                Orientationd(keys="image", axcodes="RAS", labels=RAS_LABELS),
                _StashKey("image_path", "source_path"),
                Spacingd(keys="image", pixdim=px, mode="bilinear"),
                _StashKey("source_path", "image_path"),
                ScaleIntensityRangePercentilesd(keys="image", **PERCENTILES),
                CropForegroundd(keys="image", source_key="image", margin=4, allow_smaller=True),
                EnsureTyped(keys="image")]

    def inferer(self, data=None):
        return SlidingWindowInferer(roi_size=(self.s["roi"],) * 3, sw_batch_size=4, overlap=0.25, mode="gaussian")

    def inverse_transforms(self, data=None):
        return []      # invert every invertible pre-transform: the label comes back on the image's grid

    def post_transforms(self, data=None):
        return [EnsureTyped(keys="pred", device="cpu"), Activationsd(keys="pred", softmax=True),
                AsDiscreted(keys="pred", argmax=True), SqueezeDimd(keys="pred", dim=0)]


class TissueTrain(TrainTask):
    """Fine-tune the current network on all final labels in the datastore (the fast recipe, CPU or GPU)."""

    def __init__(self, model_dir: Path, epochs: int):
        super().__init__("fine-tune on the corrected labels")
        self.model_dir, self.epochs = Path(model_dir), int(epochs)
        self._stats = {}

    def config(self):
        return {"max_epochs": self.epochs}

    def stats(self):
        p = self.model_dir / "train_stats.json"
        return json.loads(p.read_text()) if p.exists() else {}

    def __call__(self, request, datastore):
        import mo_train
        s = _settings(self.model_dir)
        items = datastore.datalist()
        if not items:
            return {"error": "no labelled images in the datastore"}
        epochs = int(request.get("max_epochs", self.epochs))
        device = "cuda" if torch.cuda.is_available() else "cpu"
        net = mo_train.make_net(s["net"], s["size"], s["roi"])
        net.load_state_dict(torch.load(self.model_dir / "model.pt", map_location="cpu"))
        cfg = mo_train.Config(recipe="fast", net=s["net"], size=s["size"], pixdim=s["pixdim"], roi=s["roi"],
                              epochs=epochs, val_every=10 ** 6, lr=s.get("finetune_lr", 0.02), optimizer="sgd",
                              num_samples=s.get("num_samples", 2), batch_size=s.get("batch_size", 2), cache_workers=1)
        t0 = time.time()
        net, hist = mo_train.fit(cfg, items, [], device, net=net)
        tmp = self.model_dir / ".tmp_model.pt"
        torch.save({k: v.detach().cpu() for k, v in net.state_dict().items()}, tmp)
        os.replace(tmp, self.model_dir / "model.pt")       # the infer task reloads when the file changes
        stats = {"labelled_images": len(items), "epochs": epochs, "loss": hist.loss, "seconds": time.time() - t0}
        (self.model_dir / "train_stats.json").write_text(json.dumps(stats))
        return stats


class TissueApp(MONAILabelApp):
    def __init__(self, app_dir, studies, conf):
        self.model_dir = Path(conf.get("model_dir", os.path.join(app_dir, "model")))
        self.epochs = int(conf.get("epochs", 2))
        super().__init__(app_dir=app_dir, studies=studies, conf=conf, name="brain tissue (tutorial)",
                         description="grey/white matter segmentation of T1 MR", version="1.0", labels=LABELS)

    def init_infers(self):
        return {"tissue": TissueInfer(self.model_dir)}

    def init_trainers(self):
        return {"tissue": TissueTrain(self.model_dir, self.epochs)}

    def init_strategies(self):
        return {"random": Random(), "first": First()}
