import numpy as np
import pytest

import mo_dicom


def test_series_round_trip_keeps_values_and_geometry(tmp_path):
    rng = np.random.default_rng(0)
    vol = rng.uniform(0, 2, size=(7, 9, 5)).astype(np.float32)
    affine = np.array([[2.0, 0, 0, -10], [0, 1.5, 0, 20], [0, 0, 3.0, -5], [0, 0, 0, 1]])
    files = mo_dicom.write_dicom_series(vol, affine, tmp_path / "s")
    assert len(files) == 5
    back = mo_dicom.read_series(tmp_path / "s")
    assert tuple(back.shape) == (1, 7, 9, 5)
    assert np.abs(back[0].numpy() - vol).max() < 2 / 65535 + 1e-6
    assert np.allclose(back.affine.numpy(), affine, atol=1e-4)


def test_seg_written_by_highdicom_reads_back_on_the_source_grid(tmp_path):
    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes
    vol = np.random.default_rng(1).uniform(0, 1, size=(8, 6, 4)).astype(np.float32)
    files = mo_dicom.write_dicom_series(vol, np.eye(4), tmp_path / "s")
    labels = np.zeros(vol.shape, np.uint8)
    labels[1:4, 2:5, 1] = 1
    labels[5:7, 0:2, 2] = 2
    sources = [pydicom.dcmread(str(f)) for f in files]
    algo = hd.AlgorithmIdentificationSequence(name="test", version="1", family=codes.DCM.ArtificialIntelligence)
    descs = [hd.seg.SegmentDescription(segment_number=i, segment_label=n, segmented_property_category=codes.SCT.Tissue,
                                       segmented_property_type=t, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                                       algorithm_identification=algo)
             for i, n, t in ((1, "grey matter", codes.SCT.GrayMatter), (2, "white matter", codes.SCT.WhiteMatter))]
    # highdicom wants frames in source order, (slices, rows, columns)
    pixel = np.stack([labels[:, :, k].T for k in range(vol.shape[2])])
    seg = hd.seg.Segmentation(source_images=sources, pixel_array=pixel,
                              segmentation_type=hd.seg.SegmentationTypeValues.BINARY, segment_descriptions=descs,
                              series_instance_uid=hd.UID(), series_number=2, sop_instance_uid=hd.UID(),
                              instance_number=1, manufacturer="test", manufacturer_model_name="test",
                              software_versions="1", device_serial_number="1")
    out = tmp_path / "seg"
    out.mkdir()
    seg.save_as(str(out / "seg.dcm"))
    found = mo_dicom.find_seg(out)
    r = mo_dicom.read_seg_as_volume(found, tmp_path / "s")
    assert r["segments"] == {1: "grey matter", 2: "white matter"}
    assert np.array_equal(r["labels"], labels)


def test_series_is_valid_for_dciodvfy(tmp_path):
    files = mo_dicom.write_dicom_series(np.ones((4, 5, 3), np.float32), np.eye(4), tmp_path / "s")
    checks = [mo_dicom.dciodvfy(f) for f in (files[0], files[-1])]
    if checks[0] is None:
        pytest.skip("dciodvfy (Debian package dicom3tools) is not installed; the setup installs it with apt-get")
    for c in checks:
        assert c["errors"] == [], c["errors"]
        # the float values need RescaleSlope/Intercept, which the MR IOD does not list: warnings, not errors
        assert all("Rescale" in w or "not present in standard" in w for w in c["warnings"]), c["warnings"]
