"""An island timeline (Gantt chart): each island's inner steps, waits for the slowest, link time and outer
applies (and an asynchronous scheme's arrivals and pulls), from the events of `python -m jaximus.inspect
--timeline` (jaximus/clock.py, jaximus/asynchrony.py)."""
from analysis.plots import legend_outside, save_png

COLORS = {"compute": "C0", "wait": "0.85", "comm": "C3", "pull": "C2"}
TICKS = {"apply": ("k", "-", "outer apply"), "arrive": ("C1", ":", "arrival")}  # instants: a tick each


def plot_gantt(events: list[dict], path, steps: int, title: str) -> None:
    """One row per island over its first `steps` steps: computing, waiting, on the link; a tick per apply."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [e for e in events if e["step"] <= steps]
    islands = sorted({e["island"] for e in shown})
    fig, ax = plt.subplots(figsize=(9, 0.5 * len(islands) + 1.5))
    labelled = set()
    for e in shown:
        y = e["island"]
        if e["kind"] in TICKS:
            color, style, label = TICKS[e["kind"]]
            ax.plot([e["start_s"]] * 2, [y - 0.45, y + 0.45], color=color, linestyle=style, linewidth=1.2,
                    label=None if e["kind"] in labelled else label)
        else:
            ax.barh(y, e["end_s"] - e["start_s"], left=e["start_s"], height=0.7, color=COLORS[e["kind"]],
                    edgecolor="white", linewidth=0.3, label=None if e["kind"] in labelled else e["kind"])
        labelled.add(e["kind"])
    ax.set_yticks(islands, [f"island {r}" for r in islands])
    ax.invert_yaxis()
    ax.set_xlabel("simulated seconds")
    ax.set_title(f"Island timeline, first {steps} steps: {title}", fontsize=9)
    legend_outside(ax)
    save_png(fig, path)
