"""`con2 report`: one self-contained HTML page about a trained run (figures as PNG data URIs).

Sections: metrics of both scorers; ROC curves; score histograms (normal vs anomalous); a 2-D PCA of
the train / normal-test / anomalous-test representations in both contexts with a line joining
each sample's two contexts (the paper's Fig. 1); a grid of context augmentations and random views
(Fig. 5); the silhouette score of the context clusters (App. E.4).

Representations for the PCA and the silhouette score are g(x) and g(t_C(x)) under the
deterministic view (no augmentation), L2-normalised. The silhouette score uses the Euclidean
distance between those unit vectors (a monotone function of the cosine distance), labels = context.
Scores come from the run's scores.csv (written by `con2 evaluate`); when it is missing the run is
evaluated first, with `views` (default 40). A `views` other than the existing evaluation's is refused:
the page would show the other evaluation under the views asked for.
"""
from __future__ import annotations

import base64
import html
import io
import re
from pathlib import Path

import numpy as np
import torch

from .data.split import to_nchw
from .evaluate import METRICS_FILE, SCORES_FILE, evaluate_run, format_metrics, read_scores, scoring_view_config
from .files import read_json, write_text
from .metrics import binary_labels


def _subplots(nrows=1, ncols=1, figsize=(5, 4), **kw):
    """A figure on the Agg canvas without pyplot (no global backend switch, no display)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    return fig, fig.subplots(nrows, ncols, **kw)


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def roc_figure(labels: np.ndarray, scores: dict[str, np.ndarray]):
    from sklearn.metrics import roc_auc_score, roc_curve

    fig, ax = _subplots(figsize=(4.5, 4.2))
    for name, s in scores.items():
        fpr, tpr, _ = roc_curve(labels, s)
        ax.plot(fpr, tpr, label=f"S_{name.upper()} (AUROC {roc_auc_score(labels, s) * 100:.1f})")
    ax.plot([0, 1], [0, 1], ":", color="grey", lw=1)
    ax.set(xlabel="false-positive rate", ylabel="true-positive rate", title="ROC (anomaly = positive)")
    ax.legend(loc="lower right", fontsize=8)
    return fig


def histogram_figure(labels: np.ndarray, scores: dict[str, np.ndarray]):

    fig, axes = _subplots(1, len(scores), figsize=(4.5 * len(scores), 3.4), squeeze=False)
    for ax, (name, s) in zip(axes[0], scores.items()):
        bins = np.histogram_bin_edges(s, bins=40)
        ax.hist(s[labels == 0], bins=bins, alpha=0.6, density=True, label="normal")
        ax.hist(s[labels == 1], bins=bins, alpha=0.6, density=True, label="anomalous")
        ax.set(title=f"S_{name.upper()}", xlabel="anomaly score", ylabel="density")
        ax.legend(fontsize=8)
    return fig


def pca_figure(groups: dict[str, tuple[np.ndarray, np.ndarray]], context_label: str, max_lines: int = 60):
    """groups: name -> (g(x) [n, d], g(t_C(x)) [n, d]) unit rows. One PCA fitted on all of them."""
    from sklearn.decomposition import PCA

    allz = np.concatenate([np.concatenate(p) for p in groups.values()])
    pca = PCA(n_components=2).fit(allz)
    fig, ax = _subplots(figsize=(6.5, 5.5))
    colours = {"train": "tab:blue", "test normal": "tab:green", "test anomalous": "tab:red"}
    for name, (orig, ctx) in groups.items():
        a, b = pca.transform(orig), pca.transform(ctx)
        c = colours.get(name, None)
        k = min(len(a), max_lines)
        for i in range(k):
            ax.plot([a[i, 0], b[i, 0]], [a[i, 1], b[i, 1]], color=c, alpha=0.15, lw=0.7)
        ax.scatter(a[:, 0], a[:, 1], s=10, color=c, marker="o", label=f"{name}, original")
        ax.scatter(b[:, 0], b[:, 1], s=14, color=c, marker="x", label=f"{name}, {context_label}")
    ev = pca.explained_variance_ratio_ * 100
    ax.set(xlabel=f"PC 1 ({ev[0]:.0f} %)", ylabel=f"PC 2 ({ev[1]:.0f} %)",
           title="Representations g(x) in both contexts (lines join each sample's pair)")
    ax.legend(fontsize=7, ncol=2)
    return fig


def augmentation_figure(images: torch.Tensor, contexts, view_cfg, n_views: int = 3, seed: int = 0):
    """Rows: each context of a few train images, then random SimCLR views of each context."""

    from .data.views import apply_views, sample_view_params

    labels = contexts.labels() if contexts is not None else ["original"]
    rows = []
    for k, lab in enumerate(labels):
        x = contexts.apply(k, images) if contexts is not None else images
        rows.append((lab, x.float() / 255))
        g = torch.Generator().manual_seed(seed + k)
        for v in range(n_views):
            p = sample_view_params(len(x), x.shape[2], x.shape[3], view_cfg, g, x.device)
            rows.append((f"{lab}, view {v + 1}", apply_views(x, p, view_cfg) * view_cfg.std + view_cfg.mean))
    n = images.shape[0]
    fig, axes = _subplots(len(rows), n, figsize=(1.1 * n, 1.15 * len(rows)), squeeze=False)
    for r, (lab, x) in enumerate(rows):
        for i in range(n):
            img = x[i].clamp(0, 1).permute(1, 2, 0).numpy()
            ax = axes[r, i]
            ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_ylabel(lab, fontsize=7, rotation=0, ha="right", va="center")
    fig.suptitle("Context augmentations and random test-time views", fontsize=9)
    return fig


def _subsample(images: np.ndarray, n: int, seed: int) -> np.ndarray:
    if len(images) <= n:
        return images
    return images[np.sort(np.random.default_rng(seed).choice(len(images), n, replace=False))]


def _metrics_table(metrics: dict, run_dir: Path) -> str:
    try:
        return format_metrics(metrics)
    except (KeyError, TypeError, ValueError) as exc:  # a hand-edited or damaged file
        raise ValueError(f"{run_dir / METRICS_FILE} is damaged ({type(exc).__name__}: {exc}); rerun "
                         f"`con2 evaluate --run {run_dir}`") from None


def build_report(run_dir: str | Path, out: str | Path | None = None, views: int | None = None, device: str = "auto",
                 max_points: int = 300, seed: int = 0, progress: bool = True) -> Path:
    """Write the run's report.html (or `out`) and return its path. views: of the evaluation shown,
    None for the run's own (40 when it has none yet); another count than the run's is refused."""
    from .data import ContextSet
    from .run import load_run, run_split

    run_dir = Path(run_dir)
    _check_views_shown(run_dir, views)
    cfg, model = load_run(run_dir, device=device)
    split = run_split(run_dir, cfg)
    labels, scores, metrics = _evaluation(run_dir, split, views, device, progress)
    # contexts: the run's; the SimCLR baseline is shown with the context named in its config
    contexts = ContextSet(cfg.context)
    # the test-time views of the evaluation shown (its crop range, e.g. CSI's 0.54), for the view grid
    view_cfg = scoring_view_config(cfg, split, metrics.get("crop_scale"))
    groups = _context_pairs(model, split, view_cfg, contexts, max_points, seed)
    z = np.concatenate([np.concatenate([o for o, _ in groups.values()]), np.concatenate([c for _, c in groups.values()])])
    silhouette = _context_silhouette(z)

    aug_images = to_nchw(_subsample(split.train, 8, seed))
    figures = [
        ("ROC curves", roc_figure(labels, scores)),
        ("Score histograms", histogram_figure(labels, scores)),
        ("Representations in both contexts (PCA)", pca_figure(groups, contexts.labels()[1])),
        ("Context augmentations", augmentation_figure(aug_images.contiguous(), contexts, view_cfg)),
    ]
    body = [f"<h1>con2 report: {html.escape(str(run_dir))}</h1>",
            f"<p>{html.escape(split.summary())}. Context <b>{html.escape(cfg.context)}</b>, objective "
            f"<b>{html.escape(cfg.objective)}</b>, {cfg.epochs} epochs, seed {cfg.seed}.</p>",
            _metrics_section(run_dir, metrics, view_cfg),
            f"<h2>Context clusters</h2><p>Silhouette score of [g(x); g(t_C(x))] with labels = context "
            f"({len(z)} representations, unit vectors, Euclidean): <b id='silhouette'>{silhouette:.3f}</b> "
            "(&gt; 0: context clusters present; App. E.4).</p>"]
    for title, fig in figures:
        body.append(f"<h2>{html.escape(title)}</h2><img alt='{html.escape(title)}' src='{_png(fig)}'>")
    body.append(f"<h2>Configuration</h2><pre>{html.escape(cfg.to_json())}</pre>")
    page = ("<!DOCTYPE html><html><head><meta charset='utf-8'><title>con2 report</title><style>"
            "body{font-family:sans-serif;max-width:1000px;margin:2em auto}img{max-width:100%}"
            "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px}</style></head><body>"
            + "\n".join(body) + "</body></html>")
    out = Path(out) if out else run_dir / "report.html"
    write_text(out, _displayable(page))
    return out


def _check_views_shown(run_dir: Path, views: int | None) -> None:
    """Refuse --views other than those of the run's evaluation: the page would show that one."""
    if views is None or not (run_dir / SCORES_FILE).exists():
        return
    done = read_json(run_dir / METRICS_FILE).get("views") if (run_dir / METRICS_FILE).exists() else None
    if done != views:
        was = f"evaluated with --views {done}" if done is not None else f"evaluated ({METRICS_FILE} is missing)"
        raise ValueError(f"{run_dir} was {was}, not --views {views}: run `con2 evaluate --run {run_dir} "
                         f"--views {views}` first, or drop --views to report the run's evaluation")


def _evaluation(run_dir: Path, split, views: int | None, device: str, progress: bool):
    """(test labels, scores, metrics) of the run's evaluation, made first (40 views unless `views`)
    when the run has none; {} for metrics when only the scores are there."""
    if not (run_dir / SCORES_FILE).exists():
        evaluate_run(run_dir, views=40 if views is None else views, device=device, split=split, progress=progress)
    labels, scores = read_scores(run_dir)
    if len(labels) != len(split.test):
        raise ValueError(f"{run_dir}/{SCORES_FILE} has {len(labels)} rows but the test split has "
                         f"{len(split.test)} images; rerun `con2 evaluate --run {run_dir}`")
    return labels, scores, read_json(run_dir / METRICS_FILE) if (run_dir / METRICS_FILE).exists() else {}


def _context_pairs(model, split, view_cfg, contexts, max_points: int, seed: int) -> dict:
    """{group: (unit representations of the images, of their context transforms)} for up to
    `max_points` training, test-normal and test-anomalous images each."""
    from .scoring import View, ViewEncoder, unit_rows

    encoder = ViewEncoder(model.encode, view_cfg, contexts, [View(0, 0, False), View(1, 1, False)],
                          device=next(model.parameters()).device)

    def pair(images: np.ndarray):
        x = to_nchw(images)
        return (unit_rows(encoder.encode(x, encoder.plan[0], 0).cpu()).numpy(),
                unit_rows(encoder.encode(x, encoder.plan[1], 0).cpu()).numpy())

    test_labels = binary_labels(split.test_labels, f"{split.name}: test labels")
    return {"train": pair(_subsample(split.train, max_points, seed)),
            "test normal": pair(_subsample(split.test[test_labels == 0], max_points, seed)),
            "test anomalous": pair(_subsample(split.test[test_labels == 1], max_points, seed))}


def _context_silhouette(z: np.ndarray) -> float:
    """Silhouette of the representations (first half: the images, second: their contexts) labelled
    by context: > 0 when the contexts form clusters (App. E.4)."""
    from sklearn.metrics import silhouette_score

    return float(silhouette_score(z, np.repeat([0, 1], len(z) // 2), metric="euclidean"))


def _metrics_section(run_dir: Path, metrics: dict, view_cfg) -> str:
    """The page's metrics: the evaluation's settings and table, or why there are none."""
    if not metrics:
        return (f"<h2>Metrics</h2><p>{METRICS_FILE} is missing from the run (the plots use "
                f"{SCORES_FILE}); run <code>con2 evaluate --run {html.escape(str(run_dir))}</code></p>")
    crops = (f"crop area range: {html.escape(str(metrics.get('crop_scale', list(view_cfg.scale))))}"
             if metrics.get("views") else "one plain view of each image, no crops")
    return (f"<h2>Metrics</h2><p>test-time views: {metrics.get('views')}, aggregate: "
            f"{html.escape(str(metrics.get('aggregate')))}, {crops}</p>"
            + _md_table_html(_metrics_table(metrics, run_dir)))


def _displayable(text: str) -> str:
    """`text` with the bytes of a name that is not UTF-8 (held as lone surrogates, PEP 383) shown as
    \\xNN, as `ls -b` shows them: a page is read, not parsed back, and a browser shows raw bytes as U+FFFD."""
    return re.sub("[\ud800-\udfff]", lambda m: f"\\x{ord(m[0]) - 0xdc00:02x}" if 0xdc80 <= ord(m[0]) <= 0xdcff
                  else f"\\u{ord(m[0]):04x}", text)


def _md_table_html(md: str) -> str:
    rows = [r.strip("|").split("|") for r in md.splitlines() if not r.startswith("|---")]
    head, *rest = rows
    h = "".join(f"<th>{html.escape(c.strip())}</th>" for c in head)
    b = "".join("<tr>" + "".join(f"<td>{html.escape(c.strip())}</td>" for c in r) + "</tr>" for r in rest)
    return f"<table><tr>{h}</tr>{b}</table>"
