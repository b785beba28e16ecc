"""The figure of the token-embedding PCA (knowledge internalization paper §7.1, Fig. 2): one
scatter panel per checkpoint, side by side (matplotlib, Agg backend).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, Sequence, Tuple

def plot_panels(panels: Sequence[Dict[str, Any]], out: str | os.PathLike,
                pairs: Sequence[Tuple[str, str]] = ()) -> None:
    """One scatter panel per checkpoint (``label``, ``words``, ``coords`` (W, 2), ``clusters`` (W,)),
    side by side, every word annotated, each pair joined by a dashed line; saved to ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 5), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        coords = panel["coords"]
        ax.scatter(coords[:, 0], coords[:, 1], c=panel["clusters"], cmap="viridis", s=28)
        for (x, y), w in zip(coords, panel["words"]):
            ax.annotate(w, (x, y), xytext=(3, 3), textcoords="offset points", fontsize=8)
        index = {w: i for i, w in enumerate(panel["words"])}
        for a, b in pairs:
            if a in index and b in index:
                p, q = coords[index[a]], coords[index[b]]
                ax.plot([p[0], q[0]], [p[1], q[1]], "--", color="grey", linewidth=0.8)
        ax.set_title(panel["label"])
        ax.set_xlabel("PC 1")
        ax.set_ylabel("PC 2")
    fig.tight_layout()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=150)
    plt.close(fig)
