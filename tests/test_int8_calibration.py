"""int8 calibration chosen by measurement and the parity gate: the range estimators against
NumPy, a model with a constructed outlier activation (one pixel of one calibration photo),
the gate's exit code and one-line refusal from the command's entry point, and bad input."""

import json

import numpy as np
import pytest
from int8_cases import two_layer_model, write_dataset

from sinet_tf.cli import main
from sinet_tf.export import ExportError, export_tflite
from sinet_tf.export.calibration import (
    BINS,
    CalibrationStatistics,
    estimate_ranges,
    parse_candidate_name,
    rank,
)


def _stats_from_samples(samples):
    """CalibrationStatistics of one tensor per list entry (each ``[N images, values]``)."""
    lo = np.array([min(s.min(), 0.0) for s in samples])
    hi = np.array([max(s.max(), 0.0) for s in samples])
    hist = np.stack([np.histogram(s.ravel(), bins=BINS, range=(a, b))[0] for s, a, b in zip(samples, lo, hi)])
    return CalibrationStatistics(list(range(len(samples))), [f"t{i}" for i in range(len(samples))], lo, hi,
                                 np.stack([s.min(axis=1) for s in samples], 1),
                                 np.stack([s.max(axis=1) for s in samples], 1), hist)


def _quantization_mse(x, a, b):
    """E[(dequantize(quantize(x)) - x)^2] with 255 steps over [a, b] (zero point rounded)."""
    s = (b - a) / 255.0
    z = np.round(-a / s)
    q = (np.clip(np.round(x / s) + z, 0, 255) - z) * s
    return float(np.mean((q - x) ** 2))


def test_range_estimators_against_numpy():
    rng = np.random.default_rng(0)
    relu = np.maximum(rng.normal(1.0, 1.0, (12, 4000)), 0.0)
    relu[3, 7] = 80.0                                   # one outlier value
    signed = rng.laplace(0.0, 1.0, (12, 4000))
    stats = _stats_from_samples([relu, signed])
    lo, hi = estimate_ranges(stats, "minmax")
    np.testing.assert_allclose(hi, [80.0, signed.max()])
    np.testing.assert_allclose(lo, [0.0, signed.min()])
    lo, hi = estimate_ranges(stats, "average")
    np.testing.assert_allclose(hi, [relu.max(axis=1).mean(), signed.max(axis=1).mean()])
    np.testing.assert_allclose(lo, [0.0, signed.min(axis=1).mean()])
    lo, hi = estimate_ranges(stats, "percentile")
    tail = 0.00005  # (100 - 99.99) / 2 percent: the quantile at histogram-bin resolution
    for j, s in enumerate([relu, signed]):
        width = (stats.hi[j] - stats.lo[j]) / BINS
        assert np.mean(s > hi[j] + 1e-9) <= tail < np.mean(s >= hi[j] - width - 1e-9)
        if j == 1:
            assert np.mean(s < lo[j] - 1e-9) <= tail < np.mean(s <= lo[j] + width + 1e-9)
    assert hi[0] < 10.0  # the outlier is clipped
    # MSE: no range on a fine brute-force grid has a clearly smaller quantization error
    lo, hi = estimate_ranges(stats, "mse")
    for j, s in enumerate([relu, signed]):
        chosen = _quantization_mse(s.ravel(), lo[j], hi[j])
        grid_b = np.linspace(0.05, 1.0, 60) * stats.hi[j]
        grid_a = np.linspace(0.05, 1.0, 60) * stats.lo[j] if stats.lo[j] < 0 else [0.0]
        best = min(_quantization_mse(s.ravel(), a, b) for a in grid_a for b in grid_b)
        assert chosen <= 1.1 * best, (j, chosen, best)
    assert hi[0] < 80.0


def test_rank_keeps_the_preferred_calibration_unless_another_is_significantly_better():
    from sinet_tf.export.calibration import Candidate

    rng = np.random.default_rng(0)
    truth = rng.uniform(0.5, 0.9, 40)

    def c(name, shift, noise=0.02, problems=(), distance=0.1):
        per_image = list(np.clip(truth + shift + rng.normal(0, noise, 40), 0, 1))
        return Candidate(name, b"", {"person_iou": float(np.mean(per_image)), "drop": float(-shift),
                                     "mask_distance": distance, "per_image_iou": per_image}, problems=list(problems))

    # all meet the gate; the small gains are within the noise: the preferred one stays first
    ranked = rank([c("mse", 0.001), c("minmax+equalize", 0.0), c("average", 0.0005)], max_drop=0.01)
    assert [x.name for x in ranked] == ["minmax+equalize", "average", "mse"]
    # the preferred one misses the gate: the next preferred that meets it
    ranked = rank([c("percentile", -0.002), c("minmax+equalize", -0.2), c("average", -0.005),
                   c("mse", 0.0, problems=["float island"])], max_drop=0.01)
    assert [x.name for x in ranked] == ["average", "percentile", "minmax+equalize", "mse"]
    # a candidate better by far more than the noise overrules the preference
    ranked = rank([c("minmax+equalize", -0.008, noise=0.002), c("percentile", 0.006, noise=0.002)], max_drop=0.01)
    assert ranked[0].name == "percentile"
    # ... but not from beyond max_drop: a gain that large means the masks moved away from the
    # float model, so every candidate within max_drop either way comes first, then the gains
    # by mask distance, then the misses
    ranked = rank([c("average+equalize", 0.03, noise=0.002, distance=0.12), c("minmax", -0.035),
                   c("mse", 0.02, noise=0.002, distance=0.08), c("percentile", -0.009, noise=0.002, distance=0.1)],
                  max_drop=0.01)
    assert [x.name for x in ranked] == ["percentile", "mse", "average+equalize", "minmax"]
    assert parse_candidate_name("mse+equalize") == ("mse", True)
    with pytest.raises(ExportError, match="unknown int8 calibration 'fast'; choose one of minmax"):
        parse_candidate_name("fast")


@pytest.fixture(scope="module")
def outlier(tmp_path_factory):
    """The outlier case: the hidden ReLU tensor holds the signal (values up to 2.4) and a
    channel that is 0 except on one pixel of one calibration photo (51,000)."""
    root = tmp_path_factory.mktemp("outlier")
    data = write_dataset(root / "data", 16, 16, person_level=150, background_level=100,
                         blue=lambda rng, shape: np.zeros(shape), spikes={("train", 5): 255})
    model = two_layer_model(200.0, relu_fused=False)
    path = root / "outlier.keras"
    model.save(path)
    return {"data": data, "model": model, "keras": path, "root": root}


def test_outlier_activation_is_clipped_by_the_chosen_calibration(outlier):
    from sinet_tf.evaluate import evaluate

    out = outlier["root"] / "auto.tflite"
    lines = []
    report = export_tflite(outlier["keras"], out, quantize="int8", calibration_data=outlier["data"],
                           num_calibration=16, num_parity=16, log=lines.append)
    info = json.loads(out.with_suffix(".json").read_text())["int8"]
    by_name = {c["name"]: c for c in info["candidates"]}
    assert set(by_name) == {f"{e}{q}" for e in ("minmax", "average", "percentile", "mse")
                            for q in ("", "+equalize")}
    # min/max spends the range on the outlier: every pixel becomes background
    assert by_name["minmax"]["drop"] > 0.5 and by_name["minmax+equalize"]["drop"] > 0.5
    assert info["gate"] == "passed" and by_name[info["chosen"]]["drop"] <= 0.01
    assert info["chosen"].startswith(("percentile", "average"))
    assert info["chosen"] in report.summary() and any(info["chosen"] in line for line in lines)
    # scored independently, as `sinet evaluate` scores: the float model and the chosen file
    keras_iou = evaluate(outlier["keras"], outlier["data"], split="val")["person_iou"]
    int8_iou = evaluate(out, outlier["data"], split="val")["person_iou"]
    assert keras_iou > 0.99 and abs(keras_iou - int8_iou) <= 0.01


def test_gate_refuses_with_its_own_exit_code_and_names_the_layer(outlier, tmp_path, capsys):
    out = tmp_path / "minmax.tflite"
    args = ["export", outlier["keras"], "-o", out, "--quantize", "int8", "--calibration-data", outlier["data"],
            "--num-calibration", "16", "--num-parity", "16", "--int8-ranges", "minmax", "--no-equalize"]
    capsys.readouterr()
    code = main([*map(str, args)])   # the exit code of the sinet command (sys.exit(main()))
    stderr = capsys.readouterr().err
    assert code == 7, stderr[-2000:]
    refusal = [line for line in stderr.splitlines() if line.startswith("sinet export: int8 refused")]
    assert len(refusal) == 1, stderr[-2000:]
    assert "loses 1.0000 person IoU" in refusal[0] and "--max-drop 0.01" in refusal[0]
    assert "features" in refusal[0].split("lose most:")[1] and "--allow-drop" in refusal[0]
    assert not out.exists() and not out.with_suffix(".json").exists()
    # --allow-drop writes it, and says so in the report
    assert main([*map(str, args), "--allow-drop"]) == 0
    info = json.loads(out.with_suffix(".json").read_text())["int8"]
    assert info["gate"].startswith("failed") and info["worst_layers"][0]["layer"].startswith("features")


def test_bad_input_gets_one_line_errors(outlier, tmp_path, capsys):
    common = ["export", str(outlier["keras"]), "-o", str(tmp_path / "x.tflite"), "--quantize", "int8",
              "--calibration-data", str(outlier["data"]), "--num-calibration", "16"]
    for value in ("1.5", "-0.1", "lots"):
        with pytest.raises(SystemExit) as e:
            main([*common, "--max-drop", value])
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert "argument --max-drop" in err and value in err
    with pytest.raises(ExportError, match=r"--max-drop 2: must be between 0 and 1"):
        export_tflite(outlier["model"], tmp_path / "x.tflite", quantize="int8", calibration_data=outlier["data"],
                      max_drop=2)
    assert main([*common, "--int8-ranges", "fastest"]) == 2
    assert "unknown int8 calibration 'fastest'; choose one of minmax" in capsys.readouterr().err
    # quantization-aware fine-tuning without data: the model comes from no run folder
    assert main([*common, "--qat-epochs", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["sinet export: error: --qat-epochs needs training data: give --data SRC (a dataset folder/list "
                   "file, or synthetic[:N])"]
    assert main([*common, "--data", str(outlier["data"])]) == 2
    assert "add --qat-epochs N" in capsys.readouterr().err
    assert not (tmp_path / "x.tflite").exists()
