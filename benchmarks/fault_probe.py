"""Fault injection against the installed ``sinet`` command: bad inputs and faults, each in a
fresh process, each outcome sorted into one of

* ``clear``: a non-zero exit (or, where a warning is the answer, a warning) with a message
  that names the file, key or value and nothing misleading;
* ``poor``: refused, but the message is wrong, misleading, vague or dumps pages;
* ``traceback``: a Python traceback reached the user;
* ``silent``: exit 0 with a wrong result (or a check that found one);
* ``lost``: earlier outputs damaged, or computed results thrown away;
* ``hang``: no answer within the time limit.

    python benchmarks/fault_probe.py [--out benchmarks/results] [--sinet "python -m sinet_tf.cli"]
                                     [--only NAME,...] [--keep]

Runs in a temporary folder; needs the shared data (``../shared`` or ``$SINET_SHARED``: the
official SINet checkpoint and humanseg290). A read-only folder and a full disk are small
tmpfs mounts when the probe may mount (root in a container that allows it), else a chmod
0555 folder and a file-size limit (RLIMIT_FSIZE). Writes ``fault_probe.json`` and
``fault_probe.md`` into ``--out``. 20 to 50 minutes on a shared 2-core CPU.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import resource
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SINET_SHARED", REPO.parent / "shared"))
CHECKPOINT = SHARED / "reference/official/sinet_official_state_dict.npz"
EC3_CHECKPOINT = SHARED / "reference/official/extremec3_official_state_dict.npz"
HUMANSEG = SHARED / "datasets/humanseg290"
CATEGORIES = ("clear", "poor", "traceback", "silent", "lost", "hang")
# texts that send a user the wrong way
MISLEADING = [r"--skip-bad", r"allow_pickle", r"File not found", r"\(None,", r"Could not locate class"]
# TensorFlow's and absl's own log lines, not the command's
NOISE = re.compile(r"^([IWEF]\d{4} |WARNING: All log messages|To enable the following instructions|"
                   r".*rebuild TensorFlow|.*oneDNN custom operations|.*cuda|.*TF-TRT|\s*$|.*UserWarning|"
                   r"\s+warnings\.warn)")
TIMEOUT = 600


@dataclass
class Case:
    name: str
    argv: list[str]
    expect: str = "error"            # error | warn | ok
    mentions: tuple[str, ...] = ()   # texts a clear message names (file, key, value)
    warning: str = ""                # expect="warn": a text a warning must hold
    check: Callable | None = None    # (code, out, err) -> None, a note (silent on exit 0, else poor) or (category, note)
    lost: Callable | None = None     # () -> None or a note: data lost when a note
    env: dict = field(default_factory=dict)
    fault: str = ""                  # "", readonly, diskfull
    run: Callable | None = None      # a custom runner: (probe, case) -> (code, out, err)


class Probe:
    def __init__(self, sinet: list[str], work: Path):
        self.sinet, self.work = sinet, work
        self.mounts: list[Path] = []
        self.can_mount = os.geteuid() == 0 and self._try_mount()

    # ------------------------------------------------------------------ running

    def call(self, argv, env=None, preexec=None, timeout=TIMEOUT, wait=True):
        e = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})}
        e.pop("SINET_DEBUG", None)
        proc = subprocess.Popen([*self.sinet, *argv], cwd=self.work, env=e, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, preexec_fn=preexec)
        if not wait:
            return proc
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            return None, out, err
        return proc.returncode, out, err

    # ------------------------------------------------------------------ faults

    def _try_mount(self) -> bool:
        test = self.work / ".mount_test"
        test.mkdir()
        ok = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(test)],
                            capture_output=True).returncode == 0
        if ok:
            subprocess.run(["umount", str(test)], capture_output=True)
        test.rmdir()
        return ok

    def readonly_folder(self, name: str, files: dict[str, bytes]) -> Path:
        """A folder that cannot be written, holding ``files``."""
        d = self.work / name
        d.mkdir()
        if self.can_mount:
            subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(d)], check=True)
            self.mounts.append(d)
            for k, v in files.items():
                (d / k).write_bytes(v)
            subprocess.run(["mount", "-o", "remount,ro", str(d)], check=True)
        else:
            for k, v in files.items():
                (d / k).write_bytes(v)
            d.chmod(0o555)
        return d

    def full_disk(self, name: str, files: dict[str, bytes]) -> tuple[Path, Callable | None]:
        """A folder on a full disk (tmpfs of 256 KiB, filled up), or a file-size limit."""
        d = self.work / name
        d.mkdir()
        if self.can_mount:
            subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(d)], check=True)
            self.mounts.append(d)
            for k, v in files.items():
                (d / k).write_bytes(v)
            with open(d / ".filler", "wb") as f:   # leave a few KiB
                try:
                    f.write(b"\0" * (256 * 1024 - sum(len(v) for v in files.values()) - 8192))
                except OSError:
                    pass
            return d, None
        for k, v in files.items():
            (d / k).write_bytes(v)

        def limit():   # writes past 64 KiB fail with EFBIG instead of killing the process
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))

        return d, limit

    def cleanup(self):
        for d in reversed(self.mounts):
            subprocess.run(["umount", str(d)], capture_output=True)
        for d in self.work.rglob("*"):
            if d.is_dir():
                d.chmod(0o755)


# ---------------------------------------------------------------------- classification


def _message_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if not NOISE.match(line)]


def classify(case: Case, code, out: str, err: str) -> tuple[str, str]:
    if code is None:
        return "hang", f"no answer within {TIMEOUT} s"
    if "Traceback (most recent call last)" in out + err:
        last = [line for line in err.splitlines() if line.strip()][-1:] or [""]
        return "traceback", last[0][:200]
    if case.lost is not None:
        note = case.lost()
        if note:
            return "lost", note
    if case.check is not None:
        note = case.check(code, out, err)
        if isinstance(note, tuple):   # (category, note): a wrong result whatever the exit code
            return note
        if note:
            return ("silent" if code == 0 else "poor"), note
    lines = _message_lines(err)
    text = "\n".join(lines)
    if case.expect == "ok":
        return ("clear", "ok") if code == 0 else ("poor", f"exit {code}: {text[-200:]}")
    if code == 0:
        if case.expect == "warn" and case.warning and case.warning.lower() in (out + err).lower():
            return "clear", "warned"
        return "silent", "exit 0"
    bad = [m for m in MISLEADING if re.search(m, text)]
    if bad:
        return "poor", f"misleading: {bad[0]}"
    missing = [m for m in case.mentions if m.lower() not in (text + "\n" + out).lower()]
    if missing:
        return "poor", f"does not name {missing[0]!r}"
    error_at = next((i for i, line in enumerate(lines) if ": error: " in line or line.startswith("error:")), None)
    if error_at is None:
        if code == 1 and out.strip():   # a report of the problems found (sinet data check) on stdout
            return "clear", "report: " + next((ln.strip() for ln in out.splitlines() if "[" in ln), "")[:200]
        return "poor", "no error line"
    if len(lines) - error_at > 8:
        return "poor", f"{len(lines) - error_at} lines of message"
    return "clear", lines[error_at][:200]


# ---------------------------------------------------------------------- fixtures


def tiny_keras(path: Path):
    import keras

    keras.utils.set_random_seed(0)
    inp = keras.Input((64, 64, 3))   # synthetic portraits (calibration) are at least 64x64
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", bias_initializer="random_uniform")(inp)
    keras.Model(inp, keras.layers.Conv2D(2, 1, bias_initializer="random_uniform")(x), name="tiny").save(path)


def corrupt_jpeg(good: bytes) -> bytes:
    data = bytearray(good)
    mid = len(data) // 2
    data[mid:mid + 2000] = bytes(2000)   # libjpeg: "Corrupt JPEG data: premature end of data segment"
    return bytes(data)


def write_dataset(root: Path, stems=("1", "2", "3", "4"), masks01=False):
    import cv2
    import numpy as np

    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for s in stems:
        shutil.copy(HUMANSEG / "images" / f"{s}.jpg", root / "images" / f"{s}.jpg")
        m = cv2.imread(str(HUMANSEG / "masks" / f"{s}.png"), cv2.IMREAD_GRAYSCALE)
        if masks01:
            m = (m > 127).astype(np.uint8)
            m[0, :] = 255          # a row of ignore: these masks use 1 = person, 255 = ignore
        cv2.imwrite(str(root / "masks" / f"{s}.png"), m)


TINY_RECIPE = """\
data: synthetic:10
model: sinet_encoder
model_kwargs: {p: 1, q: 2}
input_size: [64, 64]
batch_size: 4
epochs: 3
lr_milestones: [2]
run_eagerly: true
"""


def history(run: Path) -> list[dict]:
    with open(run / "train" / "history.csv", newline="") as f:
        return [{k: float(v) for k, v in r.items() if k != "seconds"} for r in csv.DictReader(f)]


def same_history(a, b) -> str | None:
    if [r["epoch"] for r in a] != [r["epoch"] for r in b]:
        return f"epochs {[int(r['epoch']) for r in b]} instead of {[int(r['epoch']) for r in a]}"
    for x, y in zip(a, b):
        for k in ("loss", "val_loss", "learning_rate", "person_iou"):
            if abs(x[k] - y[k]) > 1e-6 * max(1.0, abs(x[k])):
                return f"epoch {int(x['epoch'])} {k} {y[k]:.6g} instead of {x[k]:.6g}"
    return None


# ---------------------------------------------------------------------- the cases


def build_cases(p: Probe) -> list[Case]:
    import numpy as np

    w = p.work
    ckpt, ec3 = str(CHECKPOINT), str(EC3_CHECKPOINT)
    photo1 = w / "photo1.jpg"
    shutil.copy(HUMANSEG / "images" / "1.jpg", photo1)
    (w / "notes.jpg").write_text("this is text, not a photo")
    (w / "truncated.jpg").write_bytes(photo1.read_bytes()[:1500])
    (w / "corrupt.jpg").write_bytes(corrupt_jpeg((HUMANSEG / "images" / "2.jpg").read_bytes()))
    (w / "notes.npz").write_text("weights = 1.0\n")
    (w / "empty.npz").write_bytes(b"")
    (w / "weights.bin").write_bytes(b"\0" * 64)
    (w / "notes.keras").write_text("this is text, not a model")
    (w / "notes.tflite").write_text("this is text, not a model")
    (w / "notes.mp4").write_text("this is text, not a video")
    (w / "a_file.txt").write_text("x")
    (w / "a_folder.keras").mkdir()
    (w / "a_folder.tflite").mkdir()
    (w / "a_folder.png").mkdir()
    with np.load(CHECKPOINT) as d:
        arrays = {k: d[k] for k in d.files}
    key = sorted(arrays)[5]
    arrays[key] = np.full_like(arrays[key], np.nan)
    np.savez(w / "nan.npz", **arrays)
    # photo folders
    mixed = w / "mixed"
    mixed.mkdir()
    for i in (1, 2, 3):
        shutil.copy(HUMANSEG / "images" / f"{i}.jpg", mixed / f"good{i}.jpg")
    shutil.copy(w / "notes.jpg", mixed / "bad1.jpg")
    shutil.copy(w / "truncated.jpg", mixed / "bad2.jpg")
    shutil.copy(w / "corrupt.jpg", mixed / "bad3.jpg")
    (w / "empty_folder").mkdir()
    (w / "twin").mkdir()
    shutil.copy(photo1, w / "twin" / "photo1.png")
    # datasets
    write_dataset(w / "data")
    write_dataset(w / "data_corrupt")
    (w / "data_corrupt" / "images" / "2.jpg").write_bytes(corrupt_jpeg((HUMANSEG / "images" / "2.jpg").read_bytes()))
    write_dataset(w / "data_ignore", masks01=True)
    import cv2

    cv2.imwrite(str(w / "data_ignore" / "masks" / "3.png"), np.full(cv2.imread(
        str(w / "data_ignore" / "masks" / "3.png")).shape[:2], 255, np.uint8))
    write_dataset(w / "data_badjpg")
    (w / "data_badjpg" / "images" / "1.jpg").write_text("not a photo")
    write_dataset(w / "data_hash", stems=("1", "2"))
    for sub, ext in (("images", "jpg"), ("masks", "png")):
        os.rename(w / "data_hash" / sub / f"1.{ext}", w / "data_hash" / sub / f"p#1.{ext}")
    (w / "data_hash" / "pairs.txt").write_text("images/p#1.jpg masks/p#1.png\nimages/2.jpg masks/2.png\n")
    write_dataset(w / "data_list", stems=("1", "2"))
    (w / "data_list" / "pairs.txt").write_text("images/1.jpg masks/1.png\nimages/2.jpg masks/missing.png\n")
    (w / "empty_data" / "images").mkdir(parents=True)
    (w / "empty_data" / "masks").mkdir()
    # recipes
    (w / "tiny.yaml").write_text(TINY_RECIPE)
    for name, line in {"lr_text": "learning_rate: fast", "lr_negative": "learning_rate: -0.1",
                       "batch_float": "batch_size: 2.7", "size_int": "input_size: 224", "epochs_text": "epochs: ten",
                       "unknown_key": "learnig_rate: 0.1", "lr_nan": "learning_rate: 1.0e+30"}.items():
        text = TINY_RECIPE if name != "size_int" else TINY_RECIPE.replace("input_size: [64, 64]\n", "")
        if name in ("lr_text", "lr_negative", "lr_nan"):
            text = text + line + "\n"
        elif name == "batch_float":
            text = text.replace("batch_size: 4", line)
        elif name == "epochs_text":
            text = text.replace("epochs: 3", line)
        else:
            text = text + line + "\n"
        (w / f"{name}.yaml").write_text(text)
    (w / "bad_yaml.yaml").write_text("model: [sinet\n")

    def unchanged(path: Path, content: bytes):
        return lambda: None if path.read_bytes() == content else f"{path.name} was changed"

    def outputs(folder: Path, names: list[str]):
        def check(code, out, err):
            got = sorted(q.name for q in folder.glob("*_mask.png")) if folder.is_dir() else []
            if got != sorted(names):
                return f"masks written: {got or 'none'} (expected {names})"
            if code == 0:
                return "exit 0 although inputs failed"
        return check

    ro_keras = p.readonly_folder("ro_keras", {"previous.keras": b"previous"})
    ro_predict = p.readonly_folder("ro_predict", {})
    ro_gallery = p.readonly_folder("ro_gallery", {})
    ro_export = p.readonly_folder("ro_export", {"m.tflite": b"previous", "m.json": b"{}"})
    ro_train = p.readonly_folder("ro_train", {})
    full_keras, limit_keras = p.full_disk("full_keras", {"previous.keras": b"previous"})
    full_export, limit_export = p.full_disk("full_export", {"m.tflite": b"previous", "m.json": b"{}"})

    def with_limit(limit):
        def runner(probe, case):
            return probe.call(case.argv, env=case.env, preexec=limit)
        return runner if limit else None

    def gallery_check(code, out, err):
        if code != 0 and "person IoU" not in out:
            return "the computed metrics were not printed"

    def split_none(code, out, err):
        if "(None" in out:
            return "prints '(None, ...)' for the whole folder"

    def nan_model(path):
        def check(code, out, err):
            f = p.work / path
            if not f.exists():
                return None if code != 0 else "exit 0 and no model"
            r = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
                import numpy as np, sys
                from sinet_tf.loading import load_keras_model
                m = load_keras_model({str(f)!r})
                sys.exit(0 if all(np.isfinite(x).all() for x in m.get_weights()) else 3)""")],
                capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
            return ("silent", "best.keras holds NaN weights") if r.returncode == 3 else (
                None if code != 0 else "exit 0 after a diverged run")
        return check

    def hash_list(code, out, err):
        if code != 0 or '"num_readable": 2' not in out:
            return "a '#' inside a file name was read as a comment"

    cases = [
        # ---- import-weights
        Case("import: missing checkpoint", ["import-weights", "sinet", "nope.npz", "-o", "m.keras"], mentions=("nope.npz",)),
        Case("import: text .npz", ["import-weights", "sinet", "notes.npz", "-o", "m.keras"], mentions=("notes.npz", "text")),
        Case("import: empty .npz", ["import-weights", "sinet", "empty.npz", "-o", "m.keras"], mentions=("empty.npz",)),
        Case("import: checkpoint of another architecture", ["import-weights", "sinet", ec3, "-o", "m.keras"],
             mentions=("encoder.level1.conv.weight",)),
        Case("import: NaN tensors", ["import-weights", "sinet", "nan.npz", "-o", "nan.keras"], mentions=(key,)),
        Case("import: unknown architecture", ["import-weights", "unet", ckpt, "-o", "m.keras"], mentions=("unet",)),
        Case("import: unknown suffix", ["import-weights", "sinet", "weights.bin", "-o", "m.keras"], mentions=("weights.bin",)),
        Case("import: -o is a folder", ["import-weights", "sinet", ckpt, "-o", "a_folder.keras"], mentions=("a_folder.keras",)),
        Case("import: -o not .keras", ["import-weights", "sinet", ckpt, "-o", "m.h5"], mentions=(".keras",)),
        Case("import: -o below a file", ["import-weights", "sinet", ckpt, "-o", "a_file.txt/m.keras"], mentions=("a_file.txt",)),
        Case("import: read-only folder", ["import-weights", "sinet", ckpt, "-o", str(ro_keras / "previous.keras")],
             mentions=("previous.keras",), lost=unchanged(ro_keras / "previous.keras", b"previous")),
        Case("import: disk full", ["import-weights", "sinet", ckpt, "-o", str(full_keras / "previous.keras")],
             mentions=("previous.keras",), lost=unchanged(full_keras / "previous.keras", b"previous"),
             run=with_limit(limit_keras)),
        # ---- predict
        Case("predict: registry name without --weights", ["predict", "sinet", "photo1.jpg", "-o", "p0"], expect="warn",
             mentions=("--weights",), warning="--weights"),
        Case("predict: unknown model", ["predict", "sinett", "photo1.jpg", "-o", "p"], mentions=("sinett", "sinet")),
        Case("predict: text .keras", ["predict", "notes.keras", "photo1.jpg", "-o", "p"], mentions=("notes.keras",)),
        Case("predict: text .tflite", ["predict", "notes.tflite", "photo1.jpg", "-o", "p"], mentions=("notes.tflite",)),
        Case("predict: missing photo", ["predict", "official.keras", "nope.jpg", "-o", "p"], mentions=("nope.jpg",)),
        Case("predict: text photo", ["predict", "official.keras", "notes.jpg", "-o", "p"], mentions=("notes.jpg",)),
        Case("predict: truncated photo", ["predict", "official.keras", "truncated.jpg", "-o", "p"], mentions=("truncated.jpg",)),
        Case("predict: corrupted JPEG data", ["predict", "official.keras", "corrupt.jpg", "-o", "p"], mentions=("corrupt.jpg",)),
        Case("predict: folder, 3 good + 3 bad", ["predict", "official.keras", "mixed", "-o", "p_mixed"],
             mentions=("bad1.jpg", "bad2.jpg", "bad3.jpg"),
             check=outputs(w / "p_mixed", ["good1_mask.png", "good2_mask.png", "good3_mask.png"])),
        Case("predict: --threshold 1.5", ["predict", "official.keras", "photo1.jpg", "-o", "p", "--threshold", "1.5"],
             mentions=("--threshold",)),
        Case("predict: --threshold -1", ["predict", "official.keras", "photo1.jpg", "-o", "p", "--threshold=-1"],
             mentions=("--threshold",)),
        Case("predict: bad colour", ["predict", "official.keras", "photo1.jpg", "-o", "p", "--background", "#12345"],
             mentions=("#12345",)),
        Case("predict: missing background image", ["predict", "official.keras", "photo1.jpg", "-o", "p",
                                                   "--background", "beach.jpg"], mentions=("beach.jpg",)),
        Case("predict: -o is a file", ["predict", "official.keras", "photo1.jpg", "-o", "a_file.txt"], mentions=("a_file.txt",)),
        Case("predict: read-only -o", ["predict", "official.keras", "photo1.jpg", "-o", str(ro_predict)],
             mentions=(str(ro_predict),)),
        Case("predict: --frames 0", ["predict", "official.keras", "notes.mp4", "-o", "p", "--frames", "0"],
             mentions=("--frames",)),
        Case("predict: empty folder", ["predict", "official.keras", "empty_folder", "-o", "p"], mentions=("empty_folder",)),
        Case("predict: text video", ["predict", "official.keras", "notes.mp4", "-o", "p"], mentions=("notes.mp4",)),
        Case("predict: missing webcam", ["predict", "official.keras", "7", "--frames", "2", "-o", "p"], mentions=("webcam 7",)),
        Case("predict: two inputs, one stem", ["predict", "official.keras", "photo1.jpg", "twin", "-o", "p"],
             mentions=("photo1",)),
        Case("predict: --weights with .tflite", ["predict", "tiny.tflite", "photo1.jpg", "--weights", ckpt, "-o", "p"],
             mentions=("--weights",)),
        Case("predict: text --weights", ["predict", "sinet", "photo1.jpg", "--weights", "notes.npz", "-o", "p"],
             mentions=("notes.npz",)),
        # ---- export
        Case("export: -o not .tflite", ["export", "tiny.keras", "-o", "m.onnx"], mentions=(".tflite",)),
        Case("export: -o is a folder", ["export", "tiny.keras", "-o", "a_folder.tflite"], mentions=("a_folder.tflite",)),
        Case("export: int8 without calibration", ["export", "tiny.keras", "-o", "m.tflite", "--quantize", "int8"],
             mentions=("--calibration-data",)),
        Case("export: --io uint8 without int8", ["export", "tiny.keras", "-o", "m.tflite", "--io", "uint8"],
             mentions=("--quantize int8",)),
        Case("export: --input-size abc", ["export", "tiny.keras", "-o", "m.tflite", "--input-size", "abc"],
             mentions=("abc",)),
        Case("export: --input-size 100x100 on a registry name", ["export", "sinet", "--weights", ckpt, "-o", "m.tflite",
                                                                 "--input-size", "100x100"], mentions=("100",)),
        Case("export: --input-size 100x100 on a .keras", ["export", "official.keras", "-o", "m.tflite",
                                                          "--input-size", "100x100"], mentions=("100",)),
        Case("export: --input-size 0x0", ["export", "tiny.keras", "-o", "m.tflite", "--input-size", "0x0"],
             mentions=("0x0",)),
        Case("export: missing calibration data", ["export", "tiny.keras", "-o", "m.tflite", "--quantize", "int8",
                                                  "--calibration-data", "nowhere"], mentions=("nowhere",)),
        Case("export: undecodable calibration photo", ["export", "official.keras", "-o", "m.tflite", "--quantize", "int8",
                                                       "--calibration-data", "data_badjpg", "--calibration-split", "none",
                                                       "--num-calibration", "2"], mentions=("1.jpg",)),
        Case("export: too few calibration images", ["export", "tiny.keras", "-o", "m.tflite", "--quantize", "int8",
                                                    "--calibration-data", "data", "--calibration-split", "none",
                                                    "--num-calibration", "50"], mentions=("50",)),
        Case("export: --output HEAD (old meaning)", ["export", "tiny.keras", "-o", "m.tflite", "--output", "logits"],
             mentions=("--head",)),
        Case("export: text .keras", ["export", "notes.keras", "-o", "m.tflite"], mentions=("notes.keras",)),
        Case("export: registry name without --weights", ["export", "sinet_encoder", "-o", "enc.tflite"], expect="warn",
             warning="--weights", mentions=("--weights",)),
        Case("export: read-only folder", ["export", "tiny.keras", "-o", str(ro_export / "m.tflite")],
             mentions=("m.tflite",), lost=unchanged(ro_export / "m.tflite", b"previous")),
        Case("export: disk full", ["export", "tiny.keras", "-o", str(full_export / "m.tflite")],
             mentions=("m.",), run=with_limit(limit_export),
             lost=lambda: None if ((full_export / "m.tflite").read_bytes(), (full_export / "m.json").read_bytes()) == (
                 b"previous", b"{}") else "the earlier m.tflite / m.json pair was changed"),
        # ---- evaluate
        Case("evaluate: missing data", ["evaluate", "official.keras", "--data", "nowhere"], mentions=("nowhere",)),
        Case("evaluate: --split none", ["evaluate", "official.keras", "--data", "data", "--split", "none"], expect="ok",
             check=split_none),
        Case("evaluate: read-only --gallery", ["evaluate", "official.keras", "--data", "data", "--split", "none",
                                               "--gallery", str(ro_gallery)], mentions=(str(ro_gallery),),
             check=gallery_check),
        Case("evaluate: --gallery is a file", ["evaluate", "official.keras", "--data", "data", "--split", "none",
                                               "--gallery", "a_file.txt"], mentions=("a_file.txt",)),
        Case("evaluate: corrupted JPEG in the data", ["evaluate", "official.keras", "--data", "data_corrupt",
                                                      "--split", "none"], mentions=("2.jpg",)),
        Case("evaluate: all-255 mask among 255=ignore masks", ["evaluate", "official.keras", "--data", "data_ignore",
                                                                "--split", "none"], mentions=("3.png",)),
        Case("evaluate: text .tflite", ["evaluate", "notes.tflite", "--data", "data", "--split", "none"],
             mentions=("notes.tflite",)),
        Case("evaluate: registry name without --weights", ["evaluate", "sinet", "--data", "data", "--split", "none"],
             expect="warn", warning="--weights", mentions=("--weights",)),
        Case("evaluate: unknown split", ["evaluate", "official.keras", "--data", "data", "--split", "train"],
             mentions=("train",)),
        # ---- data check
        Case("data check: missing folder", ["data", "check", "nowhere"], mentions=("nowhere",)),
        Case("data check: empty dataset", ["data", "check", "empty_data"], mentions=("empty",)),
        Case("data check: corrupted JPEG data", ["data", "check", "data_corrupt"], mentions=("2.jpg",)),
        Case("data check: all-255 mask among 255=ignore masks", ["data", "check", "data_ignore"], mentions=("3.png",),
             expect="warn", warning="3.png"),
        Case("data check: '#' in list-file names", ["data", "check", "data_hash/pairs.txt", "--json"], expect="ok",
             check=hash_list),
        Case("data check: list names a missing mask", ["data", "check", "data_list/pairs.txt"], mentions=("missing.png",)),
        Case("data check: one class", ["data", "check", "data", "--classes", "person"], mentions=("classes",)),
        Case("data check: --ignore-index 300", ["data", "check", "data", "--ignore-index", "300"],
             mentions=("ignore_index",)),
        Case("data check: text list file", ["data", "check", "notes.npz"], mentions=("notes.npz",)),
        # ---- train
        Case("train: missing recipe", ["train", "--config", "nope.yaml", "-o", "r"], mentions=("nope.yaml",)),
        Case("train: learning_rate: fast", ["train", "--config", "lr_text.yaml", "-o", "r1"],
             mentions=("lr_text.yaml", "learning_rate", "fast")),
        Case("train: learning_rate: -0.1", ["train", "--config", "lr_negative.yaml", "-o", "r2", "--verbose", "0"],
             mentions=("learning_rate", "-0.1")),
        Case("train: batch_size: 2.7", ["train", "--config", "batch_float.yaml", "-o", "r3"],
             mentions=("batch_size", "2.7")),
        Case("train: input_size: 224", ["train", "--config", "size_int.yaml", "-o", "r4"],
             mentions=("input_size", "224")),
        Case("train: epochs: ten", ["train", "--config", "epochs_text.yaml", "-o", "r5"],
             mentions=("epochs_text.yaml", "epochs", "ten")),
        Case("train: unknown key", ["train", "--config", "unknown_key.yaml", "-o", "r6"], mentions=("learning_rate",)),
        Case("train: invalid YAML", ["train", "--config", "bad_yaml.yaml", "-o", "r7"], mentions=("bad_yaml.yaml",)),
        Case("train: batch larger than the data", ["train", "--config", "tiny.yaml", "-o", "r8", "batch_size=64"],
             mentions=("batch_size",)),
        Case("train: bad override value", ["train", "--config", "tiny.yaml", "-o", "r9", "epochs=many"],
             mentions=("epochs", "many")),
        Case("train: data synthetic:abc", ["train", "--config", "tiny.yaml", "-o", "r10", "data=synthetic:abc"],
             mentions=("synthetic:abc",)),
        Case("train: -o is a file", ["train", "--config", "tiny.yaml", "-o", "a_file.txt"], mentions=("a_file.txt",)),
        Case("train: read-only -o", ["train", "--config", "tiny.yaml", "-o", str(ro_train / "run")],
             mentions=(str(ro_train),)),
        Case("train: multiworker without TF_CONFIG", ["train", "--config", "tiny.yaml", "-o", "r11", "--strategy",
                                                      "multiworker"], mentions=("TF_CONFIG",)),
        Case("train: a diverging run (learning_rate 1e30)", ["train", "--config", "lr_nan.yaml", "-o", "r_nan",
                                                              "--verbose", "0"], mentions=("lower",),
             check=nan_model("r_nan/train/best.keras")),
        Case("train: resume in a folder of another recipe", ["train", "--config", "tiny.yaml", "-o", "reference",
                                                             "--resume", "epochs=5"], mentions=("recipe",)),
        Case("train: SIGKILL mid-epoch, --resume", [], expect="ok", run=lambda probe, case: resume_after(
            probe, "kill_mid", "batch:2", poll="state.json")),
        Case("train: SIGKILL between checkpoint and state.json, --resume", [], expect="ok",
             run=lambda probe, case: resume_after(probe, "kill_window", "last:2", poll="last.keras")),
        Case("train: Ctrl-C", [], mentions=("interrupted",), run=lambda probe, case: interrupt(probe)),
        # ---- bench
        Case("bench: missing file", ["bench", "nope.tflite", "--runs", "1"], mentions=("nope.tflite",)),
        Case("bench: text .tflite", ["bench", "notes.tflite", "--runs", "1"], mentions=("notes.tflite",)),
        Case("bench: --input-range 0,1 on a uint8 model", ["bench", "tiny_uint8.tflite", "--input-range", "0,1",
                                                            "--data", "data", "--split", "none", "--runs", "2",
                                                            "--no-memory"], mentions=("--input-range",)),
        Case("bench: --threads 0", ["bench", "tiny.tflite", "--threads", "0"], mentions=("--threads",)),
        Case("bench: --threads a", ["bench", "tiny.tflite", "--threads", "a"], mentions=("--threads",)),
        Case("bench: --input-range bad", ["bench", "tiny.tflite", "--input-range", "zero,one"],
             mentions=("--input-range",)),
        Case("bench: --adb without adb", ["bench", "tiny.tflite", "--adb"], mentions=("adb",),
             env={"PATH": str(Path(sys.executable).parent)}),
        Case("bench: --gpu without --adb", ["bench", "tiny.tflite", "--gpu"], mentions=("--adb",)),
        Case("bench: missing --data", ["bench", "tiny.tflite", "--data", "nowhere", "--runs", "1", "--no-memory"],
             mentions=("nowhere",)),
        Case("bench: --plot is a folder", ["bench", "tiny.tflite", "--plot", "a_folder.png", "--runs", "1",
                                           "--no-memory"], mentions=("a_folder.png",)),
        # ---- check-gpu, models
        Case("check-gpu: missing file", ["check-gpu", "nope.tflite"], mentions=("nope.tflite",)),
        Case("check-gpu: text file", ["check-gpu", "notes.tflite"], mentions=("notes.tflite",)),
        Case("models: unknown name", ["models", "sinett"], mentions=("sinet",)),
    ]
    return cases


def resume_after(p: Probe, name: str, point: str, poll: str):
    """Kill ``sinet train`` with SIGKILL (the trainer's hook where it has one, else by watching
    the run folder), resume from the command line, compare with the reference history."""
    run = p.work / name
    proc = p.call(["train", "--config", "tiny.yaml", "-o", name, "--verbose", "0"],
                  env={"SINET_TRAIN_KILL_AT": point}, wait=False)
    target = run / (poll if poll == "state.json" else f"train/{poll}")
    first = None
    t0 = time.time()
    while proc.poll() is None and time.time() - t0 < TIMEOUT:
        if target.exists():
            stamp = target.stat().st_mtime_ns
            if poll == "state.json" or (first is not None and stamp != first):
                proc.send_signal(signal.SIGKILL)
                break
            if first is None and (run / "state.json").exists():
                first = stamp
        time.sleep(0.001)
    proc.communicate()
    if proc.returncode not in (-signal.SIGKILL,):
        return 0, "", f"(not reproduced: the run ended with {proc.returncode} before the kill)"
    code, out, err = p.call(["train", "--config", "tiny.yaml", "-o", name, "--resume", "--verbose", "0"])
    if code == 0:
        note = same_history(history(p.work / "reference"), history(run))
        if note:
            return 0, out, err + f"\n__silent__: resumed history differs: {note}"
    return code, out, err


def interrupt(p: Probe):
    proc = p.call(["train", "--config", "tiny.yaml", "-o", "r_int", "--verbose", "0"], wait=False)
    t0 = time.time()
    while proc.poll() is None and not (p.work / "r_int" / "state.json").exists() and time.time() - t0 < TIMEOUT:
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate()
    return proc.returncode, out, err


def setup(p: Probe):
    """The files the cases use: an imported official SINet, a tiny Keras model and its float
    and uint8 exports, and an uninterrupted reference training run."""
    tiny_keras(p.work / "tiny.keras")
    steps = [["import-weights", "sinet", str(CHECKPOINT), "-o", "official.keras"],
             ["export", "tiny.keras", "-o", "tiny.tflite"],
             ["export", "tiny.keras", "-o", "tiny_uint8.tflite", "--quantize", "int8", "--io", "uint8",
              "--calibration-data", "synthetic:20", "--num-calibration", "8", "--num-parity", "4"],
             ["train", "--config", "tiny.yaml", "-o", "reference", "--verbose", "0"]]
    for argv in steps:
        code, out, err = p.call(argv)
        if code not in (0, 3):
            raise SystemExit(f"setup failed: sinet {' '.join(argv)}\n{err[-3000:]}")


def _counts(results) -> dict:
    return {c: sum(r["category"] == c for r in results) for c in (*CATEGORIES, "not reproduced")}


def _shown(sinet: list[str]) -> str:
    """The probed command as a reader can repeat it (no paths of this machine)."""
    if len(sinet) == 1 and Path(sinet[0]).name == "sinet":
        return "sinet"
    return " ".join(Path(a).name if os.sep in a else a for a in sinet)


def _portable(text):
    """Paths of this machine out of a result: the temporary folder, the shared data."""
    if not isinstance(text, str):
        return text
    return re.sub(r"/tmp/sinet_probe_\w+/", "", text).replace(str(SHARED), "../shared")


def write_results(summary: dict, out: Path, name: str = "fault_probe"):
    """``NAME.json`` and ``NAME.md`` (counts, then one row per case) in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    summary = {**summary, "results": [{k: _portable(v) for k, v in r.items()} for r in summary["results"]]}
    (out / f"{name}.json").write_text(json.dumps(summary, indent=2) + "\n")
    counts, results = summary["counts"], summary["results"]
    lines = ["# Fault probe", "",
             f"`python benchmarks/fault_probe.py`: {len(results)} cases against `{summary['sinet']}`, each in a fresh "
             f"process ({summary['faults']} for the read-only folders and the full disk; {summary['wall_seconds']} s "
             "on a shared 2-core CPU)." + (f" {summary['notes']}" if summary.get("notes") else ""), "",
             "| " + " | ".join(counts) + " |", "|" + " ---: |" * len(counts),
             "| " + " | ".join(map(str, counts.values())) + " |",
             "", "| case | exit | outcome | message or finding |", "| --- | ---: | --- | --- |"]
    for r in results:
        note = str(r["note"]).replace("|", "\\|").replace("\n", " ")
        lines.append(f"| {r['case']} | {r['exit']} | {r['category']} | {note} |")
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    ap.add_argument("--sinet", help="the command to probe (default: the sinet script beside this Python)")
    ap.add_argument("--only", help="comma-separated case names (substrings)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = ap.parse_args()
    if args.sinet:
        sinet = shlex.split(args.sinet)
    else:
        script = shutil.which("sinet", path=str(Path(sys.executable).parent))
        sinet = [script] if script else [sys.executable, "-m", "sinet_tf.cli"]
    work = Path(tempfile.mkdtemp(prefix="sinet_probe_"))
    probe = Probe(sinet, work)
    results = []
    t_start = time.time()
    try:
        (work / "tiny.yaml").write_text(TINY_RECIPE)
        setup(probe)
        cases = build_cases(probe)
        if args.only:
            keys = [k.strip() for k in args.only.split(",")]
            cases = [c for c in cases if any(k in c.name for k in keys)]
        for i, case in enumerate(cases, 1):
            t0 = time.time()
            if case.run is not None:
                code, out, err = case.run(probe, case)
            else:
                code, out, err = probe.call(case.argv, env=case.env)
            if "__silent__" in err:
                category, note = "silent", err.split("__silent__: ", 1)[1]
            elif "(not reproduced" in err:
                category, note = "not reproduced", err.strip()
            else:
                category, note = classify(case, code, out, err)
            results.append({"case": case.name, "command": "sinet " + " ".join(case.argv), "exit": code,
                            "category": category, "note": note, "seconds": round(time.time() - t0, 1)})
            print(f"[{i}/{len(cases)}] {category:9s} exit {code}  {case.name}: {note}", flush=True)
    finally:
        probe.cleanup()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    summary = {"cases": len(results), "counts": _counts(results), "sinet": _shown(sinet),
               "faults": "tmpfs mounts" if probe.can_mount else "chmod 0555 and RLIMIT_FSIZE",
               "wall_seconds": round(time.time() - t_start), "results": results}
    write_results(summary, Path(args.out))
    counts = summary["counts"]
    print(json.dumps(counts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
