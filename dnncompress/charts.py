"""The report's charts, built once for the PNG plots and the HTML page alike (headless matplotlib).

Rules that keep them readable on a 60-layer ResNet as on LeNet-5: layers run top to bottom in model
order with one label each (horizontal bars, the figure grows with the layer count); layers kept in fp32
get their own panel and scale, so that one dense layer does not flatten every compressed bar; many
sensitivity curves become a heat map instead of a legend nobody can match to its line.
"""
from __future__ import annotations

import io

import numpy as np

PARTS = (("codes", "codes", "#3b75af"), ("index", "sparse index", "#ef8636"), ("tables", "codebook / scales", "#519e3e"),
         ("fp", "fp values", "#8d8d8d"))
ROW_INCHES = 0.19  # per layer: 8-pt labels never overlap
MAX_LINES = 8  # more sensitivity curves than this: a heat map


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams["svg.hashsalt"] = "dnncompress"  # the same report gives the same SVG bytes
    plt.rcParams["svg.fonttype"] = "none"  # text stays text: small, selectable, searchable
    return plt


def is_fp32(row: dict) -> bool:
    return row["scheme"] == "fp32"


def layer_figure(rep: dict):
    """Per layer, in model order: stacked bytes (codes, index, codebook, fp), bits per weight, sparsity.
    Compressed layers on top; layers kept in fp32 (BatchNorm, excluded layers) below on their own scale."""
    plt = _pyplot()
    rows = [r for r in rep["layers"] if r["params"]]
    groups = [(f"compressed layers ({n})", g) for g in [[r for r in rows if not is_fp32(r)]] if (n := len(g))]
    groups += [(f"kept in fp32 ({n}, own scale)", g) for g in [[r for r in rows if is_fp32(r)]] if (n := len(g))]
    if not groups:
        groups = [("layers", rows)]
    heights = [max(len(g), 2) for _, g in groups]
    fig, axes = plt.subplots(len(groups), 3, squeeze=False, figsize=(11, 1.6 + ROW_INCHES * sum(heights) + 0.6 * len(groups)),
                             gridspec_kw={"height_ratios": heights, "width_ratios": [3, 1.3, 1.3]})
    for (title, group), (ax_b, ax_w, ax_s) in zip(groups, axes):
        y = np.arange(len(group))
        left = np.zeros(len(group))
        for key, label, color in PARTS:
            vals = np.array([r[key] for r in group], dtype=float)
            if vals.any():
                ax_b.barh(y, vals, left=left, color=color, label=label, height=0.75)
            left += vals
        for i, r in enumerate(group):
            if r["bytes"] and not is_fp32(r):
                ax_b.annotate(f"{4 * r['params'] / r['bytes']:.0f}×", (left[i], i), xytext=(3, 0), textcoords="offset points",
                              va="center", fontsize=7, color="#444")
        ax_b.set_xlim(0, max(left.max(), 1) * 1.12)
        ax_b.set_title(f"{title}: bytes in the file", fontsize=9, loc="left")
        ax_w.barh(y, [r["bits_per_weight"] for r in group], color="#6a51a3", height=0.75)
        ax_w.set_title("bits per weight", fontsize=9, loc="left")
        ax_s.barh(y, [100 * (1 - r["nonzeros"] / max(r["params"], 1)) for r in group], color="#c44e52", height=0.75)
        ax_s.set_xlim(0, 100)
        ax_s.set_title("sparsity %", fontsize=9, loc="left")
        for ax in (ax_b, ax_w, ax_s):
            ax.set_yticks(y, [r["layer"] for r in group] if ax is ax_b else [""] * len(group), fontsize=8)
            ax.set_ylim(len(group) - 0.5, -0.5)  # model order, top to bottom
            ax.tick_params(axis="x", labelsize=7)
            ax.grid(axis="x", lw=0.3, alpha=0.5)
    handles, labels = axes[0][0].get_legend_handles_labels()
    for row in axes[1:]:
        for h, lab in zip(*row[0].get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    fig.legend(handles, labels, loc="upper right", ncol=len(labels), fontsize=8, frameon=False)
    fig.suptitle(f"{rep.get('arch') or 'model'}: {rep['fp32_bytes']:,} → {rep['packed_bytes']:,} bytes ({rep['ratio']:.1f}× smaller; "
                 f"container {rep['container_bytes']:,})", fontsize=10, x=0.01, ha="left")
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    return fig


def sensitivity_figure(curves: dict[str, list], chosen: dict[str, float] | None = None, xlabel: str = "sparsity of this layer alone",
                       title: str = "Per-layer pruning sensitivity"):
    """Accuracy drop of each layer alone over a grid: lines (dotted: the chosen value) for a few layers,
    a heat map in model order (the chosen value boxed) for many."""
    plt = _pyplot()
    names = list(curves)
    if len(names) <= MAX_LINES:
        fig, ax = plt.subplots(figsize=(7, 4))
        for name in names:
            c = curves[name]
            line = ax.plot([x for x, _ in c], [d for _, d in c], marker="o", ms=3, label=name)[0]
            if chosen and name in chosen:
                ax.axvline(chosen[name], color=line.get_color(), ls=":", lw=1)
        worst = max((d for c in curves.values() for _, d in c), default=1.0)
        ax.set_ylim(-0.5, min(max(worst, 1.0), 10.0) * 1.05)  # the interesting part is near the budget, not the collapse
        ax.set_xlabel(xlabel)
        ax.set_ylabel("accuracy drop (points, clipped at 10)")
        ax.set_title(title + (" (dotted: chosen)" if chosen else ""), fontsize=10)
        ax.legend(fontsize=7)
        fig.tight_layout()
        return fig
    grid = sorted({x for c in curves.values() for x, _ in c})
    drops = np.full((len(names), len(grid)), np.nan)
    for i, name in enumerate(names):
        for x, d in curves[name]:
            drops[i, grid.index(x)] = d
    fig, ax = plt.subplots(figsize=(max(6, 0.55 * len(grid) + 3), 1.4 + ROW_INCHES * len(names)))
    im = ax.imshow(np.clip(drops, 0, 10), aspect="auto", cmap="magma_r", vmin=0, vmax=10)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.set_xticks(range(len(grid)), [f"{x:g}" for x in grid], fontsize=7)
    for i, name in enumerate(names):
        if chosen and name in chosen and chosen[name] in grid:
            ax.add_patch(plt.Rectangle((grid.index(chosen[name]) - 0.5, i - 0.5), 1, 1, fill=False, ec="#1f77b4", lw=1.5))
    ax.set_xlabel(xlabel)
    ax.set_title(title + (" (boxed: chosen)" if chosen else ""), fontsize=10)
    fig.colorbar(im, ax=ax, label="accuracy drop (points, clipped at 10)", fraction=0.04)
    fig.tight_layout()
    return fig


def history_figure(stages: list[dict]):
    """Test accuracy after every stage that measured one, in the order they ran."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(5, 1.1 * len(stages) + 2), 3))
    x = np.arange(len(stages))
    acc = [s["accuracy"] for s in stages]
    ax.plot(x, acc, marker="o", color="#3b75af")
    for i, a in enumerate(acc):
        ax.annotate(f"{a:.2f}", (i, a), xytext=(0, 6), textcoords="offset points", ha="center", fontsize=8)
    ax.set_xticks(x, [f"{i + 1}. {s['stage']}" for i, s in enumerate(stages)], rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("test accuracy %")
    lo, hi = min(acc), max(acc)
    ax.set_ylim(lo - max(1.0, 0.15 * (hi - lo)), hi + max(1.0, 0.15 * (hi - lo)))
    ax.grid(axis="y", lw=0.3, alpha=0.5)
    ax.set_title("Accuracy after each stage", fontsize=10)
    fig.tight_layout()
    return fig


def svg_text(fig) -> str:
    """The figure as inline SVG markup (no XML prolog, no date): the HTML page embeds it as is."""
    plt = _pyplot()
    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None})
    plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg"):]
