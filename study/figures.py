"""PNG figures of a study report, in the style of the paper's Fig. 2 and Fig. 3.

Pure drawing: every function takes arrays and labels, writes one PNG and returns its path.
Figures are built on ``matplotlib.figure.Figure`` directly (no pyplot global state, no display
backend), so reports render the same in a terminal, a Ray worker or CI.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from study.results import ordering_key, reps_of
from trainables.metrics import bootstrap_ci

DPI = 90
PANEL = (3.4, 2.6)
"""Inches per panel (width, height)."""


@dataclass(frozen=True)
class Band:
    """A replicate mean curve with its 95% bootstrap CI at every evaluation point."""

    x: np.ndarray
    mean: np.ndarray
    low: np.ndarray
    high: np.ndarray


@dataclass(frozen=True)
class AxisPoint:
    """One trial in a parameter-versus-objective plot."""

    model: str
    ordering: str
    param: str
    value: float
    objective: float | None
    """None for a diverged trial (drawn as a cross on the top edge)."""
    paper: bool
    best: bool


def band(samples: np.ndarray, values: np.ndarray) -> Band:
    """Mean and 95% bootstrap CI over replicates of ``values`` [R, E] at each point.

    Replicates with a missing (NaN) value at a point are left out there.
    """
    means, lows, highs = [], [], []
    for column in np.asarray(values, dtype=np.float64).T:
        finite = column[np.isfinite(column)]
        if finite.size == 0:
            means.append(math.nan)
            lows.append(math.nan)
            highs.append(math.nan)
            continue
        low, high = bootstrap_ci(finite)
        means.append(float(finite.mean()))
        lows.append(low)
        highs.append(high)
    return Band(np.asarray(samples, float), np.array(means), np.array(lows), np.array(highs))


def ordering_colors(orderings: Sequence[str]) -> dict[str, tuple[float, ...] | str]:
    """random black, reps-k from dark blue to green along viridis by k, others grey."""
    from matplotlib import colormaps

    reps = sorted((reps_of(o), o) for o in orderings if reps_of(o) is not None)
    colors: dict[str, tuple[float, ...] | str] = {}
    for i, (_, name) in enumerate(reps):
        colors[name] = colormaps["viridis"](0.1 + 0.65 * i / max(len(reps) - 1, 1))
    for name in orderings:
        colors.setdefault(name, "black" if name == "random" else "grey")
    return colors


def model_colors(models: Sequence[str]) -> dict[str, tuple[float, ...]]:
    """One tab10 colour per model, in the given order."""
    from matplotlib import colormaps

    return {m: colormaps["tab10"](i % 10) for i, m in enumerate(models)}


def learning_curves(
    path: Path, title: str, panels: Mapping[str, Mapping[str, tuple[Band, Band | None]]]
) -> Path:
    """Fig. 2 style: one column per model, one line per ordering, CI bands; rows loss/accuracy.

    Args:
        path: PNG to write.
        title: figure title.
        panels: model -> ordering -> (test loss band, test accuracy band or None).
    """
    models = list(panels)
    orderings = sorted({o for lines in panels.values() for o in lines}, key=ordering_key)
    colors = ordering_colors(orderings)
    with_accuracy = any(acc is not None for lines in panels.values() for _, acc in lines.values())
    rows = 2 if with_accuracy else 1
    figure = _figure(rows, len(models))
    axes = _grid(figure, rows, len(models))
    for column, model in enumerate(models):
        for ordering in sorted(panels[model], key=ordering_key):
            loss, accuracy = panels[model][ordering]
            _draw_band(axes[0][column], loss, colors[ordering], ordering)
            if with_accuracy and accuracy is not None:
                _draw_band(axes[1][column], accuracy, colors[ordering], ordering)
        axes[0][column].set_title(model)
        axes[0][column].set_ylabel("test loss")
        if with_accuracy:
            axes[1][column].set_ylabel("test accuracy")
        axes[rows - 1][column].set_xlabel("samples seen")
    _share_y(axes)
    axes[0][-1].legend(fontsize=7, frameon=False)
    return _save(figure, path, title)


def model_curves(
    path: Path, title: str, panels: Mapping[str, Mapping[str, Band]], ylabel: str
) -> Path:
    """Fig. 3D style: one panel per ordering, one line per model (e.g. reconstruction error)."""
    names = list(panels)
    models = list(dict.fromkeys(m for lines in panels.values() for m in lines))
    colors = model_colors(models)
    figure = _figure(1, len(names))
    axes = _grid(figure, 1, len(names))[0]
    for ax, name in zip(axes, names, strict=True):
        for model, curve in panels[name].items():
            _draw_band(ax, curve, colors[model], model)
        ax.set_title(name)
        ax.set_xlabel("samples seen")
        ax.set_ylabel(ylabel)
    axes[-1].legend(fontsize=7, frameon=False)
    return _save(figure, path, title)


def timescale_figure(
    path: Path,
    title: str,
    bars: Mapping[str, tuple[float, float, float]],
    matrices: Mapping[str, np.ndarray],
) -> Path:
    """Fig. 3E style: selectivity bars (mean, 95% CI) and each model's unit x latent r^2 matrix.

    Args:
        bars: model -> (mean, ci_low, ci_high) of timescale selectivity.
        matrices: model -> [G, G] mean r^2 of unit group g (rows) with latent k (columns).
    """
    models = list(bars)
    columns = 1 + len(matrices)
    figure = _figure(1, columns)
    axes = _grid(figure, 1, columns)[0]
    means = np.array([bars[m][0] for m in models])
    errors = np.array(
        [[bars[m][0] - bars[m][1] for m in models], [bars[m][2] - bars[m][0] for m in models]]
    )
    colors = model_colors(models)
    axes[0].bar(
        range(len(models)), means, yerr=errors, color=[colors[m] for m in models], capsize=3
    )
    axes[0].set_xticks(range(len(models)), models, rotation=35, ha="right", fontsize=7)
    axes[0].axhline(0.0, color="black", linewidth=0.6)
    axes[0].set_ylabel("timescale selectivity")
    for ax, (model, matrix) in zip(axes[1:], matrices.items(), strict=True):
        groups = matrix.shape[0]
        image = ax.imshow(matrix, vmin=0.0, vmax=max(float(np.nanmax(matrix)), 1e-9), cmap="magma")
        for g in range(groups):
            for k in range(groups):
                ax.text(
                    k,
                    g,
                    f"{matrix[g, k]:.2f}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if matrix[g, k] < 0.6 * np.nanmax(matrix) else "black",
                )
        ax.set_xticks(range(groups), [f"latent {k}" for k in range(groups)], fontsize=7)
        ax.set_yticks(range(groups), [f"units {g}" for g in range(groups)], fontsize=7)
        ax.set_title(f"{model}: r$^2$", fontsize=9)
        figure.colorbar(image, ax=ax, fraction=0.046)
    return _save(figure, path, title)


def axis_plot(
    path: Path,
    title: str,
    params: Sequence[str],
    models: Sequence[str],
    points: Sequence[AxisPoint],
    bounds: Mapping[tuple[str, str], tuple[float, float, bool]],
    objective: str,
) -> Path:
    """Playbook axis plots: objective versus each searched parameter, one panel per model.

    Diverged trials are red crosses on the panel's top edge; the paper setting is a star, each
    cell's best trial is ringed; dashed lines mark the search bounds (log axis for log params).
    """
    orderings = sorted({p.ordering for p in points}, key=ordering_key)
    colors = ordering_colors(orderings)
    figure = _figure(len(params), len(models))
    axes = _grid(figure, len(params), len(models))
    for row, param in enumerate(params):
        for column, model in enumerate(models):
            ax = axes[row][column]
            mine = [p for p in points if p.param == param and p.model == model]
            if not mine:
                ax.set_axis_off()
                continue
            finite = [p.objective for p in mine if p.objective is not None]
            top = max(finite) if finite else 1.0
            bottom = min(finite) if finite else 0.0
            ceiling = top + 0.08 * (top - bottom or abs(top) or 1.0)
            for p in mine:
                if p.objective is None:
                    ax.scatter(p.value, ceiling, marker="x", color="red", s=28, zorder=3)
                    continue
                ax.scatter(
                    p.value,
                    p.objective,
                    color=colors[p.ordering],
                    s=14,
                    marker="*" if p.paper else "o",
                    zorder=2,
                )
                if p.best:
                    ax.scatter(
                        p.value,
                        p.objective,
                        facecolors="none",
                        edgecolors="black",
                        s=90,
                        linewidths=1.0,
                        zorder=4,
                    )
            low, high, log = bounds.get((model, param), (math.nan, math.nan, False))
            if log:
                ax.set_xscale("log")
            for bound in (low, high):
                if math.isfinite(bound):
                    ax.axvline(bound, color="grey", linestyle="--", linewidth=0.7)
            ax.set_title(model, fontsize=9)
            ax.set_xlabel(param)
            ax.set_ylabel(objective if column == 0 else "")
    handles = [_legend_dot(figure, colors[o], o) for o in orderings] + [
        _legend_dot(figure, "red", "diverged", "x"),
        _legend_dot(figure, "grey", "paper", "*"),
    ]
    shown = [ax for row in axes for ax in row if ax.axison]
    if shown:
        shown[0].legend(handles=handles, fontsize=6, frameon=False)
    return _save(figure, path, title)


def isolation_plot(
    path: Path,
    title: str,
    params: Sequence[str],
    models: Sequence[str],
    points: Sequence[AxisPoint],
    bounds: Mapping[tuple[str, str], tuple[float, float, bool]],
    objective: str,
    direction: str,
    bins: int = 5,
) -> Path:
    """Playbook isolation plots: the best objective per bin of a scientific parameter.

    One panel per (parameter, model), one line per ordering: within each bin of the parameter's
    range, the best feasible trial (all other hyperparameters optimised away by the search).
    """
    orderings = sorted({p.ordering for p in points}, key=ordering_key)
    colors = ordering_colors(orderings)
    figure = _figure(len(params), len(models))
    axes = _grid(figure, len(params), len(models))
    pick = min if direction == "min" else max
    for row, param in enumerate(params):
        for column, model in enumerate(models):
            ax = axes[row][column]
            mine = [
                p
                for p in points
                if p.param == param and p.model == model and p.objective is not None
            ]
            if not mine:
                ax.set_axis_off()
                continue
            low, high, log = bounds.get((model, param), (math.nan, math.nan, False))
            values = np.array([p.value for p in mine])
            low = low if math.isfinite(low) else float(values.min())
            high = high if math.isfinite(high) else float(values.max())
            edges = (
                np.geomspace(low, high, bins + 1)
                if log and low > 0
                else np.linspace(low, high, bins + 1)
            )
            centres = (
                np.sqrt(edges[1:] * edges[:-1])
                if log and low > 0
                else (edges[1:] + edges[:-1]) / 2
            )
            for ordering in orderings:
                ys = []
                for b in range(bins):
                    inside = [
                        p.objective
                        for p in mine
                        if p.ordering == ordering
                        and edges[b] <= p.value <= edges[b + 1]
                        and (b == bins - 1 or p.value < edges[b + 1])
                    ]
                    ys.append(pick(inside) if inside else math.nan)
                if np.isfinite(ys).any():
                    ax.plot(
                        centres,
                        ys,
                        marker="o",
                        markersize=3,
                        color=colors[ordering],
                        label=ordering,
                    )
            if log:
                ax.set_xscale("log")
            ax.set_title(model, fontsize=9)
            ax.set_xlabel(f"{param} (bin)")
            ax.set_ylabel(f"best {objective}" if column == 0 else "")
    shown = [ax for row in axes for ax in row if ax.axison and ax.has_data()]
    if shown:
        shown[0].legend(fontsize=7, frameon=False)
    return _save(figure, path, title)


def best_trials(
    path: Path,
    title: str,
    grid: Mapping[tuple[str, str], Sequence[tuple[str, Band]]],
) -> Path:
    """Test-loss curves of each cell's best trials (rows: models, columns: orderings)."""
    models = list(dict.fromkeys(m for m, _ in grid))
    orderings = sorted({o for _, o in grid}, key=ordering_key)
    figure = _figure(len(models), len(orderings))
    axes = _grid(figure, len(models), len(orderings))
    from matplotlib import colormaps

    for row, model in enumerate(models):
        for column, ordering in enumerate(orderings):
            ax = axes[row][column]
            curves = grid.get((model, ordering), [])
            if not curves:
                ax.set_axis_off()
                continue
            for rank, (label, curve) in enumerate(curves):
                _draw_band(ax, curve, colormaps["plasma"](0.8 * rank / max(len(curves), 1)), label)
            ax.set_title(f"{model} / {ordering}", fontsize=8)
            ax.legend(fontsize=6, frameon=False)
            if row == len(models) - 1:
                ax.set_xlabel("samples seen")
            if column == 0:
                ax.set_ylabel("test loss")
    _share_y(axes)
    return _save(figure, path, title)


# -- implementation ----------------------------------------------------------------------------
def _figure(rows: int, columns: int) -> Figure:
    return Figure(figsize=(PANEL[0] * max(columns, 1), PANEL[1] * max(rows, 1) + 0.5), dpi=DPI)


def _grid(figure: Figure, rows: int, columns: int) -> list[list]:
    axes = figure.subplots(max(rows, 1), max(columns, 1), squeeze=False)
    return [list(row) for row in axes]


def _draw_band(ax: object, curve: Band, color: object, label: str) -> None:
    ax.plot(curve.x, curve.mean, color=color, linewidth=1.2, label=label)  # type: ignore[attr-defined]
    ax.fill_between(curve.x, curve.low, curve.high, color=color, alpha=0.2, linewidth=0)  # type: ignore[attr-defined]


def _share_y(axes: list[list]) -> None:
    """Same y-limits along each row (panels of one row compare models)."""
    for row in axes:
        shown = [ax for ax in row if ax.axison and ax.has_data()]
        if len(shown) < 2:
            continue
        lows, highs = zip(*(ax.get_ylim() for ax in shown), strict=True)
        for ax in shown:
            ax.set_ylim(min(lows), max(highs))


def _legend_dot(figure: Figure, color: object, label: str, marker: str = "o") -> object:
    from matplotlib.lines import Line2D

    return Line2D([], [], color=color, marker=marker, linestyle="", label=label)


def _save(figure: Figure, path: Path, title: str) -> Path:
    width = figure.get_figwidth()
    figure.suptitle(textwrap.fill(title, max(40, int(width * 14))), fontsize=9)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=DPI)
    return path
