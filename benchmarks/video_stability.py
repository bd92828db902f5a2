"""Flicker benchmark: per-frame person IoU and temporal instability on synthetic videos.

Every video is a humanseg290 val photo seen by a smoothly moving camera (zoom 1.12-1.35,
rotation within +-3 degrees, pan; periods of 40-160 frames) with per-frame sensor noise
(sigma 4 grey levels) and exposure jitter (+-4%), so the ground truth of every frame is the
photo's mask warped by the known motion (:mod:`sinet_tf.postprocess.stability`). Metrics per
row, over all frames of all videos:

* ``person_iou``: mean over frames of the person IoU (:func:`sinet_tf.metrics.person_iou`),
  mask = matte > 0.5; ``boundary_f``: mean boundary F (3 px, :func:`sinet_tf.metrics.boundary_f_score`);
* ``instability``: mean |matte_t - warp(matte_{t-1})| over the pixels both frames see,
  where ``warp`` moves frame t-1's matte by the known camera motion; ``flip_rate``: the
  fraction of those pixels whose mask flips;
* ``ms_per_frame``: wall time of the smoothing and resizing/refinement per frame (the model
  itself is not included; for MediaPipe, its whole ``segment_for_video`` call).

Rows: the ground truth itself (what warping a perfect nearest-neighbour mask leaves), the
official SINet (``sinet predict``'s pipeline: letterboxed to 224x224, Keras model) with
each temporal mode and refinement, and MediaPipe's selfie model through the Tasks
``ImageSegmenter`` in VIDEO running mode on the same frames (its confidence mask as the
matte; fetch the model with ``bash export/peers/get_mediapipe_selfie.sh``; the file carries
its own metadata with the [0, 1] input normalization). Deterministic: video ``i`` uses
seed ``i``.

    python benchmarks/video_stability.py [--quick] [--json OUT.json]

``--quick`` (8 videos x 30 frames, about a minute on 2 cores); the default is all 60 val
photos x 60 frames (about 20 minutes). Writes the rows as a JSON list to ``--json`` (default
benchmarks/results/video_stability.json, with ``--quick`` video_stability_quick.json) and
a Markdown table beside it (``.md``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
DATA = SHARED / "datasets" / "humanseg290"
WEIGHTS = SHARED / "reference" / "official" / "sinet_official_state_dict.npz"
SELFIE = REPO / "export" / "peers" / "models" / "selfie_segmentation.tflite"



def sinet_variants(quick: bool):
    """(temporal, strength, refine) rows for SINet; the first is no post-processing."""
    from sinet_tf.postprocess import DEFAULT_STRENGTH

    rows = [("none", 0.0, "none"), ("ema", DEFAULT_STRENGTH, "none"), ("flow", DEFAULT_STRENGTH, "none"),
            ("none", 0.0, "guided"), ("ema", DEFAULT_STRENGTH, "guided"), ("flow", DEFAULT_STRENGTH, "guided")]
    if not quick:
        rows += [(mode, s, "none") for mode in ("ema", "flow") for s in (0.5, 0.85)]
    return rows


class Accumulator:
    def __init__(self, **key):
        self.key = key
        self.ious, self.bfs, self.mads, self.flips, self.seconds, self.frames = [], [], [], [], 0.0, 0

    def add_video(self, video, mattes, seconds: float):
        from sinet_tf.metrics import boundary_f_score, person_iou
        from sinet_tf.postprocess.stability import instability

        for m, lab in zip(mattes, video.labels):
            mask = (m > 0.5).astype(np.uint8)
            self.ious.append(float(person_iou(mask, lab)[0]))
            self.bfs.append(boundary_f_score(mask == 1, lab == 1, 3, lab != 255))
        st = instability(video, mattes)
        self.mads.append(st["mean_abs_diff"])
        self.flips.append(st["flip_rate"])
        self.seconds += seconds
        self.frames += len(mattes)

    def row(self) -> dict:
        return {**self.key, "person_iou": round(float(np.mean(self.ious)), 5),
                "instability": round(float(np.mean(self.mads)), 6), "flip_rate": round(float(np.mean(self.flips)), 6),
                "boundary_f": round(float(np.mean(self.bfs)), 5),
                "ms_per_frame": round(1000 * self.seconds / max(self.frames, 1), 2),
                "n_videos": len(self.mads), "n_frames": self.frames}


def mediapipe_client(path: Path):
    import mediapipe as mp  # noqa: F401
    from mediapipe.tasks.python import vision
    from mediapipe.tasks.python.core.base_options import BaseOptions

    options = vision.ImageSegmenterOptions(base_options=BaseOptions(model_asset_buffer=path.read_bytes()),
                                           running_mode=vision.RunningMode.VIDEO,
                                           output_confidence_masks=True, output_category_mask=False)
    return vision.ImageSegmenter.create_from_options(options)


def run(quick: bool, n_videos: int | None, n_frames: int | None, selfie: Path | None, say=print) -> list[dict]:
    from sinet_tf.bench.host import cpu_info, cpu_label
    from sinet_tf.data.readers import load_dataset
    from sinet_tf.inference import Segmenter
    from sinet_tf.postprocess import MattePostprocessor, model_frame
    from sinet_tf.postprocess.stability import photo_to_video

    n_videos = n_videos or (8 if quick else 60)
    n_frames = n_frames or (30 if quick else 60)
    val = load_dataset(DATA, split="val")
    picks = np.unique(np.linspace(0, len(val) - 1, min(n_videos, len(val))).round().astype(int))
    segmenter = Segmenter("sinet", weights=WEIGHTS, keep_aspect=True)
    variants = sinet_variants(quick)
    accs = [Accumulator(model="ground truth", temporal="none", strength=0.0, refine="none")]
    accs += [Accumulator(model="sinet_official", temporal=t, strength=s, refine=r) for t, s, r in variants]
    posts = [MattePostprocessor(t, s, r) for t, s, r in variants]
    mp_acc = None
    if selfie is not None:
        import mediapipe as mp

        mp_acc = Accumulator(model="mediapipe_selfie", temporal="none", strength=0.0, refine="none",
                             running_mode="VIDEO")
    t_start = time.perf_counter()
    for k, i in enumerate(picks):
        image, labels = val.read(int(i))
        video = photo_to_video(image, labels, n_frames, seed=int(i))
        accs[0].add_video(video, [(lab == 1).astype(np.float32) for lab in video.labels], 0.0)
        frames = [model_frame(segmenter, f) for f in video.frames]
        for acc, post in zip(accs[1:], posts):
            post.reset()
            t0 = time.perf_counter()
            mattes = [post(mf, f) for mf, f in zip(frames, video.frames)]
            acc.add_video(video, mattes, time.perf_counter() - t0)
        if mp_acc is not None:
            mattes, seconds = [], 0.0
            with mediapipe_client(selfie) as client:
                for t, f in enumerate(video.frames):
                    t0 = time.perf_counter()
                    result = client.segment_for_video(mp.Image(image_format=mp.ImageFormat.SRGB,
                                                               data=np.ascontiguousarray(f)), int(t * 1000 / 30))
                    mattes.append(np.array(result.confidence_masks[0].numpy_view(), np.float32).reshape(f.shape[:2]))
                    seconds += time.perf_counter() - t0
            mp_acc.add_video(video, mattes, seconds)
        say(f"video {k + 1}/{len(picks)} (val photo {val.samples[int(i)].image.name}, {n_frames} frames, "
            f"{video.frame_size[1]}x{video.frame_size[0]}): {time.perf_counter() - t_start:.0f} s")
    rows = [a.row() for a in accs] + ([mp_acc.row()] if mp_acc is not None else [])
    base = rows[1]["instability"]
    for r in rows:
        r["instability_vs_none"] = round(r["instability"] / base, 3) if base else None
        r["person_iou_vs_none"] = round(r["person_iou"] - rows[1]["person_iou"], 5)
        r["cpu"] = cpu_label(cpu_info())
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| model | temporal | strength | refine | person IoU | vs none | instability | vs none | flip rate | "
             "boundary F | ms/frame |", "| --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        model = r["model"] + (f" ({r['running_mode']} running mode)" if r.get("running_mode") else "")
        lines.append(f"| {model} | {r['temporal']} | {r['strength']:g} | {r['refine']} | {r['person_iou']:.4f} | "
                     f"{r['person_iou_vs_none']:+.4f} | {r['instability']:.4f} | {r['instability_vs_none']:.2f}x | "
                     f"{r['flip_rate']:.4f} | {r['boundary_f']:.4f} | {r['ms_per_frame']:.2f} |")
    r = rows[0]
    lines.append(f"\n{r['n_videos']} videos x {r['n_frames'] // max(r['n_videos'], 1)} frames; CPU: {r['cpu']}; "
                 "ms/frame: post-processing only (SINet rows), the whole segment_for_video call (MediaPipe).")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="8 videos x 30 frames (a few minutes on 2 cores)")
    parser.add_argument("--json", help="where the JSON list of rows goes, a .md table beside it (default "
                                       "benchmarks/results/video_stability.json, or video_stability_quick.json "
                                       "with --quick)")
    parser.add_argument("--videos", type=int, help="number of videos (default 60; --quick 8)")
    parser.add_argument("--frames", type=int, help="frames per video (default 60; --quick 30)")
    parser.add_argument("--selfie", default=str(SELFIE), help="MediaPipe's selfie_segmentation.tflite")
    args = parser.parse_args(argv)
    from sinet_tf.files import write_atomic

    selfie = Path(args.selfie)
    if not selfie.is_file():
        print(f"{selfie} is missing: run `bash export/peers/get_mediapipe_selfie.sh` for the MediaPipe row; "
              "measuring SINet only", file=sys.stderr)
        selfie = None
    for name, value in (("--videos", args.videos), ("--frames", args.frames)):
        if value is not None and value < (2 if name == "--frames" else 1):
            parser.error(f"{name} {value}: too small")
    rows = run(args.quick, args.videos, args.frames, selfie, say=lambda m: print(m, file=sys.stderr, flush=True))
    out = Path(args.json) if args.json else \
        REPO / "benchmarks" / "results" / f"video_stability{'_quick' if args.quick else ''}.json"
    write_atomic(json.dumps(rows, indent=2).encode(), out)
    write_atomic(markdown(rows).encode(), out.with_suffix(".md"))
    print(markdown(rows))
    print(f"wrote {out} and {out.with_suffix('.md')}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
