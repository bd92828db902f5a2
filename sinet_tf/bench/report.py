"""Presenting bench rows: the ``rich`` table ``sinet bench`` prints and the PNG plots
(latency per model per thread count; latency against person IoU when accuracy was measured)."""

from __future__ import annotations

from pathlib import Path

from sinet_tf.files import write_atomic

__all__ = ["bench_table", "scatter_path", "write_plots"]


def _ms(v) -> str:
    return "-" if v is None else f"{v:.2f}"


def _size(n: int) -> str:
    return f"{n / 1024:.0f} KiB" if n < 1024 * 1024 else f"{n / 1024 / 1024:.2f} MiB"


def _ratio(row) -> str:
    r = row.get("median_ratio", row.get("mean_ratio"))
    return "-" if r is None else f"{r:.2f}x"


def _input(row) -> str:
    i = row["input"]
    lo, hi = i.get("range", [0, 255])
    return f"{'x'.join(map(str, i['shape'][1:]))} {i['dtype']} in [{lo:g}, {hi:g}]"


def bench_table(rows: list[dict], title: str | None = None):
    """A ``rich`` table of bench rows (host or ``--adb``); the caption lists every model's
    input and the value range its pixels were mapped to."""
    from rich import box
    from rich.table import Table

    on_device = any("device" in r for r in rows)
    has_iou = any(r.get("person_iou") is not None for r in rows)
    if title is None:
        if on_device:
            r0 = rows[0]
            title = (f"benchmark_model on {r0['device']} ({'GPU delegate' if r0['use_gpu'] else 'CPU'}); "
                     "ratio = mean / first model's mean (benchmark_model prints no median)")
        else:
            title = (f"LiteRT on this machine (XNNPACK {'on' if rows[0]['xnnpack'] else 'off'}, "
                     f"{max(r['runs'] for r in rows)} interleaved runs); ratio = median / first model's median")
    caption = "inputs: " + "; ".join(dict.fromkeys(f"{r['name']} {_input(r)}" for r in rows))
    errors = dict.fromkeys(f"{r['name']}: {r['error']}" for r in rows if r.get("error"))
    if errors:
        caption += "\nnot run: " + "; ".join(errors)
    table = Table(title=title, caption=caption, box=box.SIMPLE_HEAD)
    cols = [("model", {"no_wrap": True}), ("threads", {"justify": "right"})]
    stats = ("mean ms", "min ms", "max ms", "std ms") if on_device else ("median ms", "p90 ms", "min ms")
    cols += [(c, {"justify": "right"}) for c in (*stats, "ratio", "size", "params", "peak MB")]
    if has_iou:
        cols.append(("person IoU", {"justify": "right"}))
    for name, kw in cols:
        table.add_column(name, **kw)
    for r in rows:
        peak = r.get("peak_memory_mb")
        cells = [r["name"], str(r["threads"]), *(_ms(r.get(c.replace(" ", "_"))) for c in stats), _ratio(r),
                 _size(r["size_bytes"]), f"{r['params']:,}", "-" if peak is None else f"{peak:.1f}"]
        if has_iou:
            cells.append("-" if r.get("person_iou") is None else f"{r['person_iou']:.4f}")
        if r.get("error"):
            cells[2] = "[red]not run[/red]"
        table.add_row(*cells)
    return table


def scatter_path(out: str | Path) -> Path:
    """``OUT.png`` -> ``OUT_scatter.png``."""
    out = Path(out)
    return out.with_name(f"{out.stem}_scatter{out.suffix or '.png'}")


def _latency(row):
    return row.get("median_ms") if row.get("median_ms") is not None else row.get("mean_ms")


def write_plots(rows: list[dict], out: str | Path) -> list[Path]:
    """Bar chart of latency per model per thread count at ``out`` (median on the host, with a
    whisker to p90; mean on a device), and with accuracy in the rows a latency against
    person-IoU scatter at :func:`scatter_path`. Returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np


    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    names = list(dict.fromkeys(r["name"] for r in rows))
    threads = list(dict.fromkeys(r["threads"] for r in rows))
    by_key = {(r["name"], r["threads"]): r for r in rows}
    statistic = "median" if any(r.get("median_ms") is not None for r in rows) else "mean"
    width = 0.8 / len(threads)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.6 * len(names) + 2), 4.2), dpi=110)
    x = np.arange(len(names))
    for k, t in enumerate(threads):
        vals = [(_latency(by_key.get((n, t), {})) or 0.0) for n in names]
        p90 = [by_key.get((n, t), {}).get("p90_ms") for n in names]
        err = None
        if statistic == "median" and all(v is not None for v in p90):
            err = [np.zeros(len(vals)), np.maximum(np.asarray(p90) - np.asarray(vals), 0)]
        bars = ax.bar(x + (k - (len(threads) - 1) / 2) * width, vals, width, yerr=err, capsize=3,
                      label=f"{t} thread{'s' if t != 1 else ''}")
        ax.bar_label(bars, labels=[f"{v:.3g}" if v else "n/a" for v in vals], fontsize=7, padding=2)
    ax.set_xticks(x, names, rotation=15 if len(names) > 3 else 0, ha="right" if len(names) > 3 else "center")
    ax.set_ylabel(f"{statistic} latency (ms)" + (", whisker to p90" if statistic == "median" else ""))
    where = f"on {rows[0]['device']}" if "device" in rows[0] else "LiteRT on this machine"
    ax.set_title(f"Inference latency per model ({where})")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    written = [_save(fig, out, plt, write_atomic)]

    scored = [r for r in rows if r.get("person_iou") is not None and _latency(r) is not None]
    if scored:
        fig, ax = plt.subplots(figsize=(6, 4.5), dpi=110)
        markers = "os^Dvp*"
        for k, t in enumerate(threads):
            pts = [r for r in scored if r["threads"] == t]
            ax.scatter([_latency(r) for r in pts], [r["person_iou"] for r in pts], s=50, marker=markers[k % 7],
                       label=f"{t} thread{'s' if t != 1 else ''}")
            if k == 0:  # each model named once, at its first thread count; labels alternate above/below
                for j, r in enumerate(pts):
                    ax.annotate(r["name"], (_latency(r), r["person_iou"]), textcoords="offset points",
                                xytext=(5, 5 if j % 2 == 0 else -11), fontsize=7)
        r0 = scored[0]
        ax.set_xlabel(f"{statistic} latency (ms)")
        ax.set_ylabel(f"person IoU ({r0.get('iou_split') or 'all'}, {r0.get('iou_images')} images)")
        ax.set_title("Accuracy against latency (up and left is better)")
        ax.margins(x=0.25, y=0.12)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        written.append(_save(fig, scatter_path(out), plt, write_atomic))
    return written


def _save(fig, path: Path, plt, write_atomic) -> Path:
    from io import BytesIO

    buf = BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return write_atomic(buf.getvalue(), path)
