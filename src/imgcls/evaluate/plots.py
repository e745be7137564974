"""Figures for the report and for ``imgcls explain``, rendered to PNG bytes.

Matplotlib is used through its object API (``Figure`` + Agg), never pyplot, so no window or
global state is involved and figures are freed as soon as they are drawn. Long class lists
stay readable: the confusion matrix keeps the most confused classes, bar charts grow with the
number of classes and shrink their labels.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np

MAX_MATRIX_CLASSES = 20  # confusion matrices beyond this keep the most confused classes
ANNOTATE_MAX = 12  # write counts into the cells up to this many classes
MAX_BAR_CLASSES = 100  # per-class bars beyond this show the worst ones
DPI = 80  # figures are viewed on screen inside the report; keeps PNGs small
THUMB_SIDE = 96  # pixels: gallery thumbnails are upscaled to this side (nearest neighbour)


def to_png(fig) -> bytes:
    """Render a matplotlib ``Figure`` to PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    return buf.getvalue()


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _label_size(n: int) -> float:
    return float(np.clip(220 / max(n, 1), 5, 10))


def array_png(pixels: np.ndarray, side: int | None = THUMB_SIDE) -> bytes:
    """A uint8 ``(H, W[, 3])`` array as PNG bytes, upscaled (nearest) so its longer side is ``side``."""
    from PIL import Image

    img = Image.fromarray(np.asarray(pixels, np.uint8).squeeze())
    if side and max(img.size) < side:
        scale = side / max(img.size)
        img = img.resize(
            (max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.NEAREST
        )
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def overlay(pixels: np.ndarray, cam: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """Blend a heat map ``cam`` (values in 0..1, any size) over uint8 RGB ``pixels``."""
    from matplotlib import colormaps
    from PIL import Image

    h, w = pixels.shape[:2]
    cam_img = Image.fromarray(np.uint8(np.clip(cam, 0, 1) * 255)).resize((w, h), Image.BILINEAR)
    heat = colormaps["jet"](np.asarray(cam_img) / 255.0)[..., :3] * 255
    return np.uint8(np.clip((1 - alpha) * pixels.astype(np.float64) + alpha * heat, 0, 255))


def training_curves(history: list[dict[str, float]]) -> bytes:
    """Loss and accuracy per epoch (training and validation) from ``history.csv`` rows."""
    from matplotlib.ticker import MaxNLocator

    fig = _figure(9, 3.2)
    axes = fig.subplots(1, 2)
    epochs = [row.get("epoch", i + 1) for i, row in enumerate(history)]
    for ax, key in zip(axes, ("loss", "accuracy"), strict=True):
        for name, style in ((key, "-o"), (f"val_{key}", "-s")):
            values = [row.get(name) for row in history]
            if any(v is not None for v in values):
                ax.plot(
                    epochs, [np.nan if v is None else v for v in values], style, ms=3, label=name
                )
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(key)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return to_png(fig)


def most_confused(cm: np.ndarray, keep: int = MAX_MATRIX_CLASSES) -> np.ndarray:
    """Indices of the ``keep`` classes with the most off-diagonal mass (row + column), in class order."""
    cm = np.asarray(cm)
    if len(cm) <= keep:
        return np.arange(len(cm))
    off = cm - np.diag(np.diag(cm))
    mass = off.sum(axis=0) + off.sum(axis=1)
    return np.sort(np.argsort(-mass, kind="stable")[:keep])


def confusion_heatmap(cm: np.ndarray, class_names: Sequence[str]) -> bytes:
    """Row-normalised confusion matrix heat map (rows: true class, columns: predicted)."""
    cm = np.asarray(cm)
    keep = most_confused(cm)
    sub = cm[np.ix_(keep, keep)]
    names = [str(class_names[i]) for i in keep]
    rates = sub / np.maximum(cm[keep].sum(axis=1, keepdims=True), 1)
    n = len(keep)
    side = float(np.clip(0.42 * n + 2, 4, 11))
    fig = _figure(side + 1, side)
    ax = fig.subplots()
    image = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, label="share of the true class")
    size = _label_size(n)
    ax.set_xticks(range(n), names, rotation=90, fontsize=size)
    ax.set_yticks(range(n), names, fontsize=size)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n < len(cm):
        ax.set_title(f"{n} most confused of {len(cm)} classes")
    if n <= ANNOTATE_MAX:
        for i in range(n):
            for j in range(n):
                if sub[i, j]:
                    ax.text(
                        j,
                        i,
                        str(sub[i, j]),
                        ha="center",
                        va="center",
                        fontsize=8,
                        color="white" if rates[i, j] > 0.5 else "black",
                    )
    return to_png(fig)


def per_class_bars(per_class: dict[str, dict[str, float]]) -> bytes:
    """Horizontal precision / recall / F1 bars per class; beyond 100 classes the lowest F1 only."""
    names = list(per_class)
    title = "per-class precision, recall and F1"
    if len(names) > MAX_BAR_CLASSES:
        names = sorted(names, key=lambda c: per_class[c]["f1"])[:MAX_BAR_CLASSES]
        title += f" ({MAX_BAR_CLASSES} lowest F1 of {len(per_class)})"
    n = len(names)
    fig = _figure(8, float(np.clip(0.3 * n + 1.2, 2.5, 30)))
    ax = fig.subplots()
    y = np.arange(n)
    height = 0.27
    for k, (key, color) in enumerate(
        (("precision", "#4c72b0"), ("recall", "#dd8452"), ("f1", "#55a868"))
    ):
        ax.barh(
            y + (k - 1) * height, [per_class[c][key] for c in names], height, label=key, color=color
        )
    ax.set_yticks(y, [f"{c} ({per_class[c]['support']})" for c in names], fontsize=_label_size(n))
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("score (support in brackets)")
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    return to_png(fig)


def reliability_diagram(panels: Sequence[tuple[str, list[dict], float]]) -> bytes:
    """Accuracy against confidence per bin, one panel per ``(title, ece_bins, ece)``."""
    fig = _figure(4.2 * len(panels), 4)
    axes = np.atleast_1d(fig.subplots(1, len(panels)))
    for ax, (title, bins, ece) in zip(axes, panels, strict=True):
        lows = np.array([b["lower"] for b in bins])
        width = bins[0]["upper"] - bins[0]["lower"]
        acc = np.array([b["accuracy"] if b["count"] else 0.0 for b in bins])
        conf = np.array([b["confidence"] if b["count"] else np.nan for b in bins])
        ax.bar(
            lows,
            acc,
            width=width,
            align="edge",
            color="#4c72b0",
            edgecolor="white",
            label="accuracy",
        )
        gap = np.nan_to_num(conf - acc)
        ax.bar(
            lows,
            np.abs(gap),
            bottom=np.minimum(acc, np.nan_to_num(conf)),
            width=width,
            align="edge",
            facecolor="none",
            edgecolor="#c44e52",
            hatch="///",
            lw=0.8,
            label="gap to mean confidence",
        )
        ax.plot([0, 1], [0, 1], "--", color="gray", lw=1)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence")
        ax.set_ylabel("accuracy")
        ax.set_title(f"{title}: ECE {ece:.3f}")
        ax.legend(loc="upper left", fontsize=8)
    return to_png(fig)


def top_k_bars(labels: Sequence[str], probs: Sequence[float]) -> bytes:
    """Horizontal bars of the top-k class probabilities, most probable on top."""
    n = len(labels)
    fig = _figure(5, 0.4 * n + 1)
    ax = fig.subplots()
    ax.barh(range(n), probs, color="#4c72b0")
    ax.set_yticks(range(n), [str(lab) for lab in labels])
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("probability")
    for i, p in enumerate(probs):
        inside = p > 0.8  # no room right of a long bar: write inside it
        ax.text(
            p - 0.01 if inside else p + 0.01,
            i,
            f"{p:.3f}",
            va="center",
            fontsize=8,
            ha="right" if inside else "left",
            color="white" if inside else "black",
        )
    return to_png(fig)


def filter_grid(kernel: np.ndarray, max_filters: int = 64) -> bytes:
    """A first-layer kernel ``(kh, kw, in, out)`` as a grid of tiles (RGB when ``in`` is 3)."""
    kernel = np.asarray(kernel, np.float64)[..., :max_filters]
    n = kernel.shape[-1]
    cols = int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    fig = _figure(cols * 0.6 + 0.5, rows * 0.6 + 0.6)
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    for i, ax in enumerate(axes):
        ax.axis("off")
        if i >= n:
            continue
        tile = kernel[..., i]
        tile = tile if tile.shape[-1] == 3 else tile.mean(axis=-1)
        lo, hi = tile.min(), tile.max()
        ax.imshow(
            (tile - lo) / (hi - lo + 1e-12),
            cmap=None if tile.ndim == 3 else "gray",
            interpolation="nearest",
        )
    fig.suptitle(
        f"first convolution: {n} filters of {kernel.shape[0]}x{kernel.shape[1]}", fontsize=9
    )
    return to_png(fig)


def feature_map_grid(fmap: np.ndarray, title: str, max_maps: int = 16) -> bytes:
    """The most active channels of one feature map ``(H, W, C)``, each scaled to its own range."""
    fmap = np.asarray(fmap, np.float64)
    order = np.argsort(-fmap.mean(axis=(0, 1)), kind="stable")[:max_maps]
    cols = min(len(order), 8)
    rows = int(np.ceil(len(order) / cols))
    fig = _figure(cols * 1.1 + 0.3, rows * 1.1 + 0.5)
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    for ax, c in zip(axes, list(order) + [None] * (len(axes) - len(order)), strict=True):
        ax.axis("off")
        if c is None:
            continue
        m = fmap[..., c]
        ax.imshow((m - m.min()) / (np.ptp(m) + 1e-12), cmap="viridis", interpolation="nearest")
        ax.set_title(f"ch {c}", fontsize=7)
    fig.suptitle(
        f"{title}: {fmap.shape[0]}x{fmap.shape[1]}x{fmap.shape[2]} "
        f"({len(order)} most active channels)",
        fontsize=9,
    )
    return to_png(fig)
