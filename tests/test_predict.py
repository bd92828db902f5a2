"""`sinet predict`: photos (letterbox, EXIF), videos, webcams, composites, the
no-letterbox path being exactly what `sinet evaluate` scores, and the temporal/refinement
options with their errors."""

from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from sinet_tf.cli import main
from sinet_tf.inference import LETTERBOX_FILL, Segmenter, letterbox
from sinet_tf.predict import predict

VAL_PHOTOS = ("6", "8", "9")  # humanseg290 val.txt, landscape photos of different sizes


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _grey(path):
    img = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    assert img is not None, f"{path} was not written"
    return img


def _frames(path):
    cap = cv2.VideoCapture(str(path))
    frames = []
    while (frame := cap.read())[0]:
        frames.append(frame[1])
    cap.release()
    return frames


def _video_info(path):
    cap = cv2.VideoCapture(str(path))
    assert cap.isOpened(), f"{path} does not open"
    fps, frames, size = cap.get(cv2.CAP_PROP_FPS), 0, None
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames, size = frames + 1, frame.shape[:2]
    cap.release()
    return fps, frames, size


@pytest.fixture(scope="module")
def official_keras(tmp_path_factory, sinet_checkpoint):
    out = tmp_path_factory.mktemp("model") / "sinet_official.keras"
    assert main(["import-weights", "sinet", str(sinet_checkpoint), "-o", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def segmenter(official_keras):
    return Segmenter(official_keras, keep_aspect=True)


@pytest.fixture(scope="module")
def plain(official_keras):
    return Segmenter(official_keras)  # no letterbox: what evaluate() builds


def test_no_keep_aspect_gives_exactly_the_masks_evaluate_scores(capsys, tmp_path, official_keras, plain, humanseg):
    from sinet_tf.data.readers import load_dataset
    from sinet_tf.evaluate import evaluate

    photos = [humanseg / "images" / f"{s}.jpg" for s in VAL_PHOTOS]
    code, out, err = _run(capsys, "predict", official_keras, *photos, "--no-keep-aspect", "--refine", "none",
                          "-o", tmp_path / "p")
    assert code == 0, err
    val = load_dataset(humanseg, split="val")
    ious = []
    for stem in VAL_PHOTOS:
        i = next(k for k in range(len(val)) if val.samples[k].image.stem == stem)
        image, label = val.read(i)
        written = _grey(tmp_path / "p" / f"{stem}_mask.png") // 255
        np.testing.assert_array_equal(written, plain.mask(image), err_msg=f"photo {stem}")
        ious.append(((written == 1) & (label == 1)).sum() / ((written == 1) | (label == 1)).sum())
    # evaluate() on these photos scores exactly the written masks
    listing = tmp_path / "three.txt"
    listing.write_text("".join(f"{humanseg / 'images' / f'{s}.jpg'} {humanseg / 'masks' / f'{s}.png'}\n"
                               for s in VAL_PHOTOS))
    assert evaluate(plain, str(listing), split=None)["person_iou"] == pytest.approx(np.mean(ious), abs=1e-6)


def test_photo_outputs_mask_and_matte_at_the_photo_size(capsys, tmp_path, official_keras, humanseg):
    photo = humanseg / "images" / "1.jpg"
    code, out, _ = _run(capsys, "predict", official_keras, photo, "-o", tmp_path)
    assert code == 0 and "1_mask.png" in out and "1_matte.png" in out
    h, w = cv2.imread(str(photo)).shape[:2]
    mask, matte = _grey(tmp_path / "1_mask.png"), _grey(tmp_path / "1_matte.png")
    assert mask.shape == matte.shape == (h, w) and set(np.unique(mask)) <= {0, 255}
    assert len(np.unique(matte)) > 10                    # soft, not binary
    assert ((matte >= 128) == (mask == 255)).mean() > 0.999
    truth = _grey(humanseg / "masks" / "1.png") > 127
    pred = mask == 255
    assert (pred & truth).sum() / (pred | truth).sum() > 0.5
    assert not (tmp_path / "1_composite.jpg").exists()   # only with --background


def test_letterbox_keeps_the_aspect_ratio():
    image = np.full((50, 200, 3), 7, np.uint8)
    x, (top, left, h, w) = letterbox(image, (128, 128))
    assert x.shape == (128, 128, 3) and x.dtype == np.float32
    assert (top, left, h, w) == (48, 0, 32, 128)
    assert (x[:top] == LETTERBOX_FILL).all() and (x[top + h:] == LETTERBOX_FILL).all()
    assert (x[top:top + h] == 7).all()


def test_very_wide_photo_with_and_without_letterbox(tmp_path, segmenter, plain, humanseg):
    photo = cv2.imread(str(humanseg / "images" / "1.jpg"))
    wide = np.concatenate([photo[:, ::-1], photo, photo[:, ::-1]], axis=1)  # 3x as wide
    cv2.imwrite(str(tmp_path / "wide.png"), wide)
    masks = {}
    for name, seg in (("keep", segmenter), ("squash", plain)):
        predict(seg, [tmp_path / "wide.png"], tmp_path / name)
        masks[name] = _grey(tmp_path / name / "wide_mask.png")
        assert masks[name].shape == wide.shape[:2] and set(np.unique(masks[name])) <= {0, 255}
        assert 0.02 < (masks[name] == 255).mean() < 0.9
    assert (masks["keep"] != masks["squash"]).any()


def test_exif_orientation_is_applied(tmp_path, segmenter, humanseg):
    raw = cv2.cvtColor(cv2.imread(str(humanseg / "images" / "1.jpg")), cv2.COLOR_BGR2RGB)
    im = Image.fromarray(raw)
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    im.save(tmp_path / "rotated.jpg", "JPEG", quality=95, exif=exif.tobytes())
    predict(segmenter, [tmp_path / "rotated.jpg"], tmp_path / "out", refine="none")
    mask = _grey(tmp_path / "out" / "rotated_mask.png")
    assert mask.shape == (raw.shape[1], raw.shape[0])  # upright: width and height swapped
    stored = cv2.cvtColor(cv2.imread(str(tmp_path / "rotated.jpg"), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION),
                          cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(mask // 255, segmenter.mask(np.rot90(stored, -1)))


def test_composite_shows_the_colour_behind_and_the_photo_in_front(tmp_path, segmenter, humanseg):
    photo = humanseg / "images" / "1.jpg"
    predict(segmenter, [photo], tmp_path, background="#00C8FF")
    comp = cv2.cvtColor(cv2.imread(str(tmp_path / "1_composite.jpg")), cv2.COLOR_BGR2RGB).astype(np.float32)
    image = cv2.cvtColor(cv2.imread(str(photo)), cv2.COLOR_BGR2RGB).astype(np.float32)
    matte = _grey(tmp_path / "1_matte.png")
    k = np.ones((7, 7), np.uint8)
    behind = cv2.erode((matte <= 5).astype(np.uint8), k).astype(bool)       # surely background
    front = cv2.erode((matte >= 250).astype(np.uint8), k).astype(bool)      # surely person
    assert behind.sum() > 500 and front.sum() > 500
    assert np.abs(comp[behind] - [0, 200, 255]).mean() < 6
    assert np.abs(comp[front] - image[front]).mean() < 6
    # blur and picture backgrounds: same size, and the background really changes
    other = np.zeros((40, 90, 3), np.uint8)
    other[:, :45] = [255, 0, 0]
    cv2.imwrite(str(tmp_path / "bg.png"), other)
    for spec, name in (("blur", "b"), (str(tmp_path / "bg.png"), "i")):
        predict(segmenter, [photo], tmp_path / name, background=spec)
        out = cv2.imread(str(tmp_path / name / "1_composite.jpg")).astype(np.float32)
        assert out.shape == image.shape and np.abs(out[..., ::-1][behind] - image[behind]).mean() > 3


def test_video_keeps_frame_rate_and_frame_count(capsys, tmp_path, official_keras, segmenter, humanseg):
    video = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (160, 120))
    for i in range(12):
        writer.write(cv2.resize(cv2.imread(str(humanseg / "images" / f"{i + 1}.jpg")), (160, 120)))
    writer.release()
    code, out, err = _run(capsys, "predict", official_keras, tmp_path, "--background", "00ff00",
                          "-o", tmp_path / "out")  # a folder: its top-level video
    assert code == 0, err
    assert "audio is not carried over" in out
    for name in ("clip_mask.mp4", "clip_composite.mp4"):
        fps, frames, size = _video_info(tmp_path / "out" / name)
        assert (fps, frames, size) == (10.0, 12, (120, 160)), name
    # the masks are the video pipeline's (default smoothing and refinement) run frame by frame
    # on the decoded frames, up to the mp4v coding of the mask video: blank or shifted masks fail
    from sinet_tf.postprocess import MattePipeline
    from sinet_tf.predict import postprocessors

    pipeline = MattePipeline(segmenter, postprocessors()[1])
    wanted = [pipeline(cv2.cvtColor(f, cv2.COLOR_BGR2RGB)) > 0.5 for f in _frames(video)]
    got = [f[..., 0] > 127 for f in _frames(tmp_path / "out" / "clip_mask.mp4")]
    assert len(got) == len(wanted) == 12
    for k, (g, w) in enumerate(zip(got, wanted)):
        assert 0.05 < w.mean() < 0.95, f"frame {k}: the reference mask is nearly empty or full"
        assert (g != w).mean() < 0.01, f"frame {k}: {(g != w).mean():.3%} of the pixels differ"
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]  # no temporary files left
    predict(segmenter, [video], tmp_path / "five", max_frames=5)
    assert _video_info(tmp_path / "five" / "clip_mask.mp4")[:2] == (10.0, 5)
    assert not (tmp_path / "five" / "clip_composite.mp4").exists()


def test_clear_errors(capsys, tmp_path, official_keras, humanseg):
    fake = tmp_path / "notes.mp4"
    fake.write_text("this is text, not a video")
    code, _, err = _run(capsys, "predict", official_keras, fake, "-o", tmp_path / "o")
    assert code == 2 and "could not read video" in err and "notes.mp4" in err
    assert not (tmp_path / "o" / "notes_mask.mp4").exists()

    code, _, err = _run(capsys, "predict", official_keras, "7", "--frames", "3", "-o", tmp_path / "o")
    assert code == 2 and "webcam 7 could not be opened" in err

    code, _, err = _run(capsys, "predict", official_keras, humanseg / "images" / "1.jpg", "--background", "#12345",
                        "-o", tmp_path / "o")
    assert code == 2 and "--background '#12345'" in err

    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "1.png").write_bytes((humanseg / "images" / "1.jpg").read_bytes())
    code, _, err = _run(capsys, "predict", official_keras, humanseg / "images" / "1.jpg", tmp_path / "a",
                        "-o", tmp_path / "o")
    assert code == 2 and "different output folders" in err

    (tmp_path / "empty").mkdir()
    code, _, err = _run(capsys, "predict", official_keras, tmp_path / "empty", "-o", tmp_path / "o")
    assert code == 2 and "holds no images" in err

    model = tmp_path / "model.txt"
    model.write_text("not a model")
    code, _, err = _run(capsys, "predict", model, humanseg / "images" / "1.jpg", "-o", tmp_path / "o")
    assert code == 2 and "unknown model" in err


class _FakeCapture:
    """A video reader whose frames are the given arrays (BGR), at 10 fps."""

    def __init__(self, frames):
        self.frames = list(frames)

    def read(self):
        return (True, self.frames.pop(0)) if self.frames else (False, None)

    def get(self, prop):
        return {cv2.CAP_PROP_FPS: 10.0, cv2.CAP_PROP_FRAME_COUNT: 0}.get(prop, 0.0)

    def isOpened(self):
        return True

    def release(self):
        pass


def test_a_video_whose_frames_change_size_is_an_error_naming_file_and_frame(capsys, tmp_path, official_keras,
                                                                           monkeypatch):
    import sinet_tf.predict as predict_module

    video = tmp_path / "resized.mp4"
    video.write_bytes(b"stand-in: the reader is replaced below")
    frames = [np.full((48, 64, 3), 90, np.uint8)] * 3 + [np.full((60, 80, 3), 90, np.uint8)]
    monkeypatch.setattr(predict_module, "_open_capture", lambda item: _FakeCapture(frames))
    code, out, err = _run(capsys, "predict", official_keras, video, "-o", tmp_path / "o")
    assert code == 2, out
    line = err.strip().splitlines()[-1]
    assert "resized.mp4" in line and "frame 3" in line and "80x60" in line and "64x48" in line
    assert not (tmp_path / "o" / "resized_mask.mp4").exists()
    assert not [p for p in (tmp_path / "o").iterdir()]  # the partial video was removed


def test_temporal_and_refine_values_are_checked_before_the_model_loads(capsys, tmp_path, humanseg):
    photo = humanseg / "images" / "1.jpg"
    for flags, text in [(["--temporal-strength", "1.5"], "--temporal-strength 1.5"),
                        (["--temporal-strength", "-0.2"], "--temporal-strength -0.2"),
                        (["--refine-radius", "0"], "--refine-radius 0"),
                        (["--refine-eps", "-1"], "--refine-eps -1.0")]:
        # the model name is not even valid: the values fail first
        code, _, err = _run(capsys, "predict", "no-such-model.keras", photo, *flags, "-o", tmp_path)
        assert code == 2 and text in err and len(err.strip().splitlines()) == 1, err
    with pytest.raises(SystemExit) as e:
        main(["predict", "x.keras", str(photo), "--temporal", "kalman", "-o", str(tmp_path)])
    assert e.value.code == 2
    assert "--temporal: invalid choice: 'kalman'" in capsys.readouterr().err


def test_video_smoothing_follows_the_pipeline(tmp_path, segmenter, humanseg, monkeypatch):
    """The mask video of --temporal ema equals the pipeline run frame by frame (written as
    mp4v, so compared after the same encoding); smoothing changes the masks."""
    import sinet_tf.predict as predict_module
    from sinet_tf.postprocess import MattePipeline, MattePostprocessor

    rng = np.random.default_rng(0)
    base = cv2.resize(cv2.imread(str(humanseg / "images" / "1.jpg")), (160, 120)).astype(np.int16)
    frames = [np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8) for _ in range(8)]
    written = {}

    class Recorder:
        def __init__(self, path, *args):
            self.path = path
            written[Path(path).name.split(".")[1]] = self.frames = []

        def isOpened(self):
            return True

        def write(self, frame):
            self.frames.append(frame[..., 0].copy())

        def release(self):
            Path(self.path).write_bytes(b"")

    monkeypatch.setattr(predict_module, "_open_capture", lambda item: _FakeCapture(frames))
    monkeypatch.setattr(predict_module, "_video_writer", lambda path, fps, size: Recorder(path))
    video = tmp_path / "noisy.mp4"
    video.write_bytes(b"stand-in")
    masks = {}
    for mode in ("none", "ema"):
        predict(segmenter, [video], tmp_path / mode, temporal=mode, temporal_strength=0.8, refine="none")
        masks[mode] = written["noisy_mask"]
        pipeline = MattePipeline(segmenter, MattePostprocessor(mode, 0.8, "none"))
        for k, frame in enumerate(frames):
            want = (pipeline(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)) > 0.5).astype(np.uint8) * 255
            np.testing.assert_array_equal(masks[mode][k], want, err_msg=f"{mode} frame {k}")
    assert (masks["none"][-1] != masks["ema"][-1]).any()
