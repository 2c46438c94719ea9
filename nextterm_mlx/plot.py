"""Accuracy by bucket as a picture (needs the `plot` extra: matplotlib)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .errors import UserError


def check_can_plot(path: Path) -> None:
    """Refuse --plot before a long eval rather than after it."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UserError("--plot needs matplotlib; pip install 'nextterm-mlx[plot]'") from None
    if not Path(path).parent.is_dir():
        raise UserError(f"the folder of --plot {path} does not exist; create it or choose another path")


def plot_accuracy(summary: dict[str, Any], path: Path, title: str) -> None:
    check_can_plot(path)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    panels = (("by_answer_digits", "digits in the answer"), ("by_given_terms", "terms given"))
    figure, axes = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    for axis, (key, label) in zip(axes, panels):
        buckets = summary[key]
        axis.bar(list(buckets), [b["accuracy"] for b in buckets.values()], color="#4C72B0")
        for x, bucket in enumerate(buckets.values()):
            axis.annotate(f"n={bucket['n']}", (x, bucket["accuracy"]), ha="center", va="bottom", fontsize=7)
        axis.set_xlabel(label)
        axis.set_ylabel("accuracy")
        axis.set_ylim(0, 1.05)
    low, high = summary["ci95"]
    figure.suptitle(f"{title}: {summary['accuracy']:.1%} of {summary['sequences']} (95% CI {low:.1%}-{high:.1%})")
    figure.savefig(path, dpi=120)
    plt.close(figure)
