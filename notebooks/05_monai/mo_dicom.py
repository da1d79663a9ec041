"""DICOM in and out: write a volume as an MR image series (pydicom), read a DICOM SEG back (highdicom).

Coordinates: a NIfTI affine maps voxel indices to RAS+ millimetres (x grows towards the patient's
Right, y towards Anterior, z towards Superior); DICOM uses LPS+ (x towards Left, y towards Posterior).
So x_lps = -x_ras, y_lps = -y_ras, z unchanged.
Each axial slice k becomes one instance: pixel (row r, column c) = volume[c, r, k].
"""
from __future__ import annotations

import datetime
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])


def write_dicom_series(volume: np.ndarray, affine: np.ndarray, out_dir: Path, patient_id: str = "MONAI-TUTORIAL",
                       series_description: str = "synthetic T1 from MNI152", modality: str = "MR",
                       seed: int = 0) -> List[Path]:
    """Write a 3-D float volume (i, j, k) with a NIfTI affine as a series of single-frame MR images.

    Pixel values are stored as uint16 with RescaleSlope/RescaleIntercept so that the float values survive
    (quantisation step = range / 65535). Returns the written file paths (one per slice).
    """
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    vol = np.asarray(volume, dtype=np.float64)
    if vol.ndim != 3:
        raise ValueError(f"expected a 3-D volume, got shape {vol.shape}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    lo, hi = float(vol.min()), float(vol.max())
    slope = (hi - lo) / 65535.0 if hi > lo else 1.0
    stored = np.round((vol - lo) / slope).clip(0, 65535).astype(np.uint16)

    A = np.asarray(affine, dtype=np.float64)
    M = RAS_TO_LPS @ A[:3, :3]
    t = RAS_TO_LPS @ A[:3, 3]
    spacing = np.sqrt((A[:3, :3] ** 2).sum(0))
    row_cos = M[:, 0] / spacing[0]      # direction of increasing column index c (= i)
    col_cos = M[:, 1] / spacing[1]      # direction of increasing row index r (= j)
    rng = np.random.default_rng(seed)
    uid = lambda: generate_uid(entropy_srcs=[str(rng.integers(1 << 62))])
    study_uid, series_uid, for_uid = uid(), uid(), uid()
    now = datetime.datetime(2024, 1, 1, 12, 0, 0)
    paths = []
    for k in range(vol.shape[2]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID = MRImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.PatientName = "Tutorial^Synthetic"
        ds.PatientID = patient_id
        ds.PatientBirthDate = ""
        ds.PatientSex = "O"
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = for_uid
        ds.StudyID = "1"
        ds.SeriesNumber = 1
        ds.InstanceNumber = k + 1
        ds.AccessionNumber = ""
        ds.ReferringPhysicianName = ""
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = now.strftime("%Y%m%d")
        ds.StudyTime = ds.SeriesTime = ds.ContentTime = now.strftime("%H%M%S")
        ds.Modality = modality
        ds.Manufacturer = "MONAI tutorial"
        ds.SeriesDescription = series_description
        ds.StudyDescription = "MONAI tutorial study"
        ds.BodyPartExamined = "BRAIN"
        # value 3 is required for MR (PS3.3 C.8.3.1.1.1); "OTHER" is one of its defined terms
        ds.ImageType = ["DERIVED", "SECONDARY", "OTHER"]
        ds.PatientPosition = "HFS"                # head first, supine (required when a FrameOfReference is given)
        ds.PositionReferenceIndicator = ""        # type 2: present, may be empty
        # MR Image module, type 2/2C: a synthetic series has no real sequence timing; the values describe a
        # generic 3-D T1 gradient echo so that the instances validate (dciodvfy) and viewers read them
        ds.RepetitionTime = 8.0                   # ms
        ds.EchoTime = 3.5                         # ms
        ds.EchoTrainLength = 1
        ds.ScanningSequence = "GR"
        ds.SequenceVariant = "NONE"
        ds.ScanOptions = ""
        ds.MRAcquisitionType = "3D"
        ds.ImagePositionPatient = [float(v) for v in (M @ np.array([0.0, 0.0, k]) + t)]
        ds.ImageOrientationPatient = [float(v) for v in np.concatenate([row_cos, col_cos])]
        ds.PixelSpacing = [float(spacing[1]), float(spacing[0])]   # row spacing (between rows), column spacing
        ds.SliceThickness = float(spacing[2])
        ds.SpacingBetweenSlices = float(spacing[2])
        ds.SliceLocation = float(ds.ImagePositionPatient[2])
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        pix = np.ascontiguousarray(stored[:, :, k].T)                # rows = j, columns = i
        ds.Rows, ds.Columns = pix.shape
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 0
        ds.RescaleSlope = f"{slope:.10g}"
        ds.RescaleIntercept = f"{lo:.10g}"
        ds.RescaleType = "US"
        ds.PixelData = pix.tobytes()
        path = out_dir / f"slice_{k:04d}.dcm"
        ds.save_as(str(path), enforce_file_format=True)
        paths.append(path)
    return paths


def read_series(folder: Path):
    """Read a DICOM series folder back through MONAI (PydicomReader) -> channel-first MetaTensor in RAS."""
    from monai.transforms import Compose, EnsureChannelFirst, LoadImage, Orientation
    from mo_transforms import RAS_LABELS
    return Compose([LoadImage(reader="PydicomReader", image_only=True), EnsureChannelFirst(),
                    Orientation(axcodes="RAS", labels=RAS_LABELS)])(str(folder))


def find_seg(folder: Path) -> Path:
    """The single DICOM SEG file written into `folder` (raises if there is none or several)."""
    import pydicom
    segs = []
    for p in sorted(Path(folder).rglob("*")):
        if p.is_file():
            try:
                ds = pydicom.dcmread(str(p), stop_before_pixels=True)
            except Exception:
                continue
            if getattr(ds, "Modality", "") == "SEG":
                segs.append(p)
    if len(segs) != 1:
        raise FileNotFoundError(f"expected one DICOM SEG under {folder}, found {len(segs)}")
    return segs[0]


def read_seg_as_volume(seg_path: Path, series_dir: Path) -> Dict[str, object]:
    """Read a DICOM SEG with highdicom and lay its segments back onto the source series' voxel grid.

    Returns {"labels": uint8 (i, j, k) array like the written volume, "segments": {number: label text}}.
    Frames are matched to source slices through their referenced SOP Instance UIDs.
    """
    import highdicom as hd
    import pydicom
    seg = hd.seg.segread(str(seg_path))
    sources = {}
    for p in sorted(Path(series_dir).glob("*.dcm")):
        ds = pydicom.dcmread(str(p), stop_before_pixels=True)
        sources[ds.SOPInstanceUID] = (int(ds.InstanceNumber) - 1, int(ds.Columns), int(ds.Rows))
    ncols, nrows = next(iter(sources.values()))[1:]
    labels = np.zeros((ncols, nrows, len(sources)), dtype=np.uint8)
    numbers = list(seg.segment_numbers)
    names = {n: seg.get_segment_description(n).segment_label for n in numbers}
    uids = [u for u in seg.get_source_image_uids()]
    sop_uids = [u[2] for u in uids]
    present = [u for u in sop_uids if u in sources]
    if present:
        arr = seg.get_pixels_by_source_instance(source_sop_instance_uids=present, segment_numbers=numbers,
                                                combine_segments=True, skip_overlap_checks=True,
                                                ignore_spatial_locations=True)
        for u, frame in zip(present, arr):
            labels[:, :, sources[u][0]] = np.asarray(frame).T
    return {"labels": labels, "segments": names}


# The one error dciodvfy reports on the SEG that the Deploy App SDK 4.0 writes, and that is not ours to fix:
# its DICOMSegmentationWriterOperator adds a ContributingEquipmentSequence item with an empty Manufacturer
# (type 1 there). Kept as a named exception so that any *other* error still fails the checks.
SDK_SEG_KNOWN_ERRORS = ("Manufacturer",)


def dciodvfy(path: Path) -> Optional[Dict[str, List[str]]]:
    """Validate one DICOM file against its IOD with dciodvfy (David Clunie's dicom3tools, Debian package
    `dicom3tools`). Returns {"errors": [...], "warnings": [...]} (the tool's lines), or None when the tool is
    not installed. dciodvfy exits 0 even when it reports errors, so the lines are what counts."""
    import shutil
    import subprocess
    exe = shutil.which("dciodvfy")
    if exe is None:
        return None
    res = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=120)
    lines = (res.stdout + res.stderr).splitlines()
    return {"errors": [l for l in lines if l.startswith("Error")],
            "warnings": [l for l in lines if l.startswith("Warning")]}
