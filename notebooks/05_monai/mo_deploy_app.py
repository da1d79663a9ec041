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

SERIES_RULES = json.dumps({"selections": [{"name": "MR T1", "conditions": {"Modality": "(?i)MR"}}]})


def _sdk():
    from monai.deploy.conditions import CountCondition
    from monai.deploy.core import AppContext, Application
    from monai.deploy.operators.dicom_data_loader_operator import DICOMDataLoaderOperator
    from monai.deploy.operators.dicom_seg_writer_operator import DICOMSegmentationWriterOperator, SegmentDescription
    from monai.deploy.operators.dicom_series_selector_operator import DICOMSeriesSelectorOperator
    from monai.deploy.operators.dicom_series_to_volume_operator import DICOMSeriesToVolumeOperator
    from monai.deploy.operators.monai_seg_inference_operator import InMemImageReader, MonaiSegInferenceOperator
    return locals()


def build_app_class():
    """Define the operator and application classes (the SDK is imported only when needed)."""
    S = _sdk()
    from pydicom.sr.codedict import codes
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
            writer = S["DICOMSegmentationWriterOperator"](self, segment_descriptions=seg_descs, output_folder=out,
                                                         name="seg_writer")
            self.add_flow(loader, selector, {("dicom_study_list", "dicom_study_list")})
            self.add_flow(selector, to_volume, {("study_selected_series_list", "study_selected_series_list")})
            self.add_flow(to_volume, infer, {("image", "image")})
            self.add_flow(infer, writer, {("seg_image", "seg_image")})
            self.add_flow(selector, writer, {("study_selected_series_list", "study_selected_series_list")})

    return BrainTissueSegApp


class BadInput(ValueError):
    """The input is not a DICOM study this app can use."""


def check_input(input_path: Path) -> int:
    """Fail early and clearly: the input must be a folder (or file) holding at least one DICOM instance
    of the MR modality. Returns the number of DICOM files found."""
    import pydicom
    from pydicom.errors import InvalidDicomError
    p = Path(input_path)
    if not p.exists():
        raise BadInput(f"input {p} does not exist")
    files = [p] if p.is_file() else [f for f in sorted(p.rglob("*")) if f.is_file()]
    if not files:
        raise BadInput(f"input {p} is an empty folder: no DICOM series to segment")
    n, modalities = 0, set()
    for f in files:
        try:
            ds = pydicom.dcmread(str(f), stop_before_pixels=True)
        except (InvalidDicomError, OSError, EOFError, ValueError) as exc:
            raise BadInput(f"{f.name} is not a DICOM file ({type(exc).__name__}: {str(exc)[:120]})") from None
        n += 1
        modalities.add(str(getattr(ds, "Modality", "?")))
    if "MR" not in modalities:
        raise BadInput(f"no MR series in {p} (modalities found: {sorted(modalities)})")
    return n


def run_app(input_path: Path, output_path: Path, model_path: Path) -> Path:
    """Run the application on one study; return the SEG file. Nothing is written on failure."""
    input_path, output_path, model_path = Path(input_path), Path(output_path), Path(model_path)
    settings = json.loads(Path(str(model_path) + ".json").read_text())
    check_input(input_path)
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
