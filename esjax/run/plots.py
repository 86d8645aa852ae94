"""PNG plots of a run: reward and accuracy against iterations and generated samples; accuracy heatmaps."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np


def pyplot():
    """``matplotlib.pyplot`` on the non-interactive Agg backend (imported on first use: plotting is optional)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_training(records: Sequence[dict], out_dir: str | Path) -> list[Path]:
    """``reward.png`` and ``accuracy.png``, each against iterations (left) and generated samples (right)."""
    plt = pyplot()
    out_dir = Path(out_dir)
    written = []
    for name, train_key, eval_prefix in (("reward", "reward_mean", "eval/%s/mean_reward"),
                                         ("accuracy", "accuracy", "eval/%s/accuracy")):
        fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
        for ax, x_key, label in ((axes[0], "iteration", "iteration"), (axes[1], "samples", "generated samples")):
            train = [(r[x_key], r[train_key]) for r in records if r.get(train_key) is not None and x_key in r]
            if train:
                ax.plot(*zip(*train), lw=1, alpha=0.7, label=f"train rollouts ({train_key})")
            for split in ("train", "test"):
                key = eval_prefix % split
                points = [(r[x_key], r[key]) for r in records if r.get(key) is not None and x_key in r]
                if points:
                    ax.plot(*zip(*points), marker="o", label=f"eval {split} (greedy)")
            ax.set_xlabel(label)
            ax.grid(alpha=0.3)
        axes[0].set_ylabel(name)
        axes[0].legend(fontsize=8)
        fig.tight_layout()
        path = out_dir / f"{name}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def plot_matrix(matrix: np.ndarray, row_labels: Sequence[str], col_labels: Sequence[str], title: str,
                path: str | Path, fmt: str = "{:.2f}") -> Path:
    """A heatmap with the value written in each cell (rows: after stage k; columns: evaluated task)."""
    plt = pyplot()
    matrix = np.asarray(matrix, float)
    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(col_labels), 1.2 + 0.7 * len(row_labels)))
    im = ax.imshow(matrix, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(col_labels)), col_labels, rotation=30, ha="right")
    ax.set_yticks(range(len(row_labels)), row_labels)
    for (i, j), v in np.ndenumerate(matrix):
        ax.text(j, i, fmt.format(v), ha="center", va="center", color="w" if v < np.nanmean(matrix) else "k", fontsize=8)
    ax.set_title(title)
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
