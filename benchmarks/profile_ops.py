"""Per-op latency profile of .tflite files under LiteRT (XNNPACK on, and the builtin kernels
with XNNPACK off), from :func:`sinet_tf.bench.op_profile.op_profile`: every op cut out into a model
of its own and timed warm (each sample the mean of 10 back-to-back invokes, rounds
interleaved over all ops), next to the whole model's time in the same run.

XNNPACK runs a whole model as one DELEGATE node, so the interpreter cannot time its ops;
timing them one by one gives the per-op picture. Inside the whole model XNNPACK fuses a
PAD into the convolution after it, so the whole model is faster than the sum by about the
PAD times.

    python benchmarks/profile_ops.py A.tflite [B.tflite ...] [--threads 1] [--no-builtin]
        [--out benchmarks/results/op_profile]

Writes OUT.json (every op of every file) and OUT.md (per op type totals and the slowest
ops), and prints the Markdown.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _names(data: bytes) -> list[str]:
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(bytes(data), 0)
    sub = model.subgraphs[0]
    out = []
    for op in sub.operators:
        name = sub.tensors[int(op.outputs[0])].name
        name = name.decode() if isinstance(name, bytes) else str(name)
        out.append(name.split(";")[0])
    return out


def main() -> int:
    from sinet_tf.bench.op_profile import op_profile, summarize_profile, time_models

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--no-builtin", action="store_true", help="skip the XNNPACK-off profile")
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--out", default="benchmarks/results/op_profile")
    args = parser.parse_args()
    files = {Path(m).stem: Path(m).read_bytes() for m in args.models}
    results, lines = {}, []
    for xnnpack in (True,) if args.no_builtin else (True, False):
        label = "XNNPACK" if xnnpack else "builtin kernels (XNNPACK off)"
        whole = time_models(files, args.threads, xnnpack, warmup=5, runs=50)
        lines += [f"## {label}, {args.threads} thread(s)", ""]
        for name, data in files.items():
            rows = op_profile(data, args.threads, xnnpack, runs=args.runs)
            for row, tensor in zip(rows, _names(data)):
                row["tensor"] = tensor
            total = sum(r["median_ms"] for r in rows)
            results.setdefault(name, {})[label] = {"whole_model_median_ms": whole[name]["median_ms"],
                                                   "sum_of_ops_ms": total, "ops": rows}
            lines += [f"### {name}: {len(rows)} ops, sum of per-op medians {total:.2f} ms, "
                      f"whole model {whole[name]['median_ms']:.2f} ms", "",
                      "| op | count | ms (sum) | share | not delegated |", "| --- | ---: | ---: | ---: | ---: |"]
            for e in summarize_profile(rows):
                lines.append(f"| {e['op']} | {e['count']} | {e['median_ms']:.3f} | {100 * e['share']:.1f}% | "
                             f"{e['not_delegated']} |")
            lines += ["", f"slowest {args.top}:", "", "| # | op | output | ms | tensor |", "| ---: | --- | --- | ---: | --- |"]
            for r in sorted(rows, key=lambda r: -r["median_ms"])[:args.top]:
                shape = "x".join(str(d) for d in r["output_shape"])
                lines.append(f"| {r['index']} | {r['op']} | {shape} {r['dtype']} | {r['median_ms']:.3f} | "
                             f"`{r['tensor'][-60:]}` |")
            lines.append("")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(results, indent=1))
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
