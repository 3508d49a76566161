"""What every figure shares: lines that stay apart when they overlap, legends outside the data, titles,
log ticks that read as numbers, and files written whole."""
import os
from pathlib import Path

COLORS = [f"C{i}" for i in range(10)]  # matplotlib's default cycle
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*", "<", ">"]
DASHES = ["-", "--", "-.", ":"]


def style(i: int) -> dict:
    """Line i's color, dash and hollow marker: neighbours differ in all three, so a curve drawn exactly over
    another (equal runs) still shows both; colors and dashes repeat together only every 20 lines, and the
    marker shifts then."""
    return {"color": COLORS[i % 10], "linestyle": DASHES[i % 4], "marker": MARKERS[(i + i // 20) % len(MARKERS)],
            "markersize": 5, "markerfacecolor": "none"}


def legend_outside(ax, **kw) -> None:
    """The legend to the right of the axes, where it hides no data."""
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, fontsize=7, frameon=False, **kw)


def readable_log_ticks(axis) -> None:
    """Ticks of a log axis as plain numbers (50, 100, 200) instead of powers of ten; the minor ones at 2 and 5
    are labelled only while the axis spans under two decades, where they do not crowd."""
    import math

    from matplotlib.ticker import FuncFormatter, LogLocator

    def minor(v, _):
        lo, hi = sorted(axis.get_view_interval())
        return f"{v:g}" if lo > 0 and math.log10(hi / lo) < 2 else ""

    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_locator(LogLocator(subs=(2.0, 5.0)))
    axis.set_minor_formatter(FuncFormatter(minor))


def save_png(fig, path) -> None:
    """Write through a temporary file so a reader never sees half a figure; the outside legend included."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    fig.savefig(tmp, dpi=120, format="png", bbox_inches="tight")
    os.replace(tmp, path)
