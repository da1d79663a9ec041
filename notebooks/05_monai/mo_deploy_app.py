"""A MONAI Deploy App SDK application: DICOM study in, DICOM SEG of grey/white matter out.

    DICOMDataLoaderOperator -> DICOMSeriesSelectorOperator -> DICOMSeriesToVolumeOperator
        -> TissueSegOperator (MonaiSegInferenceOperator: MONAI transforms + sliding window, TorchScript model)
        -> DICOMSegmentationWriterOperator (highdicom)

Run it like a packaged MONAI Application Package (MAP) would be run:
    python mo_deploy_app.py -i <dicom folder> -o <output folder> -m <model.ts>
It takes its preprocessing settings (spacing, window size) from `<model.ts>.json` written beside the model.
On bad input (no folder, a folder with no DICOM study, no series matching the rules) it exits non-zero with
a clear message and writes nothing to the output folder: the app works in a temporary folder and moves the
SEG into the output folder only after the whole graph has run.
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

# who made the algorithm, for the SEG's ContributingEquipmentSequence (IHE AI Results; the SDK's ModelInfo)
MODEL_INFO = {"creator": "MONAI tutorial notebook", "name": "brain tissue UNet", "version": "1.0"}
SERIES_RULES = json.dumps({"selections": [{"name": "MR T1", "conditions": {"Modality": "(?i)MR"}}]})


def _sdk():
    from monai.deploy.conditions import CountCondition
    from monai.deploy.core import AppContext, Application
    from monai.deploy.operators.dicom_data_loader_operator import DICOMDataLoaderOperator
    from monai.deploy.operators.dicom_seg_writer_operator import DICOMSegmentationWriterOperator, SegmentDescription
    from monai.deploy.operators.dicom_utils import ModelInfo
    from monai.deploy.operators.dicom_series_selector_operator import DICOMSeriesSelectorOperator
    from monai.deploy.operators.dicom_series_to_volume_operator import DICOMSeriesToVolumeOperator
    from monai.deploy.operators.monai_seg_inference_operator import InMemImageReader, MonaiSegInferenceOperator
    return locals()


def build_app_class():
    """Define the operator and application classes (the SDK is imported only when needed)."""
    S = _sdk()
    from pydicom.sr.codedict import codes
    from pydicom.uid import generate_uid
    import mo_transforms as T

    class TissueSegOperator(S["MonaiSegInferenceOperator"]):
        """The notebook's inference transforms (mo_transforms) around the SDK's sliding-window operator."""

        def __init__(self, fragment, *args, pixdim: float, **kwargs):
            self.pixdim = float(pixdim)
            super().__init__(fragment, *args, pre_transforms=None, post_transforms=None, **kwargs)

        def pre_process(self, img_reader, *args, **kwargs):
            return T.infer_transforms(self.pixdim, reader=img_reader)

        def post_process(self, pre_transforms, *args, **kwargs):
            return T.infer_postprocess(pre_transforms)

    class BrainTissueSegApp(S["Application"]):
        """MONAI Deploy application: MR T1 DICOM series -> DICOM SEG (grey matter, white matter)."""

        def __init__(self, *args, pixdim: float = 3.0, roi: int = 32, **kwargs):
            self.pixdim, self.roi = pixdim, roi
            super().__init__(*args, **kwargs)

        def compose(self):
            from monai.deploy.core.app_context import init_app_context
            ctx = init_app_context(self.argv)   # -i/-o/-m from the command line (or HOLOSCAN_* variables)
            model_path = Path(ctx.model_path)
            out = Path(ctx.output_path)
            loader = S["DICOMDataLoaderOperator"](self, S["CountCondition"](self, 1), input_folder=Path(ctx.input_path),
                                                  name="dicom_loader", must_load=True)
            selector = S["DICOMSeriesSelectorOperator"](self, rules=SERIES_RULES, name="series_selector")
            to_volume = S["DICOMSeriesToVolumeOperator"](self, name="series_to_volume")
            infer = TissueSegOperator(self, pixdim=self.pixdim, roi_size=(self.roi,) * 3, app_context=ctx,
                                      model_path=model_path, sw_batch_size=4, overlap=0.25, mode="gaussian",
                                      name="tissue_seg")
            seg_descs = [
                S["SegmentDescription"](segment_label="grey matter", segmented_property_category=codes.SCT.Tissue,
                                        segmented_property_type=codes.SCT.GrayMatter, algorithm_name="mo_unet",
                                        algorithm_family=codes.DCM.ArtificialIntelligence, algorithm_version="1.0"),
                S["SegmentDescription"](segment_label="white matter", segmented_property_category=codes.SCT.Tissue,
                                        segmented_property_type=codes.SCT.WhiteMatter, algorithm_name="mo_unet",
                                        algorithm_family=codes.DCM.ArtificialIntelligence, algorithm_version="1.0"),
            ]
            # the same Device UID every run for this model version (pydicom derives it from the text)
            model_uid = generate_uid(entropy_srcs=[json.dumps(MODEL_INFO, sort_keys=True)])
            # Without model_info the SDK's writer puts a ModelInfo() of empty strings into the SEG's
            # ContributingEquipmentSequence, and dciodvfy reports the empty (type 1) Manufacturer there.
            writer = S["DICOMSegmentationWriterOperator"](self, segment_descriptions=seg_descs, output_folder=out,
                                                         model_info=S["ModelInfo"](**MODEL_INFO, uid=model_uid), name="seg_writer")
            self.add_flow(loader, selector, {("dicom_study_list", "dicom_study_list")})
            self.add_flow(selector, to_volume, {("study_selected_series_list", "study_selected_series_list")})
            self.add_flow(to_volume, infer, {("image", "image")})
            self.add_flow(infer, writer, {("seg_image", "seg_image")})
            self.add_flow(selector, writer, {("study_selected_series_list", "study_selected_series_list")})

    return BrainTissueSegApp


class BadInput(ValueError):
    """The input is not a DICOM study this app can use."""


MIN_SLICES = 8            # fewer slices than this cannot be a 3-D brain volume for this model
MIN_HEAD_MM = 100.0       # a field of view smaller than this along any axis is smaller than an adult brain


def _series_geometry(headers: list) -> dict:
    """Slice count, orientation, spacing and field of view of one series (a list of pydicom headers).
    Raises BadInput when the slices cannot form one regular 3-D volume."""
    uid = headers[0].SeriesInstanceUID
    tag = f" (series {uid})"
    missing = [k for k in ("ImageOrientationPatient", "ImagePositionPatient", "PixelSpacing", "Rows", "Columns")
               if any(k not in h for h in headers)]
    if missing:
        raise BadInput(f"an MR series lacks {', '.join(missing)}: no 3-D geometry to rebuild a volume from{tag}")
    iops = np.array([[float(v) for v in h.ImageOrientationPatient] for h in headers])
    if np.abs(iops - iops[0]).max() > 1e-3:
        raise BadInput(f"an MR series has slices of different orientations (ImageOrientationPatient){tag}")
    row, col = iops[0][:3], iops[0][3:]
    normal = np.cross(row, col)
    if abs(np.linalg.norm(normal) - 1) > 1e-2 or abs(row @ col) > 1e-2:
        raise BadInput(f"an MR series has an ImageOrientationPatient {list(iops[0])} that is not two orthogonal unit "
                       f"vectors{tag}")
    pos = np.sort([float(np.dot(normal, [float(v) for v in h.ImagePositionPatient])) for h in headers])
    n = len(pos)
    if n < MIN_SLICES:
        raise BadInput(f"an MR series has {n} slice(s); this app segments 3-D brain volumes and needs at least "
                       f"{MIN_SLICES} parallel slices{tag}")
    gaps = np.diff(pos)
    if gaps.min() <= 1e-3:
        raise BadInput(f"an MR series has two or more slices at one position (duplicates or several stacks){tag}")
    if (gaps.max() - gaps.min()) > 0.01 * gaps.mean() + 1e-3:
        raise BadInput(f"an MR series' slice spacing varies from {gaps.min():.3g} to {gaps.max():.3g} mm "
                       f"(missing slices?); the volume would be distorted{tag}")
    px = [float(v) for v in headers[0].PixelSpacing]   # between rows, between columns
    spacing = (px[1], px[0], float(np.mean(gaps)))
    fov = (px[1] * int(headers[0].Columns), px[0] * int(headers[0].Rows), float(pos[-1] - pos[0] + gaps.mean()))
    warnings = []
    if min(fov) < MIN_HEAD_MM:
        warnings.append(f"the MR series' field of view {fov[0]:.0f} x {fov[1]:.0f} x {fov[2]:.0f} mm is smaller than "
                        f"a head ({MIN_HEAD_MM:.0f} mm along each axis); the model was trained on whole-brain T1 "
                        f"volumes, so its output here is not a brain segmentation{tag}")
    axis = np.abs(normal).max()
    if axis < np.cos(np.radians(30)):
        warnings.append(f"the MR series has oblique slices ({np.degrees(np.arccos(axis)):.0f} degrees from the nearest "
                        f"axis); the volume is resampled to RAS, which blurs it{tag}")
    return {"series": str(uid), "slices": n, "spacing_mm": spacing, "fov_mm": fov, "warnings": warnings}


def check_input(input_path: Path) -> dict:
    """Fail early and clearly: the input must be a folder (or file) of DICOM instances with at least one MR
    series that forms a regular 3-D volume (consistent orientation, MIN_SLICES or more slices, even spacing).
    Returns the chosen series' geometry, with `warnings` for what runs but is suspicious (a field of view
    smaller than a head, oblique slices). The largest valid MR series is the one described."""
    import pydicom
    from pydicom.errors import InvalidDicomError
    p = Path(input_path)
    if not p.exists():
        raise BadInput(f"input {p} does not exist")
    files = [p] if p.is_file() else [f for f in sorted(p.rglob("*")) if f.is_file()]
    if not files:
        raise BadInput(f"input {p} is an empty folder: no DICOM series to segment")
    modalities, series = set(), {}
    for f in files:
        try:
            ds = pydicom.dcmread(str(f), stop_before_pixels=True)
        except (InvalidDicomError, OSError, EOFError, ValueError) as exc:
            raise BadInput(f"{f.name} is not a DICOM file ({type(exc).__name__}: {str(exc)[:120]})") from None
        modalities.add(str(getattr(ds, "Modality", "?")))
        if getattr(ds, "Modality", "") == "MR":
            series.setdefault(str(getattr(ds, "SeriesInstanceUID", "?")), []).append(ds)
    if not series:
        raise BadInput(f"no MR series in {p} (modalities found: {sorted(modalities)})")
    found, errors = [], []
    for headers in series.values():
        try:
            found.append(_series_geometry(headers))
        except BadInput as exc:
            errors.append(str(exc))
    if not found:
        raise BadInput("; ".join(errors))
    best = max(found, key=lambda g: g["slices"])
    return {**best, "files": len(files)}


def run_app(input_path: Path, output_path: Path, model_path: Path) -> Path:
    """Run the application on one study; return the SEG file. Nothing is written on failure."""
    input_path, output_path, model_path = Path(input_path), Path(output_path), Path(model_path)
    settings = json.loads(Path(str(model_path) + ".json").read_text())
    geometry = check_input(input_path)
    for w in geometry["warnings"]:
        print(f"WARNING (input): {w}", file=sys.stderr, flush=True)
    App = build_app_class()
    work = Path(tempfile.mkdtemp(prefix="mo_deploy_"))
    try:
        argv = [sys.executable, str(Path(__file__).resolve()), "-i", str(input_path), "-o", str(work), "-m", str(model_path)]
        app = App(argv, pixdim=settings["pixdim"], roi=settings["roi"])
        app.run()
        segs = [f for f in work.rglob("*.dcm")]
        if len(segs) != 1:
            raise RuntimeError(f"the application finished but wrote {len(segs)} SEG files (expected 1); "
                               "see the operator log above")
        output_path.mkdir(parents=True, exist_ok=True)
        final = output_path / segs[0].name
        shutil.move(str(segs[0]), final)
        return final
    finally:
        shutil.rmtree(work, ignore_errors=True)


def export_torchscript(net, path: Path, pixdim: float, roi: int) -> Path:
    """The model file the app loads: TorchScript plus a JSON of its preprocessing settings."""
    import torch
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.jit.script(net.cpu().eval()).save(str(path))
    Path(str(path) + ".json").write_text(json.dumps({"pixdim": float(pixdim), "roi": int(roi)}))
    return path


def run_subprocess(input_path: Path, output_path: Path, model_path: Path, timeout: float = 600):
    """Run the app as its own process (as a MAP would run), with the 32 MB stack Holoscan asks for.
    Returns (exit code, combined output)."""
    import os
    import resource
    import subprocess

    def _stack():
        soft, hard = resource.getrlimit(resource.RLIMIT_STACK)
        want = 32 * 1024 * 1024
        if hard == resource.RLIM_INFINITY or hard >= want:
            resource.setrlimit(resource.RLIMIT_STACK, (want, hard))

    env = dict(os.environ, PYTHONWARNINGS="ignore")
    res = subprocess.run([sys.executable, str(Path(__file__).resolve()), "-i", str(input_path), "-o", str(output_path),
                          "-m", str(model_path)], capture_output=True, text=True, timeout=timeout,
                         preexec_fn=_stack, env=env)
    return res.returncode, res.stdout + res.stderr


def available() -> "str | None":
    """None when the Deploy App SDK (and Holoscan) import here, else the reason."""
    import importlib.util
    for mod in ("holoscan", "monai.deploy", "highdicom"):
        try:
            if importlib.util.find_spec(mod) is None:
                return f"module {mod!r} is not installed (see requirements/nodeps.txt)"
        except ModuleNotFoundError:
            return f"module {mod!r} is not installed (see requirements/nodeps.txt)"
    return None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Brain tissue segmentation: DICOM MR series -> DICOM SEG")
    ap.add_argument("-i", "--input", required=True)
    ap.add_argument("-o", "--output", required=True)
    ap.add_argument("-m", "--model", required=True)
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    try:
        seg = run_app(Path(a.input), Path(a.output), Path(a.model))
    except BadInput as exc:
        print(f"ERROR (bad input): {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        print(f"ERROR (application failed): {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {seg}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
