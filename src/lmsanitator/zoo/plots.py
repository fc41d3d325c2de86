"""The two pictures that explain one model's verdict.

* loops: every fuzz loop's per-epoch distance and diversity against T_L and T_div (a backdoor shows
  as a loop that crosses both; a clean model's loops stay above T_div);
* pvs: the sign pattern of each found PV (+ dark, - light), one row per PV.
"""

from __future__ import annotations

from pathlib import Path

from lmsanitator.core.io import atomic_file


def _pyplot():
    import matplotlib  # noqa: PLC0415  heavy: matplotlib, only when a zoo writes its page

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415  heavy: see above

    return plt


def _save(fig, path: Path) -> None:
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=80)


def plot_loops(report: dict, path: Path, title: str) -> None:
    plt = _pyplot()
    th = report.get("thresholds", {})
    fig, (ax_d, ax_v) = plt.subplots(1, 2, figsize=(9, 3.2))
    for c in report.get("candidates", []):
        style = (
            dict(color="crimson", lw=2, zorder=3)
            if c.get("accepted")
            else dict(color="grey", lw=0.8, alpha=0.6)
        )
        epochs = range(1, len(c.get("distance", [])) + 1)
        ax_d.plot(epochs, c.get("distance", []), **style)
        ax_v.plot(range(1, len(c.get("diversity", [])) + 1), c.get("diversity", []), **style)
    for ax, key, label, name in (
        (ax_d, "t_l", "distance loss", "T_L"),
        (ax_v, "t_div", "diversity loss", "T_div"),
    ):
        if th.get(key) is not None:
            ax.axhline(float(th[key]), color="black", ls="--", lw=1, label=name)
            ax.legend(loc="upper right", fontsize=8)
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
    fig.suptitle(f"{title}: {report.get('verdict')} ({report.get('loops_run')} fuzz loops; accepted in red)")
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def plot_pvs(report: dict, path: Path, title: str) -> None:
    plt = _pyplot()
    pvs = report.get("pvs") or []
    fig, ax = plt.subplots(figsize=(9, 1.8 + 0.3 * len(pvs)))
    if pvs:
        ax.imshow(
            [[1.0 if x >= 0 else 0.0 for x in v] for v in pvs],
            aspect="auto",
            cmap="Greys",
            interpolation="nearest",
        )
        ax.set_yticks(range(len(pvs)), [f"PV {i}" for i in range(len(pvs))])
    ax.set_xlabel("output dimension (sign: + dark, - light)")
    ax.set_title(f"{title}: {len(pvs)} predefined output vector(s) found")
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
