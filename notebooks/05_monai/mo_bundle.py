"""Export the trained network as a MONAI bundle and run it with `python -m monai.bundle run`.

    <bundle>/configs/metadata.json    what the model is, its inputs and outputs, versions
    <bundle>/configs/inference.json   the whole inference workflow as a config (network, transforms,
                                      sliding-window inferer, post-processing, SupervisedEvaluator)
    <bundle>/models/model.pt          the weights (a plain state_dict)
    <bundle>/docs/README.md

`predict_file` is the same inference written as plain Python; the notebook compares the two.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch


def _net_def(net_kind: str, size: str, roi: int) -> dict:
    import mo_train
    net = mo_train.make_net(net_kind, size, roi)
    if net_kind == "unet":
        return {"_target_": "UNet", "spatial_dims": 3, "in_channels": 1, "out_channels": mo_train.NUM_CLASSES,
                "channels": list(net.channels), "strides": list(net.strides), "num_res_units": net.num_res_units,
                "norm": "batch"}
    # UNETR
    vit = net.vit
    return {"_target_": "UNETR", "in_channels": 1, "out_channels": mo_train.NUM_CLASSES, "img_size": [roi] * 3,
            "feature_size": int(net.encoder1.layer.conv1.conv.out_channels), "hidden_size": int(net.hidden_size),
            "mlp_dim": int(vit.blocks[0].mlp.linear1.out_features), "num_heads": int(vit.blocks[0].attn.num_heads),
            "norm_name": "instance", "res_block": True}


def inference_config(net_kind: str, size: str, roi: int, pixdim: float) -> dict:
    """mo_transforms' inference pipeline and postprocessing, and the sliding window, as a bundle config."""
    from mo_transforms import PERCENTILES, RAS_LABELS
    lab = [list(pair) for pair in RAS_LABELS]
    return {
        "imports": ["$import glob", "$import os", "$import numpy"],
        "bundle_root": ".",
        "ckpt_path": "$@bundle_root + '/models/model.pt'",
        "output_dir": "$@bundle_root + '/eval'",
        "dataset_dir": "$@bundle_root + '/sample_data'",
        "datalist": "$list(sorted(glob.glob(os.path.join(@dataset_dir, '*_t1.nii.gz'))))",
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "network_def": _net_def(net_kind, size, roi),
        "network": "$@network_def.to(@device)",
        "preprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "LoadImaged", "keys": "image"},
            {"_target_": "EnsureChannelFirstd", "keys": "image"},
            {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS", "labels": lab},
            {"_target_": "Spacingd", "keys": "image", "pixdim": [pixdim] * 3, "mode": "bilinear"},
            {"_target_": "ScaleIntensityRangePercentilesd", "keys": "image", **PERCENTILES},
            {"_target_": "CropForegroundd", "keys": "image", "source_key": "image", "margin": 4,
             "allow_smaller": True},
            {"_target_": "EnsureTyped", "keys": "image"},
        ]},
        "dataset": {"_target_": "Dataset", "data": "$[{'image': i} for i in @datalist]",
                    "transform": "@preprocessing"},
        "dataloader": {"_target_": "DataLoader", "dataset": "@dataset", "batch_size": 1, "shuffle": False,
                       "num_workers": 0},
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [roi] * 3, "sw_batch_size": 4,
                    "overlap": 0.25, "mode": "gaussian"},
        "postprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "Activationsd", "keys": "pred", "softmax": True},
            {"_target_": "Invertd", "keys": "pred", "transform": "@preprocessing", "orig_keys": "image",
             "nearest_interp": False, "to_tensor": True},
            {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
            {"_target_": "SaveImaged", "keys": "pred", "output_dir": "@output_dir", "output_postfix": "seg",
             "output_dtype": "$numpy.uint8", "resample": False, "separate_folder": False, "print_log": False},
        ]},
        "handlers": [{"_target_": "CheckpointLoader", "load_path": "@ckpt_path", "load_dict": {"model": "@network"},
                      "map_location": "@device"}],
        "evaluator": {"_target_": "SupervisedEvaluator", "device": "@device", "val_data_loader": "@dataloader",
                      "network": "@network", "inferer": "@inferer", "postprocessing": "@postprocessing",
                      "val_handlers": "@handlers", "amp": False},
        "initialize": ["$monai.utils.set_determinism(seed=0)"],
        "run": ["$@evaluator.run()"],
    }


def metadata(net_kind: str, size: str, roi: int, pixdim: float, dice: Optional[Dict[str, float]] = None) -> dict:
    import monai
    return {
        "schema": "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20220324.json",
        "version": "0.1.0",
        "changelog": {"0.1.0": "first export from the tutorial notebook"},
        "monai_version": monai.__version__,
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": np.__version__,
        "required_packages_version": {"nibabel": _version("nibabel")},
        "task": "Brain tissue segmentation (grey and white matter) of T1 MR",
        "name": f"brain_tissue_{net_kind}",
        "description": (f"A {net_kind.upper()} ({size}) trained in the MONAI tutorial notebook on synthetic subjects "
                        "made from the MNI152 2009a template by random deformation and intensity changes."),
        "authors": "tutorial notebook",
        "copyright": "training data: MNI152 ICBM 2009a (see nilearn); code Apache-2.0",
        "data_source": "nilearn MNI152 2009a template (T1, GM and WM probability maps)",
        "data_type": "nibabel",
        "intended_use": "teaching only; not for clinical use",
        "performance": dice or {},
        "network_data_format": {
            "inputs": {"image": {"type": "image", "format": "magnitude", "modality": "MR", "num_channels": 1,
                                 "spatial_shape": [roi] * 3, "dtype": "float32", "value_range": [],
                                 "is_patch_data": True, "channel_def": {"0": "T1"}}},
            "outputs": {"pred": {"type": "image", "format": "segmentation", "num_channels": 3,
                                 "spatial_shape": [roi] * 3, "dtype": "float32", "value_range": [0, 1],
                                 "is_patch_data": True,
                                 "channel_def": {"0": "background", "1": "grey matter", "2": "white matter"}}},
        },
    }


def _version(dist: str) -> str:
    import importlib.metadata as md
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return ""


def export(net: torch.nn.Module, out: Path, net_kind: str, size: str, roi: int, pixdim: float,
           dice: Optional[Dict[str, float]] = None, sample_files: Sequence[str] = ()) -> Path:
    """Write the bundle folder; return it."""
    import shutil
    out = Path(out)
    (out / "configs").mkdir(parents=True, exist_ok=True)
    (out / "models").mkdir(exist_ok=True)
    (out / "docs").mkdir(exist_ok=True)
    (out / "configs" / "inference.json").write_text(json.dumps(inference_config(net_kind, size, roi, pixdim), indent=2))
    (out / "configs" / "metadata.json").write_text(json.dumps(metadata(net_kind, size, roi, pixdim, dice), indent=2))
    tmp = out / "models" / ".tmp_model.pt"
    torch.save({k: v.detach().cpu() for k, v in net.state_dict().items()}, tmp)
    tmp.replace(out / "models" / "model.pt")
    (out / "docs" / "README.md").write_text(
        "# Brain tissue segmentation (tutorial bundle)\n\nRun: `python -m monai.bundle run --config_file "
        "configs/inference.json --bundle_root .` (reads sample_data/*_t1.nii.gz, writes eval/*_seg.nii.gz).\n"
        "Teaching only: trained on synthetic deformations of one template brain.\n")
    if sample_files:
        sd = out / "sample_data"
        sd.mkdir(exist_ok=True)
        for f in sample_files:
            shutil.copyfile(f, sd / Path(f).name)
    return out


_EXC_LINE = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt)):?(.*)$")
_PATH = re.compile(r"(/[^\s'\"<>,:]+\.(?:nii\.gz|nii|pt|ts|json|dcm|nrrd|mha))")


def failure_summary(log: str, bundle: Path, log_file: Optional[Path] = None) -> str:
    """The parts of a failed `monai.bundle run` that say what went wrong: the root cause (the first exception
    of the chain, with the code line that raised it), the last exception, and the data or model files the log
    names (the checkpoint when the root cause is in MONAI's CheckpointLoader)."""
    lines = log.splitlines()
    exc = [i for i, l in enumerate(lines) if _EXC_LINE.match(l) and i > 0]
    if not exc:
        return log[-2000:]
    first = exc[0]
    root = [lines[first]] + [l for l in lines[first + 1:first + 4] if l.strip() and not l.startswith("The above")
                             and not l.startswith("During handling")][:2]
    frames = [l.strip() for l in lines[:first] if l.strip().startswith("File ")]
    where = frames[-1] if frames else "?"
    files = [p for p in dict.fromkeys(_PATH.findall(log)) if "site-packages" not in p and "/lib/python" not in p]
    if any("checkpoint_loader" in f for f in frames[-3:]):
        files.insert(0, str(Path(bundle) / "models" / "model.pt"))
    out = [f"root cause: {' '.join(l.strip() for l in root)[:600]}", f"  raised at {where}"]
    if exc[-1] != first:
        out.append(f"last error: {' '.join(lines[exc[-1]:exc[-1] + 2]).strip()[:300]}")
    out.append("files named: " + (", ".join(files) if files else "none in the log"))
    if log_file is not None:
        out.append(f"full log: {log_file}")
    return "\n".join(out)


def run_bundle(bundle: Path, dataset_dir: Optional[Path] = None, output_dir: Optional[Path] = None,
               timeout: float = 600) -> List[Path]:
    """`python -m monai.bundle run` in a fresh process; return the written segmentations. On failure the
    error carries failure_summary() and the whole log is kept in <output_dir>/bundle_run.log."""
    bundle = Path(bundle).resolve()
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(bundle / "configs" / "inference.json"),
           "--meta_file", str(bundle / "configs" / "metadata.json"), "--bundle_root", str(bundle)]
    if dataset_dir is not None:
        cmd += ["--dataset_dir", str(Path(dataset_dir).resolve())]
    out = Path(output_dir).resolve() if output_dir is not None else bundle / "eval"
    cmd += ["--output_dir", str(out)]
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=str(bundle))
    if res.returncode != 0:
        out.mkdir(parents=True, exist_ok=True)
        log_file = out / "bundle_run.log"
        log_file.write_text(res.stdout + "\n" + res.stderr)
        raise RuntimeError(f"monai.bundle run failed (exit {res.returncode})\n"
                           + failure_summary(res.stderr, bundle, log_file))
    return sorted(out.glob("*_seg.nii.gz"))


def predict_file(net: torch.nn.Module, path: str, roi: int, pixdim: float, device: str = "cpu") -> np.ndarray:
    """The bundle's workflow in plain Python: preprocess, sliding window, softmax, invert to the file's grid,
    argmax. Returns a uint8 label volume on the input file's voxel grid."""
    from monai.inferers import sliding_window_inference
    import mo_transforms as T
    pre = T.infer_transforms(pixdim)
    d = pre({"image": path})
    net = net.to(device).eval()
    with torch.no_grad():
        d["pred"] = sliding_window_inference(d["image"][None].to(device), (roi,) * 3, 4, net, overlap=0.25,
                                             mode="gaussian")[0].cpu()
    d = T.infer_postprocess(pre)(d)
    return np.asarray(d["pred"][0].cpu().numpy(), dtype=np.uint8)
