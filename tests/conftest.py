import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# pytest-xdist's two workers share CI's two cores: one TensorFlow op thread in each rather than
# one per core in each (7% less wall time, measured on tests/test_registry*.py). Processes the
# tests start inherit it.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SINET_SHARED", REPO.parent / "shared"))
OFFICIAL = SHARED / "reference" / "official"
HUMANSEG = SHARED / "datasets" / "humanseg290"


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.fail(f"{path} is missing: tests read the shared reference data from ../shared "
                    "(or from $SINET_SHARED)")
    return path


@pytest.fixture(scope="session")
def official_outputs():
    with np.load(_require(OFFICIAL / "official_outputs.npz")) as d:
        return {k: d[k] for k in d.files}


@pytest.fixture(scope="session")
def sinet_checkpoint():
    return _require(OFFICIAL / "sinet_official_state_dict.npz")


@pytest.fixture(scope="session")
def extremec3_checkpoint():
    return _require(OFFICIAL / "extremec3_official_state_dict.npz")


@pytest.fixture(scope="session")
def humanseg():
    return _require(HUMANSEG)


def make_blob_source(n=6, seed=0, size_range=(150, 300)):
    """Photos built from their masks (person = bright ellipse, background dark), sizes varying."""
    import cv2

    from sinet_tf.data.base import ArraySource

    rng = np.random.default_rng(seed)
    images, labels = [], []
    for _ in range(n):
        h, w = (int(v) for v in rng.integers(*size_range, 2))
        label = np.zeros((h, w), np.uint8)
        cv2.ellipse(label, (w // 2, h // 2), (w // 4, h // 3), float(rng.uniform(0, 180)), 0, 360, 1, -1)
        images.append(np.repeat((label * 200 + 20)[..., None], 3, -1).astype(np.uint8))
        labels.append(label)
    return ArraySource(images, labels, name="blobs")


def assert_label_matches_photo(img, lbl, edge_px=1, max_fraction=0.01):
    """For photos made by :func:`make_blob_source` (person 220, background 20) after a
    geometric augmentation: thresholding the photo gives the label back, except within
    ``edge_px`` pixels of a label boundary or of the 128 padding outside the photo
    (interpolated edges)."""
    import cv2

    g = img[..., 0]
    padded = np.abs(g - 128) < 1e-3
    disagree = ((g > 120) != (lbl == 1)) & ~padded
    boundary = cv2.Canny(lbl * 255, 1, 1) | cv2.Canny(padded.astype(np.uint8) * 255, 1, 1)
    edges = cv2.dilate(boundary, np.ones((2 * edge_px + 1,) * 2, np.uint8)) > 0
    assert not (disagree & ~edges).any(), f"{int((disagree & ~edges).sum())} misaligned pixels away from edges"
    assert disagree.mean() < max_fraction


# The files whose tests take longest in the default suite (`pytest --durations`, summed per
# file), heaviest first. They run first, so that with `-n 2 --dist loadfile
# --no-loadscope-reorder` the short files fill the end of the run on both workers instead of
# one long file running alone on one core (xdist's own reorder sorts files by their number of
# tests; test_registry.py, left in alphabetical order, ran alone for the last 40-80 s).
LONGEST_FILES = ("test_train.py", "test_registry.py", "test_presets.py", "test_multiworker.py", "test_export.py",
                 "test_demo.py", "test_cli.py", "test_console.py", "test_reliability.py", "test_augment.py",
                 "test_registry_export.py", "test_postprocess_export.py", "test_float_rewrite.py", "test_predict.py",
                 "test_deeplabv3plus.py", "test_int8_rewrite.py", "test_sinet_variants.py", "test_model_soup.py")


def pytest_collection_modifyitems(config, items):
    """Tests marked ``slow`` (the large zoo models' registry checks, full-size sweeps) run
    with ``-m slow`` or ``SINET_SLOW=1``; the default suite stays within CI's time budget.
    The longest files are collected first (:data:`LONGEST_FILES`; a stable sort, so every
    file's tests stay together and in order)."""
    rank = {name: i for i, name in enumerate(LONGEST_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
    marker = config.getoption("-m") or ""
    if os.environ.get("SINET_SLOW") == "1" or ("slow" in marker and "not slow" not in marker):
        return
    skip = pytest.mark.skip(reason="slow: run with -m slow or SINET_SLOW=1")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
