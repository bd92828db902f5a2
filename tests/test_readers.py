"""Dataset readers: every layout on tiny fixtures written here, the real humanseg290 lists,
bad input (clear errors under on_error="raise", reported skips under "skip") and
`sinet data check`."""

import io
import json
import logging
import re
from contextlib import contextmanager

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps

from sinet_tf.cli import main
from sinet_tf.data import layouts, readers
from sinet_tf.data.readers import (LAYOUTS, DataError, DataReport, FileDataset, Problem, Sample, _orient,
                                   check_dataset, load_dataset)


# --------------------------------------------------------------------------- helpers


def photo(h, w, seed=0):
    """A smooth RGB photo (compresses well, survives JPEG)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def write_rgb(path, rgb):
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return path


def write_grey(path, a):
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.asarray(a, np.uint8))
    return path


def person_mask(h, w, value=255, seed=0):
    """A rectangle 'person' at a seed-dependent place."""
    m = np.zeros((h, w), np.uint8)
    y0, x0 = 2 + seed % 3, 3 + seed % 4
    m[y0:h - 2, x0:w // 2 + seed % 5] = value
    return m


def nearest(mask, h, w):
    return cv2.resize(mask, (w, h), interpolation=cv2.INTER_NEAREST)


def make_folders(root, img_dir="images", mask_dir="masks", n=3, size=(24, 32), small_mask_at=1):
    """n pairs; the mask of pair ``small_mask_at`` is stored at half size. Returns the
    expected label per stem (at the image size, 0/1)."""
    expected = {}
    h, w = size
    for i in range(n):
        stem = f"p{i}"
        write_rgb(root / img_dir / f"{stem}.jpg", photo(h, w, i))
        m = person_mask(h, w, 255, i)
        if i == small_mask_at:
            m = person_mask(h // 2, w // 2, 255, i)
            expected[stem] = nearest(m, h, w) // 255
        else:
            expected[stem] = m // 255
        write_grey(root / mask_dir / f"{stem}.png", m)
    return expected


def labels_by_stem(ds):
    out = {}
    for i, s in enumerate(ds.samples):
        image, label = ds.read(i)
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
        assert label.dtype == np.uint8 and label.shape == image.shape[:2]
        out[s.image.stem] = label
    return out


def assert_labels(ds, expected):
    got = labels_by_stem(ds)
    assert set(got) == set(expected)
    for stem, exp in expected.items():
        np.testing.assert_array_equal(got[stem], exp, err_msg=stem)


# --------------------------------------------------------------------------- layouts


@pytest.mark.parametrize("img_dir,mask_dir", [("images", "masks"), ("Images", "Labels"), ("img", "mask"),
                                              ("image", "label"), ("JPEGImages", "SegmentationClass"),
                                              ("IMAGES", "Masks")])
def test_folder_layouts(tmp_path, img_dir, mask_dir):
    expected = make_folders(tmp_path, img_dir, mask_dir)
    ds = load_dataset(tmp_path)
    assert isinstance(ds, FileDataset) and ds.layout == "folders" and len(ds) == 3
    assert all(isinstance(s, Sample) and s.mask is not None and not s.matte for s in ds.samples)
    assert_labels(ds, expected)
    assert ds.report.ok and ds.report.masks_resized == 1 and ds.report.num_readable == 3
    assert ds.skipped == []


@pytest.mark.parametrize("pattern", ["{kind}/{split}", "{split}/{kind}"])
def test_split_folders(tmp_path, pattern):
    exp = {}
    for split, n in (("train", 3), ("val", 2)):
        sub_img = tmp_path / pattern.format(kind="images", split=split)
        sub_mask = tmp_path / pattern.format(kind="masks", split=split)
        for i in range(n):
            write_rgb(sub_img / f"{split}{i}.jpg", photo(20, 20, i))
            write_grey(sub_mask / f"{split}{i}.png", person_mask(20, 20, 1, i))
        exp[split] = n
    for split, n in exp.items():
        ds = load_dataset(tmp_path, split=split)
        assert ds.layout == "folders" and ds.split == split and len(ds) == n
        assert all(s.image.stem.startswith(split) for s in ds.samples)
    with pytest.raises(DataError, match="no 'test' split"):
        load_dataset(tmp_path, split="test")


def _list_fixture(root):
    expected = make_folders(root, n=4)
    (root / "train.txt").write_text("# image mask\nimages/p0.jpg masks/p0.png\n\n"
                                    "images/p1.jpg\tmasks/p1.png   # half-size mask\n"
                                    "images/p2.jpg masks/p2.png\n")
    (root / "val.txt").write_text("images/p3.jpg masks/p3.png\n")
    return expected


def test_list_file_direct_and_by_split(tmp_path):
    expected = _list_fixture(tmp_path)
    ds = load_dataset(tmp_path / "train.txt")
    assert ds.layout == "list" and len(ds) == 3
    assert [s.image.name for s in ds.samples] == ["p0.jpg", "p1.jpg", "p2.jpg"]
    assert_labels(ds, {k: expected[k] for k in ("p0", "p1", "p2")})
    val = load_dataset(tmp_path, split="val")
    assert val.layout == "list" and len(val) == 1 and val.samples[0].image.name == "p3.jpg"
    # without split the folder layout wins and takes every pair
    assert load_dataset(tmp_path).layout == "folders"


def test_eg1800_layout(tmp_path):
    expected = {}
    for i in range(4):
        name = f"{i:05d}"
        write_rgb(tmp_path / "Images" / f"{name}.png", photo(24, 18, i))
        m = person_mask(24, 18, 1, i)  # EG1800 labels hold 0/1
        write_grey(tmp_path / "Labels" / f"{name}.png", m)
        expected[name] = m
    (tmp_path / "eg1800_train.txt").write_text("00000.png\n00001.png\n00002.png\n")
    (tmp_path / "eg1800_test.txt").write_text("00003.png\n")
    train = load_dataset(tmp_path, split="train")
    assert train.layout == "eg1800" and len(train) == 3
    assert_labels(train, {k: expected[k] for k in ("00000", "00001", "00002")})
    for split in ("val", "test"):
        ds = load_dataset(tmp_path, split=split)
        assert ds.layout == "eg1800" and [s.image.name for s in ds.samples] == ["00003.png"]
    assert load_dataset(tmp_path / "eg1800_test.txt").layout == "eg1800"


def test_rgba_png_alpha_is_the_matte(tmp_path):
    expected = {}
    for i in range(2):
        rgba = np.dstack([photo(16, 20, i), np.zeros((16, 20), np.uint8)])
        alpha = np.tile(np.linspace(0, 255, 20).astype(np.uint8), (16, 1))  # soft edge
        alpha[: 3 + i] = 0
        rgba[:, :, 3] = alpha
        Image.fromarray(rgba, "RGBA").save(tmp_path / f"a{i}.png")
        expected[f"a{i}"] = (alpha >= 128).astype(np.uint8)
    ds = load_dataset(tmp_path)
    assert ds.layout == "rgba" and len(ds) == 2
    assert all(s.mask is None and s.matte for s in ds.samples)
    assert_labels(ds, expected)
    image, _ = ds.read(0)
    np.testing.assert_array_equal(image, photo(16, 20, 0))  # PNG: lossless, alpha dropped
    assert ds.report.mattes == 2 and ds.report.ok


def test_separate_matte_folders(tmp_path):
    # AISegment style: clip_img/ + matting/ (nested folders, RGBA matte PNGs)
    a = tmp_path / "aiseg"
    alpha = np.tile(np.linspace(0, 255, 16).astype(np.uint8), (12, 1))
    write_rgb(a / "clip_img" / "1803" / "clip_0" / "1803-01.jpg", photo(12, 16, 0))
    matting = a / "matting" / "1803" / "matting_0"
    matting.mkdir(parents=True)
    Image.fromarray(np.dstack([np.zeros((12, 16, 3), np.uint8), alpha]), "RGBA").save(matting / "1803-01.png")
    ds = load_dataset(a)
    assert ds.layout == "mattes" and len(ds) == 1 and ds.samples[0].matte
    np.testing.assert_array_equal(ds.read(0)[1], (alpha >= 128).astype(np.uint8))

    # images/ + alpha/ with greyscale mattes, half size (resized before the threshold)
    b = tmp_path / "alpha"
    write_rgb(b / "images" / "x.jpg", photo(12, 16, 1))
    write_grey(b / "alpha" / "x.png", np.where(np.arange(8)[None, :] >= 4, 200, 30).repeat(6, 0))
    ds = load_dataset(b)
    assert ds.layout == "mattes" and ds.report.masks_resized == 1
    label = ds.read(0)[1]
    assert label.shape == (12, 16) and set(np.unique(label)) == {0, 1}
    assert label[:, :7].max() == 0 and label[:, 9:].min() == 1


def test_layout_priority(tmp_path):
    assert LAYOUTS == ("list", "eg1800", "folders", "mattes", "rgba")
    # with a split, every layout is tried at the root before the <split>/ sub-folder: mattes
    # in images/train/ + matting/train/ win over folders in train/images/ + train/masks/
    write_rgb(tmp_path / "images" / "train" / "a.jpg", photo(8, 8))
    write_grey(tmp_path / "matting" / "train" / "a.png", person_mask(8, 8))
    write_rgb(tmp_path / "train" / "images" / "b.jpg", photo(8, 8))
    write_grey(tmp_path / "train" / "masks" / "b.png", person_mask(8, 8))
    ds = load_dataset(tmp_path, split="train")
    assert ds.layout == "mattes" and [(s.image.name, s.mask.name) for s in ds.samples] == [("a.jpg", "a.png")]


@contextmanager
def unregistered_afterwards(name):
    """Removes the layout ``name`` from the registry on exit, whatever happened, so the
    other tests see the built-in layouts only."""
    try:
        yield
    finally:
        if name in layouts.names():
            layouts.unregister(name)


def test_a_new_layout_is_one_definition_and_one_registration(tmp_path):
    data, other = tmp_path / "data", tmp_path / "other"
    expected = {}
    for i in range(3):
        write_rgb(data / "photos" / f"s{i}.jpg", photo(16, 20, i))
        m = person_mask(16, 20, 255, i)
        write_grey(data / "photos" / f"s{i}.mask.png", m)
        expected[f"s{i}"] = m // 255
    write_rgb(data / "photos" / "notes" / "n.jpg", photo(8, 8))  # not *.jpg directly in photos/
    other.mkdir()
    (other / "notes.md").write_text("hi")
    with pytest.raises(DataError, match="unrecognised dataset layout"):  # no built-in layout matches
        load_dataset(data)

    with unregistered_afterwards("photos"):
        @layouts.register
        class Photos(layouts.Layout):
            name = "photos"
            description = "photos/*.jpg with photos/*.mask.png beside them"

            def detect(self, root, split):
                folder = root / "photos"
                if not folder.is_dir():
                    return None
                return [(p, p.with_name(p.stem + ".mask.png")) for p in sorted(folder.glob("*.jpg"))]

        ds = load_dataset(data)
        assert ds.layout == "photos" and readers.LAYOUTS[-1] == "photos"
        assert [(s.image, s.mask, s.matte) for s in ds.samples] == [
            (data / "photos" / f"s{i}.jpg", data / "photos" / f"s{i}.mask.png", False) for i in range(3)]
        assert_labels(ds, expected)
        # the "Looked for" list names it: after the layouts tried without a split, before the list file
        with pytest.raises(DataError, match=re.escape(
                "a folder of RGBA PNGs (alpha = matte), photos/*.jpg with photos/*.mask.png beside them, "
                "or a list file (pass the .txt, or the folder plus split=).")):
            load_dataset(other)
        # split_support is "none" by default: not tried with a split, nor listed
        with pytest.raises(DataError, match="no 'train' split found") as e:
            load_dataset(data, split="train")
        assert "photos/*.jpg" not in str(e.value)
        with pytest.raises(ValueError, match="'photos' is already registered"):
            layouts.register(Photos)

    assert "photos" not in readers.LAYOUTS and readers.LAYOUTS == LAYOUTS
    with pytest.raises(DataError, match="unrecognised dataset layout") as e:
        load_dataset(other)
    assert "photos/*.jpg" not in str(e.value)


def test_palette_png_uses_the_index(tmp_path):
    write_rgb(tmp_path / "images" / "p.jpg", photo(10, 12))
    idx = np.zeros((10, 12), np.uint8)
    idx[2:8, 3:9] = 1
    idx[0, :] = 255  # VOC-style border = ignore
    im = Image.fromarray(idx, "P")
    pal = [0, 0, 0, 192, 0, 0] + [0, 0, 0] * 253 + [224, 224, 192]
    im.putpalette(pal)
    (tmp_path / "masks").mkdir()
    im.save(tmp_path / "masks" / "p.png")
    assert Image.open(tmp_path / "masks" / "p.png").mode == "P"
    ds = load_dataset(tmp_path)
    np.testing.assert_array_equal(ds.read(0)[1], idx)  # index, not the colour; 255 = ignore
    assert ds.report.ignore_pixels == 12 and "palette" in " ".join(ds.report.encodings)


def test_binary_encodings(tmp_path):
    write_rgb(tmp_path / "images" / "a.jpg", photo(8, 8, 0))
    write_rgb(tmp_path / "images" / "b.jpg", photo(8, 8, 1))
    write_rgb(tmp_path / "images" / "c.jpg", photo(8, 8, 2))
    m01 = person_mask(8, 8, 1)
    write_grey(tmp_path / "masks" / "a.png", m01)                      # {0,1}
    write_grey(tmp_path / "masks" / "b.png", m01 * 255)                # {0,255}: 255 = person
    m_ign = m01.copy()
    m_ign[0, :] = 255
    write_grey(tmp_path / "masks" / "c.png", m_ign)                    # {0,1,255}: 255 = ignore
    ds = load_dataset(tmp_path)
    got = labels_by_stem(ds)
    np.testing.assert_array_equal(got["a"], m01)
    np.testing.assert_array_equal(got["b"], m01)
    np.testing.assert_array_equal(got["c"], m_ign)
    assert ds.report.ignore_pixels == 8


def test_multiclass_with_classes_and_ignore(tmp_path):
    write_rgb(tmp_path / "images" / "m.png", photo(10, 10))
    m = (np.arange(100).reshape(10, 10) % 4).astype(np.uint8)
    m[0, 0] = 255
    write_grey(tmp_path / "masks" / "m.png", m)
    classes = ["bg", "skin", "hair", "clothes"]
    ds = load_dataset(tmp_path, classes=classes)
    assert ds.classes == tuple(classes) and ds.num_classes == 4
    np.testing.assert_array_equal(ds.read(0)[1], m)
    rep = ds.report
    assert set(rep.class_pixels) == set(classes) and rep.ignore_pixels == 1
    assert abs(sum(rep.class_fraction.values()) - 1) < 1e-9
    with pytest.raises(DataError, match=r"unexpected values \{3\}"):
        load_dataset(tmp_path, classes=classes[:3])
    with pytest.raises(DataError, match="unexpected values"):
        load_dataset(tmp_path)  # binary default: {0,1,2,3,255} is not a binary mask


def test_greyscale_image_loads_as_rgb(tmp_path):
    grey = photo(10, 14)[:, :, 0]
    write_grey(tmp_path / "images" / "g.png", grey)
    write_grey(tmp_path / "masks" / "g.png", person_mask(10, 14))
    ds = load_dataset(tmp_path)
    image, _ = ds.read(0)
    assert image.shape == (10, 14, 3)
    np.testing.assert_array_equal(image, np.dstack([grey] * 3))
    assert ds.report.greyscale_images == 1


def test_exif_orientation_matches_pillow():
    a = np.arange(3 * 5 * 2, dtype=np.uint8).reshape(3, 5, 2)
    for o in range(1, 9):
        im = Image.fromarray(a[:, :, 0])
        ex = im.getexif()
        ex[0x0112] = o
        buf = io.BytesIO()
        im.save(buf, "PNG", exif=ex.tobytes())
        want = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(buf.getvalue()))))
        np.testing.assert_array_equal(_orient(a[:, :, 0], o), want, err_msg=f"orientation {o}")


def _exif_jpeg(path, rgb, orientation):
    im = Image.fromarray(rgb)
    ex = im.getexif()
    ex[0x0112] = orientation
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, "JPEG", quality=95, exif=ex.tobytes())


def test_exif_rotated_photo_and_mask_stay_aligned(tmp_path):
    # stored 20x40 (landscape) with orientation 6: the upright photo is 40x20 (portrait)
    raw = np.zeros((20, 40, 3), np.uint8)
    raw[:, :10] = 255  # a bright band on the stored left = the upright top
    _exif_jpeg(tmp_path / "images" / "r.jpg", raw, 6)
    upright = np.asarray(ImageOps.exif_transpose(Image.open(tmp_path / "images" / "r.jpg")))
    assert upright.shape == (40, 20, 3)
    band_up = (upright[:, :, 0] > 128).astype(np.uint8)
    # mask drawn on the upright photo (what annotation tools show)
    write_grey(tmp_path / "masks" / "r.png", band_up * 255)
    ds = load_dataset(tmp_path)
    image, label = ds.read(0)
    assert image.shape == (40, 20, 3)
    assert np.abs(image.astype(int) - upright.astype(int)).mean() < 3
    np.testing.assert_array_equal(label, band_up)
    assert ds.report.exif_rotated == 1
    # a mask drawn on the raw (stored) pixels is rotated with the photo
    write_grey(tmp_path / "masks" / "r.png", (raw[:, :, 0] > 128).astype(np.uint8) * 255)
    np.testing.assert_array_equal(load_dataset(tmp_path, validate=False).read(0)[1], band_up)


# --------------------------------------------------------------------------- humanseg290


def test_humanseg_lists(humanseg):
    train = load_dataset(humanseg, split="train", validate=False)
    val = load_dataset(humanseg, split="val", validate=False)
    listed = {split: [line for line in (humanseg / f"{split}.txt").read_text().splitlines() if line.strip()]
              for split in ("train", "val")}
    assert (train.layout, len(train), val.layout, len(val)) == ("list", len(listed["train"]), "list",
                                                                len(listed["val"]))
    assert len(train) + len(val) == 290
    assert train.report is None
    assert not {s.image for s in train.samples} & {s.image for s in val.samples}
    image, label = val.read(0)
    h, w = image.shape[:2]
    raw = cv2.imread(str(val.samples[0].mask), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(label, nearest(raw, h, w) // 255)


def _humanseg_headers(humanseg):
    """What the check should find, read independently from the files' headers with PIL (no
    pixel decoding): the number of pairs, of masks whose size differs from their photo's (after
    the photo's EXIF orientation), of greyscale photos, and of distinct photo sizes."""
    from PIL import Image, ImageOps

    pairs, resized, grey, sizes = 0, 0, 0, set()
    for photo in sorted((humanseg / "images").glob("*.jpg")):
        with Image.open(photo) as image, Image.open(humanseg / "masks" / f"{photo.stem}.png") as mask:
            pairs += 1
            resized += ImageOps.exif_transpose(image).size != mask.size
            grey += image.mode == "L"
            sizes.add(image.size)
    return pairs, resized, grey, len(sizes)


def test_humanseg_check_all_290(humanseg):
    pairs, resized, grey, distinct = _humanseg_headers(humanseg)
    report = check_dataset(humanseg)
    assert isinstance(report, DataReport) and report.layout == "folders"
    assert report.ok, report.problems[:5]
    assert report.num_samples == report.num_readable == pairs == 290
    assert report.masks_resized == resized and report.greyscale_images == grey
    assert report.image_size["distinct"] == distinct
    assert 0.05 < report.class_fraction["person"] < 0.95
    d = json.loads(json.dumps(report.to_dict()))
    assert d["ok"] and d["masks_resized"] == resized
    text = report.summary()
    assert str(resized) in text and "290" in text and "person" in text


# --------------------------------------------------------------------------- bad input


def _good_pairs(root, n=3):
    for i in range(n):
        write_rgb(root / "images" / f"ok{i}.jpg", photo(12, 12, i))
        write_grey(root / "masks" / f"ok{i}.png", person_mask(12, 12, 255, i))


def _bad_corrupt_jpeg(root, humanseg):
    data = (humanseg / "images" / "1.jpg").read_bytes()
    (root / "images" / "bad.jpg").write_bytes(data[: len(data) // 2])
    write_grey(root / "masks" / "bad.png", person_mask(12, 12))
    return root / "images" / "bad.jpg", "unreadable_image", "truncated JPEG"


def _bad_truncated_png(root, humanseg):
    write_rgb(root / "images" / "bad.jpg", photo(12, 12))
    data = (humanseg / "masks" / "1.png").read_bytes()
    (root / "masks" / "bad.png").write_bytes(data[: len(data) // 2])
    return root / "masks" / "bad.png", "unreadable_mask", "truncated PNG"


def _bad_text_jpg(root, humanseg):
    (root / "images" / "bad.jpg").write_text("this is not a photo\n")
    write_grey(root / "masks" / "bad.png", person_mask(12, 12))
    return root / "images" / "bad.jpg", "unreadable_image", "text file"


def _bad_missing_mask(root, humanseg):
    write_rgb(root / "images" / "bad.jpg", photo(12, 12))
    return root / "images" / "bad.jpg", "missing_mask", "without a mask"


def _bad_missing_image(root, humanseg):
    write_grey(root / "masks" / "bad.png", person_mask(12, 12))
    return root / "masks" / "bad.png", "missing_image", "without an image"


def _bad_values(root, humanseg):
    write_rgb(root / "images" / "bad.jpg", photo(12, 12))
    write_grey(root / "masks" / "bad.png", person_mask(12, 12, 7))
    return root / "masks" / "bad.png", "unexpected_mask_values", r"unexpected values \{0, 7\}"


def _bad_entropy_jpeg(root, humanseg):
    """A whole JPEG whose entropy-coded data has 2,000 zeroed bytes: OpenCV decodes it (the
    rest grey) and only libjpeg's warning tells; the file is not truncated."""
    data = bytearray((humanseg / "images" / "1.jpg").read_bytes())
    mid = len(data) // 2
    data[mid:mid + 2000] = bytes(2000)
    (root / "images" / "bad.jpg").write_bytes(bytes(data))
    assert cv2.imdecode(np.frombuffer(bytes(data), np.uint8), cv2.IMREAD_COLOR) is not None
    write_grey(root / "masks" / "bad.png", person_mask(12, 12))
    return root / "images" / "bad.jpg", "unreadable_image", r"corrupt JPEG data \(Corrupt JPEG data: premature end"


def _bad_all_255(root, humanseg):
    """Masks that use 1 for person (and 255 for ignore), and one that is 255 everywhere."""
    for i in range(3):
        m = person_mask(12, 12, 1, i)
        m[0, :] = 255
        write_grey(root / "masks" / f"ok{i}.png", m)
    write_rgb(root / "images" / "bad.jpg", photo(12, 12, 9))
    write_grey(root / "masks" / "bad.png", np.full((12, 12), 255, np.uint8))
    return root / "masks" / "bad.png", "ambiguous_mask", "255 everywhere .* use 1 for person"


BAD = [_bad_corrupt_jpeg, _bad_entropy_jpeg, _bad_truncated_png, _bad_text_jpg, _bad_missing_mask,
       _bad_missing_image, _bad_values, _bad_all_255]


@pytest.mark.parametrize("make_bad", BAD, ids=lambda f: f.__name__[5:])
def test_bad_sample_raise_skip_and_check(tmp_path, humanseg, make_bad, caplog):
    _good_pairs(tmp_path)
    path, kind, pattern = make_bad(tmp_path, humanseg)

    with pytest.raises(DataError) as e:
        load_dataset(tmp_path)
    msg = str(e.value)
    assert isinstance(e.value, ValueError) and str(path) in msg
    assert 'on_error="skip"' in msg and "on_bad_sample: skip" in msg and "--skip-bad" not in msg
    assert re.search(pattern, msg), msg
    assert e.value.problems[0].kind == kind and not e.value.structural

    with caplog.at_level(logging.WARNING, logger="sinet_tf.data"):
        ds = load_dataset(tmp_path, on_error="skip")
    assert len(ds) == 3 and all(s.image.stem.startswith("ok") for s in ds.samples)
    assert [(p.kind, p.path) for p in ds.skipped] == [(kind, str(path))]
    assert isinstance(ds.skipped[0], Problem)
    warning = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "skipped 1 bad sample" in warning and str(path) in warning

    report = check_dataset(tmp_path)
    assert not report.ok and [(p.kind, p.path) for p in report.problems] == [(kind, str(path))]
    assert report.to_dict()["problem_counts"] == {kind: 1}


def test_all_255_mask_where_255_means_person_is_kept(tmp_path):
    # only {0,255} masks: 255 = person everywhere, so an all-255 mask is an all-person label
    _good_pairs(tmp_path)
    write_rgb(tmp_path / "images" / "full.jpg", photo(12, 12, 9))
    write_grey(tmp_path / "masks" / "full.png", np.full((12, 12), 255, np.uint8))
    ds = load_dataset(tmp_path)
    assert len(ds) == 4 and ds.report.ok
    assert (labels_by_stem(ds)["full"] == 1).all()


def test_hash_in_list_file_names(tmp_path):
    write_rgb(tmp_path / "images" / "p#1.jpg", photo(8, 8, 1))
    write_grey(tmp_path / "masks" / "p#1.png", person_mask(8, 8, 1))
    write_rgb(tmp_path / "images" / "p2.jpg", photo(8, 8, 2))
    write_grey(tmp_path / "masks" / "p2.png", person_mask(8, 8, 1, 2))
    (tmp_path / "train.txt").write_text("# image mask\nimages/p#1.jpg masks/p#1.png  # the first\n"
                                        "images/p2.jpg masks/p2.png#not a comment\n")
    with pytest.raises(DataError, match=r"p2.png#not a comment"):
        load_dataset(tmp_path / "train.txt")
    (tmp_path / "train.txt").write_text("# image mask\nimages/p#1.jpg masks/p#1.png  # the first\n"
                                        "  # indented comment\nimages/p2.jpg masks/p2.png\n")
    ds = load_dataset(tmp_path / "train.txt")
    assert [s.image.name for s in ds.samples] == ["p#1.jpg", "p2.jpg"]


def test_soft_masks_suggest_mattes(tmp_path):
    write_rgb(tmp_path / "images" / "s.jpg", photo(16, 32))
    soft = np.tile(np.linspace(0, 255, 32).astype(np.uint8), (16, 1))
    write_grey(tmp_path / "masks" / "s.png", soft)
    report = check_dataset(tmp_path)
    assert report.problems[0].kind == "unexpected_mask_values"
    assert "intermediate levels" in report.problems[0].message and "matte" in report.problems[0].message
    ds = load_dataset(tmp_path, mattes=True)
    np.testing.assert_array_equal(ds.read(0)[1], (soft >= 128).astype(np.uint8))


def test_duplicate_stems(tmp_path):
    _good_pairs(tmp_path)
    write_rgb(tmp_path / "images" / "ok0.png", photo(12, 12))
    report = check_dataset(tmp_path)
    assert {p.kind for p in report.problems} == {"duplicate_stem"} and len(report.problems) == 2
    ds = load_dataset(tmp_path, on_error="skip")
    assert sorted(s.image.name for s in ds.samples) == ["ok1.jpg", "ok2.jpg"]


def test_empty_mask_is_a_warning(tmp_path):
    _good_pairs(tmp_path, 2)
    write_rgb(tmp_path / "images" / "e.jpg", photo(12, 12))
    write_grey(tmp_path / "masks" / "e.png", np.zeros((12, 12)))
    report = check_dataset(tmp_path)
    assert report.ok and report.empty_masks == [str(tmp_path / "masks" / "e.png")]
    assert [w.kind for w in report.warnings] == ["empty_mask"]


def test_structural_errors_raise_even_under_skip(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="empty") as e:
        load_dataset(empty, on_error="skip")
    assert e.value.structural
    (tmp_path / "nothing").mkdir()
    (tmp_path / "nothing" / "notes.md").write_text("hi")
    with pytest.raises(DataError, match="images/\\+masks/") as e:
        load_dataset(tmp_path / "nothing", on_error="skip")
    assert "unrecognised dataset layout" in str(e.value)
    (tmp_path / "nothing" / "images").mkdir()
    (tmp_path / "nothing" / "masks").mkdir()
    with pytest.raises(DataError, match="empty dataset"):
        check_dataset(tmp_path / "nothing")
    with pytest.raises(DataError, match="list file not found"):
        load_dataset(tmp_path / "missing.txt", on_error="skip")
    bad_list = tmp_path / "bad.txt"
    bad_list.write_text("a.jpg b.png c.png\n")
    with pytest.raises(DataError, match="bad.txt:1: expected 'image mask'"):
        load_dataset(bad_list, on_error="skip")


def test_list_naming_a_missing_file_is_a_sample_problem(tmp_path, caplog):
    _list_fixture(tmp_path)
    (tmp_path / "train.txt").write_text("images/p0.jpg masks/p0.png\nimages/gone.jpg masks/p1.png\n")
    with pytest.raises(DataError, match="gone.jpg"):
        load_dataset(tmp_path, split="train")
    with caplog.at_level(logging.WARNING, logger="sinet_tf.data"):
        ds = load_dataset(tmp_path, split="train", on_error="skip")
    assert len(ds) == 1 and ds.skipped[0].kind == "missing_image"
    assert "gone.jpg" in caplog.text
    (tmp_path / "train.txt").write_text("images/gone.jpg masks/p1.png\n")
    with pytest.raises(DataError, match="empty dataset") as e:  # nothing left: structural
        load_dataset(tmp_path, split="train", on_error="skip")
    assert e.value.structural


def test_read_errors_name_the_file_without_validation(tmp_path):
    _good_pairs(tmp_path, 1)
    _bad_text_jpg(tmp_path, None)
    ds = load_dataset(tmp_path, validate=False)
    assert ds.report is None and len(ds) == 2
    i = [s.image.name for s in ds.samples].index("bad.jpg")
    with pytest.raises(ValueError, match="bad.jpg: is a text file"):
        ds.read(i)


def test_check_accepts_a_loaded_dataset(tmp_path):
    make_folders(tmp_path)
    ds = load_dataset(tmp_path, validate=False)
    assert check_dataset(ds).num_readable == 3


# --------------------------------------------------------------------------- CLI


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_data_check(tmp_path, capsys):
    good = tmp_path / "good"
    make_folders(good)
    code, out, _ = _run(capsys, "data", "check", good)
    assert code == 0 and "masks resized" in out and "OK" in out
    code, out, _ = _run(capsys, "data", "check", good, "--json")
    assert code == 0 and json.loads(out)["num_readable"] == 3

    bad = tmp_path / "bad"
    _good_pairs(bad)
    _bad_values(bad, None)
    (bad / "images" / "txt.jpg").write_text("nope")
    write_grey(bad / "masks" / "txt.png", person_mask(12, 12))
    code, out, _ = _run(capsys, "data", "check", bad)
    assert code == 1 and "bad.png" in out and "txt.jpg" in out and "2 PROBLEM" in out
    code, out, _ = _run(capsys, "data", "check", bad, "--json")
    assert code == 1 and len(json.loads(out)["problems"]) == 2

    multi = tmp_path / "multi"
    write_rgb(multi / "images" / "m.png", photo(6, 6))
    write_grey(multi / "masks" / "m.png", np.arange(36).reshape(6, 6) % 3)
    assert _run(capsys, "data", "check", multi)[0] == 1
    assert _run(capsys, "data", "check", multi, "--classes", "bg,skin,hair")[0] == 0

    (tmp_path / "empty").mkdir()
    code, _, err = _run(capsys, "data", "check", tmp_path / "empty")
    assert code == 2 and "empty" in err


def test_damaged_jpegs_are_told_from_real_photos(humanseg):
    """libjpeg's warnings and the end-of-image walk flag damaged JPEGs that OpenCV still
    returns as images, and none of humanseg290's 290 real photos."""
    from sinet_tf.files import decode_image

    flagged = [p.name for p in sorted((humanseg / "images").glob("*.jpg")) if decode_image(p.read_bytes())[1]]
    assert flagged == []
    good = (humanseg / "images" / "2.jpg").read_bytes()
    tail_zeroed = good[:len(good) // 2] + bytes(len(good) - len(good) // 2)   # the end marker overwritten
    assert cv2.imdecode(np.frombuffer(tail_zeroed, np.uint8), cv2.IMREAD_COLOR) is not None
    image, warnings = decode_image(tail_zeroed)
    assert image is not None and warnings and "no end-of-image marker" in warnings[0]
    middle = bytearray((humanseg / "images" / "5.jpg").read_bytes())
    middle[len(middle) // 2:len(middle) // 2 + 2000] = bytes(2000)
    assert decode_image(bytes(middle))[1] == ["Corrupt JPEG data: premature end of data segment"]
    with_trailer = good + b"camera maker's trailing data"
    assert decode_image(with_trailer)[1] == []


def test_without_a_file_descriptor_2_a_jpeg_still_decodes(humanseg, monkeypatch):
    """A host that gives the process no file descriptor 2 (an embedding application): nothing
    can capture libjpeg's warnings, so the photo decodes without them; the end-of-image walk,
    which needs no capture, still flags a truncated file."""
    from sinet_tf import files

    def no_descriptor(fd):
        raise OSError(9, "Bad file descriptor")

    good = (humanseg / "images" / "2.jpg").read_bytes()
    expected = cv2.imdecode(np.frombuffer(good, np.uint8), cv2.IMREAD_UNCHANGED)
    monkeypatch.setattr(files.os, "dup", no_descriptor)
    image, warnings = files.decode_image(good)
    assert warnings == [] and np.array_equal(image, expected)
    tail_zeroed = good[:len(good) // 2] + bytes(len(good) - len(good) // 2)
    assert "no end-of-image marker" in files.decode_image(tail_zeroed)[1][0]
