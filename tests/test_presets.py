"""Presets: the bundled official weights by name, preset folders made from runs and .keras
files, clear errors for broken ones, and the wheel a user installs segmenting a photo."""

import csv
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import cv2
import keras
import numpy as np
import pytest
from conftest import HUMANSEG, OFFICIAL, REPO

import sinet_tf
from sinet_tf.cli import main
from sinet_tf.loading import from_preset, load_model, save_preset
from sinet_tf.presets import BUNDLED_DIR, PresetError, UnknownPresetError, find_preset

TOL = 1e-4
BUNDLED = {"sinet_official": ("sinet", "sinet"), "extremec3net_official": ("extremec3net", "extremec3")}


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def bundled_models():
    return {name: from_preset(name) for name in BUNDLED}


def _copy_bundled(tmp_path, name="sinet_official"):
    folder = tmp_path / name
    shutil.copytree(BUNDLED_DIR / name, folder)
    return folder


# --- the bundled presets ---------------------------------------------------------------------

def test_list_presets_without_tensorflow():
    code = ("import sys, sinet_tf\n"
            "print(sinet_tf.list_presets(), sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "['extremec3net_official', 'sinet_official'] []"


@pytest.mark.parametrize("name", sorted(BUNDLED))
def test_bundled_preset_carries_the_upstream_licence_and_its_measured_iou(name):
    preset = find_preset(name)
    assert preset.bundled and preset.architecture == BUNDLED[name][0]
    assert preset.input_size == (224, 224) and preset.config["normalization"] == "official_sinet"
    assert preset.config["license"] == "MIT" and "NAVER" in preset.config["source"]
    # the licence text beside the weights is the one published with the checkpoints
    assert (preset.path / preset.config["license_file"]).read_text() == (OFFICIAL / "LICENSE.upstream").read_text()
    # the IoU in the config is the one `sinet evaluate` measured (benchmarks/make_presets.sh)
    measured = json.loads((REPO / "benchmarks" / "results" / f"presets_humanseg290_val_{name}.json").read_text())
    m = preset.metrics
    assert (m["data"], m["split"], m["n_images"]) == ("humanseg290", "val", measured["n_images"])
    assert m["person_iou"] == round(measured["person_iou"], 4)
    # only weights files, config and licence: nothing that needs a pickle to read
    assert sorted(p.name for p in preset.path.iterdir()) == ["LICENSE", "config.json", "weights.npz"]


@pytest.mark.parametrize("name", sorted(BUNDLED))
def test_bundled_logits_equal_the_official_outputs(bundled_models, official_outputs, name):
    """As tests/test_official_parity.py does: the photo as RGB pixels through the model's own
    normalization, and the official normalized inputs (photo and noise) fed after it."""
    key = BUNDLED[name][1]
    model = bundled_models[name]
    rgb = official_outputs["image_bgr_uint8_224"][..., ::-1].astype(np.float32)
    out = np.asarray(model(rgb, training=False))
    assert np.abs(out - official_outputs[f"{key}_real_output"]).max() <= TOL
    after_normalization = keras.Model(model.get_layer("normalize").output, model.get_layer("logits").output)
    for kind in ("real", "random"):
        out = np.asarray(after_normalization(official_outputs[f"{key}_{kind}_input"], training=False))
        diff = np.abs(out - official_outputs[f"{key}_{kind}_output"]).max()
        assert diff <= TOL, f"{name} {kind}: max |keras - official| = {diff}"


def test_a_preset_is_a_model_source_everywhere(bundled_models, official_outputs, sinet_checkpoint):
    rgb = official_outputs["image_bgr_uint8_224"][..., ::-1].astype(np.float32)
    expected = np.asarray(bundled_models["sinet_official"](rgb))
    # load_model (what predict, export, evaluate use) takes the name and the folder
    for source in ("sinet_official", BUNDLED_DIR / "sinet_official"):
        np.testing.assert_array_equal(np.asarray(load_model(source)(rgb)), expected)
    # at another input size the same weights are built again at that size
    bigger = from_preset("sinet_official", input_size=(256, 320))
    assert tuple(bigger.inputs[0].shape[1:3]) == (256, 320)
    np.testing.assert_array_equal(bigger.get_layer("encoder.level1.conv").get_weights()[0],
                                  bundled_models["sinet_official"].get_layer("encoder.level1.conv").get_weights()[0])
    with pytest.raises(ValueError, match="carries its own weights"):
        load_model("sinet_official", weights=sinet_checkpoint)


def test_cli_predict_export_evaluate_and_models_take_a_preset(capsys, tmp_path, bundled_models, humanseg):
    photo = humanseg / "images" / "6.jpg"
    code, _, err = _run(capsys, "predict", "extremec3net_official", photo, "-o", tmp_path / "pred")
    assert code == 0, err
    mask = cv2.imread(str(tmp_path / "pred" / "6_mask.png"), cv2.IMREAD_GRAYSCALE)
    assert mask.shape == cv2.imread(str(photo)).shape[:2] and set(np.unique(mask)) <= {0, 255}

    code, out, err = _run(capsys, "export", "extremec3net_official", "-o", tmp_path / "e.tflite")
    assert code == 0, err
    from sinet_tf.runtime import TFLiteRunner

    x = np.random.default_rng(0).uniform(0, 255, (1, 224, 224, 3)).astype(np.float32)
    ref = np.asarray(bundled_models["extremec3net_official"](x))
    assert np.abs(TFLiteRunner(tmp_path / "e.tflite")(x) - ref).max() <= TOL

    code, out, err = _run(capsys, "evaluate", "extremec3net_official", "--data", "synthetic:2", "--json")
    assert code == 0, err
    assert json.loads(out)["model"] == "extremec3net_official"

    code, out, _ = _run(capsys, "models", "--presets", "--json")
    rows = {r["name"]: r for r in json.loads(out)}
    assert code == 0 and sorted(rows) == sorted(BUNDLED)
    for name, row in rows.items():
        config = json.loads((BUNDLED_DIR / name / "config.json").read_text())
        assert row["architecture"] == config["architecture"] and row["input_size"] == config["input_size"]
        assert row["license"] == "MIT" and row["normalization"] == "official_sinet"
        assert row["val_person_iou"] == config["metrics"]["person_iou"] and row["val_split"] == "val"
    code, out, _ = _run(capsys, "models", "--presets")
    assert code == 0 and "sinet_official" in out and "MIT" in out and "humanseg290" in out


# --- errors ----------------------------------------------------------------------------------

def test_unknown_names_suggest_close_ones(capsys, humanseg):
    with pytest.raises(UnknownPresetError, match=r"did you mean 'sinet_official'"):
        from_preset("sinet_offical")
    with pytest.raises(UnknownPresetError, match=r"'sinet' is an architecture without weights"):
        from_preset("sinet")
    code, _, err = _run(capsys, "predict", "extremec3_official", humanseg / "images" / "6.jpg", "-o", "unused")
    assert code == 2 and "did you mean 'extremec3net_official'" in err and len(err.strip().splitlines()) == 1
    code, _, err = _run(capsys, "models", "--presets", "sinet_oficial")
    assert code == 2 and "did you mean 'sinet_official'" in err
    with pytest.raises(FileNotFoundError, match="preset folder not found"):
        from_preset("./no/such/preset")


def _expect_error(capsys, folder, pattern, tmp_path):
    with pytest.raises(PresetError, match=pattern):
        from_preset(folder)
    code, _, err = _run(capsys, "predict", folder, HUMANSEG / "images" / "6.jpg", "-o", tmp_path / "never")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "never").exists()


def test_corrupt_preset_folders_get_one_line_errors(capsys, tmp_path):
    folder = _copy_bundled(tmp_path)
    config = json.loads((folder / "config.json").read_text())

    (folder / "config.json").write_text("{ not json")
    _expect_error(capsys, folder, r"config\.json: not valid JSON", tmp_path)
    (folder / "config.json").write_text(json.dumps({**config, "architecture": "sinett"}))
    _expect_error(capsys, folder, r"architecture: unknown model 'sinett'; did you mean 'sinet'", tmp_path)
    (folder / "config.json").write_text(json.dumps({k: v for k, v in config.items() if k != "input_size"}))
    _expect_error(capsys, folder, r"'input_size' is missing", tmp_path)
    (folder / "config.json").write_text(json.dumps({**config, "format": "something else"}))
    _expect_error(capsys, folder, "not a preset config", tmp_path)
    (folder / "config.json").write_text(json.dumps(config))

    weights = dict(np.load(folder / "weights.npz"))
    (folder / "weights.npz").write_bytes(b"PK\x03\x04 truncated")
    _expect_error(capsys, folder, r"weights\.npz: not a readable \.npz", tmp_path)
    (folder / "weights.npz").unlink()
    _expect_error(capsys, folder, r"weights\.npz: the weights file named in .* is missing", tmp_path)

    first = sorted(weights)[0]
    np.savez(folder / "weights.npz", **{k: v for k, v in weights.items() if k != first})
    _expect_error(capsys, folder, f"no array for weight '{first}'", tmp_path)
    np.savez(folder / "weights.npz", **{**weights, first: weights[first][..., :1]})
    _expect_error(capsys, folder, f"weight '{first}' has shape", tmp_path)
    np.savez(folder / "weights.npz", **weights, extra=np.zeros(3, np.float32))
    _expect_error(capsys, folder, "1 arrays are not weights of 'sinet', first 'extra'", tmp_path)
    np.savez(folder / "weights.npz", **{**weights, first: np.array([{"a": 1}], dtype=object)})
    _expect_error(capsys, folder, r"weights\.npz: not a readable \.npz", tmp_path)  # would need a pickle

    (folder / "config.json").unlink()
    _expect_error(capsys, folder, "not a preset folder, it has no config.json", tmp_path)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_weights_are_refused(capsys, tmp_path, bad):
    folder = _copy_bundled(tmp_path, "extremec3net_official")
    weights = dict(np.load(folder / "weights.npz"))
    key = sorted(weights)[5]
    weights[key] = weights[key].copy()
    weights[key].flat[0] = bad
    np.savez_compressed(folder / "weights.npz", **weights)
    _expect_error(capsys, folder, rf"weight '{key}' holds 1 non-finite value \(NaN or infinity\)", tmp_path)


def test_non_finite_keras_model_cannot_become_a_preset(tmp_path):
    model = sinet_tf.build_model("extremec3net", input_shape=(32, 32, 3))
    kernel = model.get_layer("encoder.level1.conv").kernel
    kernel.assign(np.full(kernel.shape, np.nan, np.float32))
    model.save(tmp_path / "nan.keras")
    with pytest.raises(PresetError, match=r"nan\.keras: weight 'encoder\.level1\.conv/kernel' holds 648 non-finite"):
        save_preset(tmp_path / "nan.keras", tmp_path / "preset")
    assert not (tmp_path / "preset").exists()


# --- user presets ----------------------------------------------------------------------------

@pytest.mark.filterwarnings("ignore")
def test_preset_save_of_a_training_run_round_trips(capsys, tmp_path):
    from sinet_tf.train import load_recipe, train
    from sinet_tf.train.config import RECIPE_DIR

    config = load_recipe(RECIPE_DIR / "default.yaml", overrides={
        "data": "synthetic:8", "model": "sinet", "model_kwargs": {"p": 1, "q": 2}, "input_size": [64, 64],
        "batch_size": 4, "epochs": 1, "lr_milestones": [], "run_eagerly": True})
    train(config, tmp_path / "run", verbose=0, log=lambda *a: None)
    stage_dir = tmp_path / "run" / config.stages[-1].name

    code, out, err = _run(capsys, "preset", "save", tmp_path / "run", tmp_path / "mine", "--license", "CC0-1.0")
    assert code == 0, err
    preset = find_preset(tmp_path / "mine")
    assert preset.config["weights"] == "weights.npz"  # the registry builds the network again
    assert preset.architecture == "sinet" and preset.build_kwargs == {"p": 1, "q": 2}
    assert preset.input_size == (64, 64) and preset.config["license"] == "CC0-1.0"
    with open(stage_dir / "history.csv", newline="") as f:
        history = list(csv.DictReader(f))
    best = max(history, key=lambda r: float(r["val_person_iou"]))
    assert preset.metrics["person_iou"] == round(float(best["val_person_iou"]), 4)
    assert preset.metrics["epoch"] == int(best["epoch"]) and preset.metrics["data"] == "synthetic:8"
    assert (tmp_path / "mine" / "history.csv").read_text() == (stage_dir / "history.csv").read_text()

    # the preset is the run's best network
    x = np.random.default_rng(1).uniform(0, 255, (2, 64, 64, 3)).astype(np.float32)
    reference = keras.models.load_model(stage_dir / "best.keras", compile=False)
    np.testing.assert_array_equal(np.asarray(from_preset(tmp_path / "mine")(x)), np.asarray(reference(x)))

    code, out, _ = _run(capsys, "models", "--presets", tmp_path / "mine", "--json")
    row = json.loads(out)[0]
    assert code == 0 and row["name"] == "mine" and row["val_person_iou"] == preset.metrics["person_iou"]
    code, out, err = _run(capsys, "evaluate", tmp_path / "mine", "--data", "synthetic:2", "--split", "none", "--json")
    assert code == 0 and json.loads(out)["n_images"] == 2, err

    # saving again replaces the preset; a folder that is not a preset is never overwritten
    code, _, err = _run(capsys, "preset", "save", tmp_path / "run", tmp_path / "mine", "--name", "again")
    assert code == 0 and find_preset(tmp_path / "mine").name == "again"
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep me")
    code, _, err = _run(capsys, "preset", "save", tmp_path / "run", tmp_path / "notes")
    assert code == 2 and "is not a preset folder" in err
    assert (tmp_path / "notes" / "todo.txt").read_text() == "keep me"
    code, _, err = _run(capsys, "preset", "save", tmp_path / "notes", tmp_path / "x")
    assert code == 2 and "not a training run folder (no state.json)" in err


def test_preset_save_of_keras_files(capsys, tmp_path):
    rng = np.random.default_rng(2)
    x = rng.uniform(0, 255, (1, 64, 64, 3)).astype(np.float32)

    # a registry network: stored as weights, built again by the registry
    model = sinet_tf.build_model("extremec3net", input_shape=(64, 64, 3))
    model.set_weights([rng.normal(0, 0.1, w.shape).astype(np.float32) for w in model.get_weights()])
    model.save(tmp_path / "e.keras")
    code, _, err = _run(capsys, "preset", "save", tmp_path / "e.keras", tmp_path / "e",
                        "--license-file", OFFICIAL / "LICENSE.upstream")
    assert code == 0, err
    preset = find_preset(tmp_path / "e")
    assert preset.config["weights"] == "weights.npz" and preset.config["license_file"] == "LICENSE"
    np.testing.assert_array_equal(np.asarray(from_preset(tmp_path / "e")(x)), np.asarray(model(x)))

    # a network the registry cannot build again: stored as the .keras model itself
    inputs = keras.Input((64, 64, 3))
    outputs = keras.layers.Conv2D(2, 3, padding="same", name="head")(keras.layers.Rescaling(1 / 255)(inputs))
    custom = keras.Model(inputs, outputs, name="custom")
    custom.save(tmp_path / "custom.keras")
    code, _, err = _run(capsys, "preset", "save", tmp_path / "custom.keras", tmp_path / "c")
    assert code == 0, err
    preset = find_preset(tmp_path / "c")
    assert preset.config["weights"] == "model.keras" and preset.config["normalization"] is None
    np.testing.assert_array_equal(np.asarray(from_preset(tmp_path / "c")(x)), np.asarray(custom(x)))
    # a non-finite weight in a stored .keras model is refused at load time too
    custom.get_layer("head").kernel.assign(np.full((3, 3, 3, 2), np.inf, np.float32))
    custom.save(tmp_path / "c" / "model.keras")
    with pytest.raises(PresetError, match=r"model\.keras: weight 'head/kernel' holds 54 non-finite"):
        from_preset(tmp_path / "c")


# --- the wheel, the way a user meets it --------------------------------------------------------

def _dependency_view(tmp_path: Path) -> Path:
    """A folder of links to everything installed in this test environment except sinet-tf
    itself (no editable finder, no metadata, no .pth files): the installed wheel's
    dependencies, without downloading them again and without the checkout."""
    import sysconfig

    site = Path(sysconfig.get_paths()["purelib"])
    view = tmp_path / "deps"
    view.mkdir()
    for entry in site.iterdir():
        low = entry.name.lower()
        if low.startswith(("sinet_tf", "sinet-tf", "__editable__")) or low.endswith(".pth") or low == "__pycache__":
            continue
        (view / entry.name).symlink_to(entry)
    return view


def test_wheel_in_a_fresh_venv_segments_a_photo_with_the_bundled_preset(tmp_path, bundled_models, humanseg):
    """`pip install` of the wheel into a new virtual environment outside the checkout, then
    `sinet predict sinet_official photo.jpg -o out` there (about 40 s on 2 cores)."""
    t0 = time.perf_counter()
    # build from a copy of the sources, so no build/ folder of the checkout can add stale files
    src = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(REPO / "sinet_tf", src / "sinet_tf", ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"

    def sh(*cmd, cwd=tmp_path):
        r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, cwd=cwd, env=env, timeout=600)
        assert r.returncode == 0, f"{cmd}: {r.stderr[-3000:]}"
        return r.stdout

    sh(sys.executable, "-m", "pip", "wheel", src, "--no-deps", "-q", "-w", tmp_path / "dist")
    wheel, = (tmp_path / "dist").glob("sinet_tf-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for preset in BUNDLED:
        for f in ("config.json", "weights.npz", "LICENSE"):
            assert f"sinet_tf/assets/presets/{preset}/{f}" in names
        assert any(n.endswith(f"licenses/sinet_tf/assets/presets/{preset}/LICENSE") for n in names)

    venv = tmp_path / "venv"
    sh(sys.executable, "-m", "venv", venv)
    python = venv / "bin" / "python"
    site = Path(sh(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").strip())
    (site / "test_dependencies.pth").write_text(f"{_dependency_view(tmp_path)}\n")
    sh(python, "-m", "pip", "install", "-q", wheel)

    # sinet_tf comes from the wheel, and the checkout is nowhere on the path
    where = json.loads(sh(python, "-c", "import json, sys, sinet_tf; print(json.dumps([sinet_tf.__file__, sys.path]))"))
    assert Path(where[0]).resolve().is_relative_to(venv.resolve())
    assert not any(p and Path(p).resolve() == REPO.resolve() for p in where[1])

    photo = humanseg / "images" / "6.jpg"
    sh(venv / "bin" / "sinet", "predict", "sinet_official", photo, "-o", "out")
    mask = cv2.imread(str(tmp_path / "out" / "6_mask.png"), cv2.IMREAD_GRAYSCALE)
    print(f"wheel {wheel.stat().st_size / 1e3:.0f} kB; build, venv, install and predict in "
          f"{time.perf_counter() - t0:.1f} s")

    # the same model and predict's default post-processing (guided edge refinement) run here:
    # same mask; and it is a person, by the photo's ground truth
    from sinet_tf.files import read_rgb
    from sinet_tf.inference import Segmenter
    from sinet_tf.postprocess.pipeline import MattePipeline, MattePostprocessor

    pipeline = MattePipeline(Segmenter("sinet_official", keep_aspect=True), MattePostprocessor(refine="guided"))
    here = (pipeline(read_rgb(photo)) > 0.5).astype(np.uint8) * 255
    assert mask.shape == here.shape and np.mean(mask == here) > 0.999
    truth = cv2.imread(str(humanseg / "masks" / "6.png"), cv2.IMREAD_GRAYSCALE) > 0
    person = mask > 0
    assert 0.05 < person.mean() < 0.95
    assert (person & truth).sum() / (person | truth).sum() > 0.6
