"""``study report``: a study's results, figures and claims check, from its MLflow store.

:func:`build_report` reads a finished or partly finished study (``study.results``), and writes to
an output folder ``report.md``, ``report.json`` and PNG figures (``figures/``); the same files are
logged as artifacts of the study's one summary run (tag ``study_summary=true``; a later report
updates that run instead of adding another, and its artifacts are then exactly the new report's).
A bad study name or store fails before any file is written. Contents, conclusions first:

- the claims check (``study.claims``): each claim's seed-paired effect, 95% CI and verdict at the
  paper setting and at each cell's tuned setting, per setting (data set, or data set and
  variant, labelled with what the variant overrides); when the study has several settings, it
  ends with a claims matrix (claims x settings, a verdict and effect size in each entry);
- per cell: paper-setting and tuned results (objective mean and 95% CI over replicates, from the
  stored per-replicate values), best hyperparameters, trials finished / failed / diverged;
- seed-paired comparisons between conditions (each ordering against random, each model against
  feedforward);
- Fig. 2 style learning curves (paper and tuned) and, for autoencoders, Fig. 3 style
  reconstruction curves, timescale selectivity and the unit x latent r^2 matrix;
- the Tuning Playbook checks (``study.playbook``): importance, near-bound warnings, infeasible
  fraction, seed versus configuration spread, axis and isolation plots, best trials' curves.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from study import claims as claims_module
from study import figures
from study.claims import CLAIMS, EFFECTS, ClaimRow, Condition, evaluate, improvement
from study.playbook import CellCheck, check_cell, role, search_distributions
from study.results import (
    SUMMARY_TAG,
    CellRecord,
    StudyResults,
    TrialRecord,
    load_study,
    model_key,
    ordering_key,
)
from study.spec import default_tracking_uri, project_root
from trainables.metrics import bootstrap_ci

BASES = ("paper", "tuned")
TOP_K = 3
"""Best trials per cell whose curves the report draws."""
PARAM_ORDER = ("leak", "learning_rate", "reset_threshold")
"""Axis-plot rows first (the parameters the paper's claims are about), then any others."""


@dataclass
class Report:
    """What :func:`build_report` wrote."""

    out: Path
    markdown: Path
    json: Path
    figures: list[Path]
    payload: dict[str, Any]
    """The contents of ``report.json``."""
    summary_run_id: str | None
    """The MLflow summary run holding the report (None when not logged)."""


def default_out(name: str) -> Path:
    """``<project root>/reports/<name>``."""
    return project_root() / "reports" / name


def build_report(
    name: str,
    tracking_uri: str | None = None,
    out: str | Path | None = None,
    optuna_storage: str | None = None,
    log_to_mlflow: bool = True,
) -> Report:
    """Write the report of study ``name`` and log it to the study's summary run.

    Args:
        name: the study (its MLflow experiment name).
        tracking_uri: any MLflow tracking URI; default: the embedded ``mlruns/mlflow.db``.
        out: output folder; default ``reports/<name>`` under the project root.
        optuna_storage: an Optuna RDB URL holding the cells' studies (``<name>::<cell>``) to
            compute importance from; default: rebuilt from the MLflow runs.
        log_to_mlflow: also log the files as artifacts of the study's summary run.

    Returns:
        The paths written and the JSON payload.

    Raises:
        SpecError: the store has no study of that name (or there is no store at a SQLite
            path); no file or folder is written then.
    """
    uri = tracking_uri or default_tracking_uri()
    # Reading the study validates the name and the store: nothing is created before that.
    study = load_study(name, uri, top_k=TOP_K)
    folder = Path(out) if out is not None else default_out(name)
    figure_dir = folder / "figures"
    figure_dir.mkdir(parents=True, exist_ok=True)
    for stale in figure_dir.glob("*.png"):
        stale.unlink()
    distributions = {
        cell.key: search_distributions(study.study_spec, cell.model, cell.variant)
        for cell in study.cells
    }
    cell_rows = [cell_result(study, cell) for cell in study.cells]
    claim_rows = claims_for(study)
    comparisons = comparisons_for(study)
    checks = [
        check_cell(study, cell, distributions[cell.key], optuna_storage) for cell in study.cells
    ]
    drawn = draw_figures(study, figure_dir, distributions)
    matrix = claims_matrix(claim_rows) if len(study.groups) > 1 or study.has_variants else None
    payload = {
        "study": study.name,
        "tracking_uri": uri,
        "experiment_id": study.experiment_id,
        "generated_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "objective": study.objective,
        "direction": study.direction,
        "settings": settings_for(study),
        "trials": _trial_counts(study),
        "cells": cell_rows,
        "claims": [row.to_json() for row in claim_rows],
        "claims_matrix": matrix,
        "comparisons": comparisons,
        "tuning": [asdict(check) for check in checks],
        "figures": [str(p.relative_to(folder)) for p in drawn],
        "definitions": {
            "sign": "positive effect = in the claimed direction",
            "verdict": "CI excludes 0 on the positive side: holds; on the negative side: "
            "reversed; otherwise: not significant; missing cells: not tested",
            "effects": {k: v.format(m=study.objective) for k, v in EFFECTS.items()},
            "ci": "95% percentile bootstrap over seed-paired replicates (2000 resamples)",
        },
    }
    json_path = folder / "report.json"
    json_path.write_text(json.dumps(_clean(payload), indent=2, allow_nan=False))
    md_path = folder / "report.md"
    md_path.write_text(markdown(study, payload, claim_rows, checks, drawn, folder))
    run_id = (
        log_summary_run(study, folder, [md_path, json_path], figure_dir) if log_to_mlflow else None
    )
    return Report(folder, md_path, json_path, drawn, payload, run_id)


# ---------------------------------------------------------------------------------------------
# Numbers
# ---------------------------------------------------------------------------------------------
def trial_result(trial: TrialRecord | None, objective: str) -> dict[str, Any] | None:
    """Objective mean and 95% CI over a trial's replicates.

    From the stored per-replicate values (``curves.json``) when present (the bootstrap is the
    engine's, so it equals the logged CI), else from the run's logged metrics.
    """
    if trial is None:
        return None
    out: dict[str, Any] = {
        "trial": trial.number,
        "run_id": trial.run_id,
        "diverged": trial.diverged,
        "params": dict(trial.searched),
    }
    if trial.diverged:
        return {
            **out,
            "objective": None,
            "ci_low": None,
            "ci_high": None,
            "replicates": 0,
            "source": "diverged",
        }
    curves = trial.curves
    if curves is not None and objective in curves.per_replicate:
        values = curves.per_replicate[objective]
        low, high = bootstrap_ci(values)
        return {
            **out,
            "objective": float(values.mean()),
            "ci_low": low,
            "ci_high": high,
            "replicates": int(values.size),
            "source": "curves.json",
        }
    return {
        **out,
        "objective": trial.objective,
        "ci_low": None,
        "ci_high": None,
        "replicates": None,
        "source": "run metric",
    }


def cell_result(study: StudyResults, cell: CellRecord) -> dict[str, Any]:
    """One row of the cells table: counts, paper and tuned results, best parameters."""
    return {
        "cell": cell.key,
        "setting": cell.group,
        "dataset": cell.dataset,
        "variant": cell.variant,
        "model": cell.model,
        "ordering": cell.ordering,
        "trials": {
            "budget": study.cell_budget(cell.key),
            "finished": cell.count("finished"),
            "failed": cell.count("failed"),
            "diverged": cell.diverged,
            "pruned": cell.count("pruned"),
            "running": cell.count("running"),
        },
        "paper": trial_result(cell.paper, study.objective),
        "tuned": trial_result(cell.best, study.objective),
        "best_params": dict(cell.best.searched) if cell.best else {},
    }


def condition(trial: TrialRecord | None) -> Condition:
    """The per-replicate values the claims compare, for one cell on one basis."""
    if trial is None:
        return Condition(None, None, "no finished trial")
    if trial.diverged:
        return Condition(None, trial.seed, f"trial #{trial.number} diverged")
    if trial.curves is None or not trial.curves.per_replicate:
        return Condition(None, trial.seed, f"trial #{trial.number} has no per-replicate values")
    return Condition(trial.curves.per_replicate, trial.seed)


def conditions_for(cells: list[CellRecord], basis: str) -> dict[tuple[str, str], Condition]:
    """(model, ordering) -> condition for the cells of one setting on ``basis``."""
    out = {}
    for cell in cells:
        found = condition(cell.paper if basis == "paper" else cell.best)
        task = str(cell.config.get("task") or "classify")
        out[(cell.model, cell.ordering)] = dataclasses.replace(found, task=task)
    return out


def streamed_test_ordering(cells: list[CellRecord]) -> str | None:
    """The ordering a setting's streamed test uses; None for isolated test items."""
    for cell in cells:
        config = cell.config
        if config.get("test_protocol") == "streamed":
            return config.get("test_ordering") or "its training ordering"
    return None


def claims_for(study: StudyResults) -> list[ClaimRow]:
    """Claim rows for every setting and basis (single-setting studies label rows by basis)."""
    rows: list[ClaimRow] = []
    several = len(study.groups) > 1
    for group in study.groups:
        cells = study.cells_in(group)
        varied = study.overrides(group)
        for basis in BASES:
            setting = f"{basis}: {group}" if several else basis
            if varied is not None:
                setting += f" ({varied_text(varied)})"
            rows += evaluate(
                conditions_for(cells, basis),
                study.objective,
                basis,
                group,
                setting,
                streamed_test_ordering(cells),
                varied,
            )
    return rows


def settings_for(study: StudyResults) -> list[dict[str, Any]]:
    """Each setting of the study: its label, data set, variant and what the variant overrides
    (``varied``: field -> value, {} for a variant without overrides, None without a variant)."""
    out = []
    for group in study.groups:
        cell = study.cells_in(group)[0]
        varied = study.overrides(group)
        out.append(
            {
                "setting": group,
                "dataset": cell.dataset,
                "variant": cell.variant,
                "varied": varied,
                "label": varied_text(varied) if varied is not None else cell.dataset,
            }
        )
    return out


def varied_text(varied: dict[str, Any]) -> str:
    """``gradient=leak-unscaled, hidden=[16, 16]``; 'no overrides' for a baseline.

    >>> varied_text({"gradient": "leak-unscaled", "hidden": [16, 16]})
    'gradient=leak-unscaled, hidden=[16, 16]'
    """
    if not varied:
        return "no overrides"
    return ", ".join(
        f"{k}={v}" if not isinstance(v, dict) else f"{k}={json.dumps(v, sort_keys=True)}"
        for k, v in varied.items()
    )


def comparisons_for(study: StudyResults) -> list[dict[str, Any]]:
    """Seed-paired comparisons: each ordering vs random, each model vs feedforward.

    ``effect`` is how much A beats B on the objective (positive = A better), paired CI.
    """
    out: list[dict[str, Any]] = []
    for group in study.groups:
        cells = study.cells_in(group)
        for basis in BASES:
            conditions = conditions_for(cells, basis)
            pairs = [
                ((m, o), (m, "random"))
                for m, o in conditions
                if o != "random" and (m, "random") in conditions
            ] + [
                ((m, o), ("feedforward", o))
                for m, o in conditions
                if m != "feedforward" and ("feedforward", o) in conditions
            ]
            for a, b in pairs:
                found = improvement(conditions[a], conditions[b], study.objective)
                row: dict[str, Any] = {
                    "setting": group,
                    "basis": basis,
                    "a": "/".join(a),
                    "b": "/".join(b),
                    "metric": study.objective,
                }
                if isinstance(found, str):
                    row.update(effect=None, ci_low=None, ci_high=None, replicates=0, note=found)
                else:
                    effect, low, high, replicates, note = found
                    row.update(
                        effect=effect, ci_low=low, ci_high=high, replicates=replicates, note=note
                    )
                out.append(row)
    return out


def claims_matrix(rows: list[ClaimRow]) -> dict[str, Any]:
    """Headline verdicts as a matrix: claims x settings, per basis (``report.json``)."""
    settings = list(dict.fromkeys(r.group for r in rows))
    varied = {r.group: r.varied for r in rows}
    matrix: dict[str, Any] = {
        "settings": settings,
        "varied": varied,
        "claims": list(CLAIMS),
        "cells": {},
    }
    for basis in BASES:
        table: dict[str, dict[str, Any]] = {}
        for claim in CLAIMS:
            table[claim] = {}
            for group in settings:
                found = [
                    r
                    for r in rows
                    if r.claim == claim and r.group == group and r.basis == basis and r.headline
                ]
                row = found[0] if found else None
                table[claim][group] = {
                    "verdict": row.verdict if row else claims_module.NOT_TESTED,
                    "effect": row.effect if row else None,
                }
        matrix["cells"][basis] = table
    return matrix


# ---------------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------------
def draw_figures(
    study: StudyResults, folder: Path, distributions: dict[str, dict[str, Any]]
) -> list[Path]:
    """Every figure of the report, per setting; returns the PNG paths."""
    drawn: list[Path] = []
    for group in study.groups:
        cells = study.cells_in(group)
        slug = _slug(group)
        label = f"{study.name} · {group}"
        reconstruct = any(c.config.get("task") == "reconstruct" for c in cells)
        for basis in BASES:
            panels = _curve_panels(cells, basis)
            if panels:
                drawn.append(
                    figures.learning_curves(
                        folder / f"curves_{basis}_{slug}.png",
                        f"{label}: test loss and accuracy, {_basis_words(basis)} "
                        "(mean, 95% CI over replicates)",
                        panels,
                    )
                )
            if reconstruct:
                drawn += _autoencoder_figures(cells, basis, folder, slug, label)
        drawn += _playbook_figures(study, cells, folder, slug, label, distributions)
    return drawn


def _curve_panels(
    cells: list[CellRecord], basis: str
) -> dict[str, dict[str, tuple[figures.Band, figures.Band | None]]]:
    panels: dict[str, dict[str, tuple[figures.Band, figures.Band | None]]] = {}
    for cell in sorted(cells, key=lambda c: (model_key(c.model), ordering_key(c.ordering))):
        trial = cell.paper if basis == "paper" else cell.best
        if trial is None or trial.curves is None or trial.curves.test_loss.size == 0:
            continue
        curves = trial.curves
        accuracy = (
            figures.band(curves.samples_seen, curves.test_accuracy)
            if np.isfinite(curves.test_accuracy).any()
            else None
        )
        panels.setdefault(cell.model, {})[cell.ordering] = (
            figures.band(curves.samples_seen, curves.test_loss),
            accuracy,
        )
    return panels


def _autoencoder_figures(
    cells: list[CellRecord], basis: str, folder: Path, slug: str, label: str
) -> list[Path]:
    drawn: list[Path] = []
    by_ordering: dict[str, dict[str, figures.Band]] = {}
    selectivity: dict[str, dict[str, tuple[float, float, float]]] = {}
    matrices: dict[str, dict[str, np.ndarray]] = {}
    for cell in sorted(cells, key=lambda c: (ordering_key(c.ordering), model_key(c.model))):
        trial = cell.paper if basis == "paper" else cell.best
        if trial is None or trial.curves is None or trial.curves.test_loss.size == 0:
            continue
        curves = trial.curves
        by_ordering.setdefault(cell.ordering, {})[cell.model] = figures.band(
            curves.samples_seen, curves.test_loss
        )
        values = curves.per_replicate.get(claims_module.SELECTIVITY)
        if values is not None and values.size:
            low, high = bootstrap_ci(values)
            selectivity.setdefault(cell.ordering, {})[cell.model] = (
                float(values.mean()),
                low,
                high,
            )
            matrix = r2_matrix(curves.per_replicate)
            if matrix is not None:
                matrices.setdefault(cell.ordering, {})[cell.model] = matrix
    if by_ordering:
        drawn.append(
            figures.model_curves(
                folder / f"reconstruction_{basis}_{slug}.png",
                f"{label}: reconstruction error, {_basis_words(basis)}",
                by_ordering,
                "test reconstruction MSE",
            )
        )
    for ordering, bars in selectivity.items():
        drawn.append(
            figures.timescale_figure(
                folder / f"timescales_{basis}_{slug}_{_slug(ordering)}.png",
                f"{label} / {ordering}: timescale selectivity (95% CI) and r$^2$, "
                f"{_basis_words(basis)}",
                bars,
                matrices.get(ordering, {}),
            )
        )
    return drawn


def r2_matrix(per_replicate: dict[str, np.ndarray]) -> np.ndarray | None:
    """Mean over replicates of ``timescale_r2_unit{g}_latent{k}`` as a [G, G] matrix."""
    found = {}
    for key, values in per_replicate.items():
        match = re.fullmatch(r"timescale_r2_unit(\d+)_latent(\d+)", key)
        if match:
            found[(int(match.group(1)), int(match.group(2)))] = float(np.nanmean(values))
    if not found:
        return None
    size = 1 + max(max(g, k) for g, k in found)
    matrix = np.full((size, size), math.nan)
    for (g, k), value in found.items():
        matrix[g, k] = value
    return matrix


def _playbook_figures(
    study: StudyResults,
    cells: list[CellRecord],
    folder: Path,
    slug: str,
    label: str,
    distributions: dict[str, dict[str, Any]],
) -> list[Path]:
    drawn: list[Path] = []
    points: list[figures.AxisPoint] = []
    bounds: dict[tuple[str, str], tuple[float, float, bool]] = {}
    for cell in cells:
        for name, where in distributions[cell.key].items():
            low, high = getattr(where, "low", math.nan), getattr(where, "high", math.nan)
            bounds[(cell.model, name)] = (
                float(low),
                float(high),
                bool(getattr(where, "log", False)),
            )
        for trial in cell.trials:
            if trial.status != "finished":
                continue
            for name, value in trial.searched.items():
                if not isinstance(value, int | float):
                    continue
                points.append(
                    figures.AxisPoint(
                        model=cell.model,
                        ordering=cell.ordering,
                        param=name,
                        value=float(value),
                        objective=None if trial.diverged else trial.objective,
                        paper=trial.paper_setting,
                        best=trial is cell.best,
                    )
                )
    models = sorted({p.model for p in points}, key=model_key)  # models that searched something
    params = sorted(
        {p.param for p in points},
        key=lambda n: (PARAM_ORDER.index(n) if n in PARAM_ORDER else len(PARAM_ORDER), n),
    )
    if points:
        drawn.append(
            figures.axis_plot(
                folder / f"axes_{slug}.png",
                f"{label}: {study.objective} versus each searched hyperparameter "
                "(x = diverged, * = paper setting, ring = best)",
                params,
                models,
                points,
                bounds,
                study.objective,
            )
        )
    scientific = [p for p in params if role(p) == "scientific"]
    searching = [m for m in models if any(p.model == m and p.param in scientific for p in points)]
    if scientific:
        drawn.append(
            figures.isolation_plot(
                folder / f"isolation_{slug}.png",
                f"{label}: best {study.objective} per bin of each scientific hyperparameter",
                scientific,
                searching,
                points,
                bounds,
                study.objective,
                study.direction,
            )
        )
    grid = {}
    for cell in cells:
        curves = [
            (
                f"#{t.number} {t.objective:.3g}",
                figures.band(t.curves.samples_seen, t.curves.test_loss),
            )
            for t in cell.ranked[:TOP_K]
            if t.curves is not None and t.curves.test_loss.size and t.objective is not None
        ]
        if curves:
            grid[(cell.model, cell.ordering)] = curves
    if grid:
        drawn.append(
            figures.best_trials(
                folder / f"best_trials_{slug}.png",
                f"{label}: test loss of the best {TOP_K} trials per cell",
                grid,
            )
        )
    return drawn


# ---------------------------------------------------------------------------------------------
# Markdown
# ---------------------------------------------------------------------------------------------
def markdown(
    study: StudyResults,
    payload: dict[str, Any],
    rows: list[ClaimRow],
    checks: list[CellCheck],
    drawn: list[Path],
    folder: Path,
) -> str:
    """The report as Markdown (figures linked relative to the report)."""
    better = "lower" if study.direction == "min" else "higher"
    counts = payload["trials"]
    settings = ", ".join(study.groups) or "-"
    lines = [
        f"# Study report: {study.name}",
        "",
        f"Store `{payload['tracking_uri']}`, experiment {study.experiment_id}; generated "
        f"{payload['generated_at']}. Objective `{study.objective}` ({better} is better): "
        "mean over replicates with a 95% bootstrap CI.",
        "",
        f"{len(study.cells)} cells in {len(study.groups)} setting(s) ({settings}); "
        f"{counts['total']} trials: {counts['finished']} finished "
        f"({counts['diverged']} diverged), {counts['failed']} failed, "
        f"{counts['pruned']} pruned, {counts['running']} running.",
        "",
        "## Claims check",
        "",
        "Effects are seed-paired (replicate r of every cell has the same init and the same "
        "within-category orders) and signed so that **positive = in the claimed direction**. "
        "Verdict: the 95% CI excludes 0 on the positive side: *holds*; on the negative side: "
        "*reversed*; otherwise (and always with fewer than 5 paired replicates) "
        "*not significant*; cells missing: *not tested*. *paper* compares each cell's "
        "paper-setting trial, *tuned* each cell's best trial.",
        "",
        _table(
            ["claim", "statement", "setting", "effect [95% CI]", "verdict", "note"],
            [
                [r.claim, CLAIMS[r.claim], r.setting, _effect(r), f"**{r.verdict}**", r.note]
                for r in rows
                if r.headline
            ],
        ),
        "",
        "Per level (claims 3-6):",
        "",
        _table(
            ["claim", "setting", "comparison", "effect [95% CI]", "verdict", "note"],
            [
                [r.claim, r.setting, r.comparison, _effect(r), r.verdict, r.note]
                for r in rows
                if not r.headline
            ],
        ),
        "",
        "How each effect is defined:",
        "",
        *[f"- **{k}** {CLAIMS[k]}: {v.format(m=study.objective)}." for k, v in EFFECTS.items()],
        "",
        "Tuned rows compare each cell's best trial, chosen on the same replicates it is scored "
        "on: each tuned value is slightly optimistic (best of N), alike for every cell.",
        "",
        "## Cells",
        "",
        _table(
            [
                "cell",
                "trials",
                f"paper {study.objective}",
                f"tuned {study.objective}",
                "best params",
            ],
            [
                [
                    c["cell"],
                    _trials(c["trials"]),
                    _result(c["paper"]),
                    _result(c["tuned"]),
                    _params(c["best_params"]),
                ]
                for c in payload["cells"]
            ],
        ),
        "",
        "## Seed-paired comparisons",
        "",
        f"How much A beats B on `{study.objective}` (positive = A better), "
        "paired over replicates.",
        "",
        _table(
            ["setting", "basis", "A", "B", "A beats B by [95% CI]", "note"],
            [
                [c["setting"], c["basis"], c["a"], c["b"], _effect_values(c), c["note"]]
                for c in payload["comparisons"]
            ],
        ),
        "",
        "## Figures",
        "",
    ]
    for path in drawn:
        if path.name.startswith(("curves_", "reconstruction_", "timescales_")):
            lines += [f"![{path.stem}]({path.relative_to(folder)})", ""]
    lines += [
        "## Tuning checks (Deep Learning Tuning Playbook)",
        "",
        "Infeasible = diverged among finished trials. Seed SD: over the best trial's replicates; "
        "config SD: over the cell's feasible trials (if the two are alike, the search cannot "
        "tell configurations apart with this many replicates). Importance: Optuna fANOVA.",
        "",
        _table(
            [
                "cell",
                "finished",
                "failed",
                "diverged",
                "infeasible",
                "seed SD",
                "config SD",
                "importance",
            ],
            [
                [
                    c.cell,
                    f"{c.finished}" + (f"/{c.budget}" if c.budget else ""),
                    c.failed,
                    c.diverged,
                    _percent(c.infeasible_fraction),
                    _num(c.seed_sd),
                    _num(c.config_sd),
                    ", ".join(f"{k} {v:.2f}" for k, v in c.importance.items())
                    or c.importance_note,
                ]
                for c in checks
            ],
        ),
        "",
    ]
    warnings = [w for c in checks for w in c.warnings]
    lines += ["Near-bound warnings:", ""]
    lines += [f"- {w}" for w in warnings] or ["- none: no best trial sits within 5% of a bound."]
    lines.append("")
    for path in drawn:
        if path.name.startswith(("axes_", "isolation_", "best_trials_")):
            lines += [f"![{path.stem}]({path.relative_to(folder)})", ""]
    matrix = payload["claims_matrix"]
    if matrix:
        lines += _matrix_markdown(matrix, payload["settings"])
    return "\n".join(lines)


def _matrix_markdown(matrix: dict[str, Any], settings: list[dict[str, Any]]) -> list[str]:
    """The claims matrix as Markdown: per basis, one table per data set when the settings are
    variants (columns = variants, with a legend of what each overrides), else one table."""
    by_dataset: dict[str, list[dict[str, Any]]] = {}
    for entry in settings:
        key = entry["dataset"] if entry["variant"] else ""
        by_dataset.setdefault(key, []).append(entry)
    lines = [
        "## Claims matrix",
        "",
        "Headline verdict per claim (rows) and setting (columns), with its effect size "
        "(positive = in the claimed direction; the claims check above has the CIs).",
        "",
    ]
    variants = {e["variant"]: e["label"] for e in settings if e["variant"]}
    if variants:
        lines += ["Settings (one change each from the baseline):", ""]
        lines += [f"- `{name}`: {label}" for name, label in variants.items()]
        lines.append("")
    for basis in BASES:
        table = matrix["cells"][basis]
        for dataset, entries in by_dataset.items():
            title = _basis_words(basis).capitalize() + (f", {dataset}" if dataset else "")
            header = [e["variant"] or e["setting"] for e in entries]
            lines += [
                f"{title}:",
                "",
                _table(
                    ["claim", *header],
                    [
                        [
                            f"{k} {CLAIMS[k]}",
                            *[_matrix_cell(table[k][e["setting"]]) for e in entries],
                        ]
                        for k in matrix["claims"]
                    ],
                ),
                "",
            ]
    return lines


# ---------------------------------------------------------------------------------------------
# The summary run
# ---------------------------------------------------------------------------------------------
def log_summary_run(study: StudyResults, folder: Path, files: list[Path], figure_dir: Path) -> str:
    """Log the report to the study's summary run (created once, updated by later reports).

    The run's artifacts end up exactly the report's files: artifacts of an earlier report that
    this one no longer has (a figure of a removed setting) are deleted. Where the artifact
    store cannot delete, the report moves to a fresh summary run and the old one is deleted.
    An existing summary run is never set back to RUNNING, and a new one is terminated in a
    ``finally``, so an interrupted report leaves no run that looks like an interrupted study.

    Returns:
        The summary run's id.
    """
    from study.tracking import connect

    client = connect(study.tracking_uri)
    wanted = {path.name for path in files}
    wanted |= {f"figures/{path.name}" for path in figure_dir.glob("*.png")}
    run_id = study.summary_run_id
    if run_id is not None:
        stale = _artifact_paths(client, run_id) - wanted
        if stale:
            repository = _artifact_repository(client, run_id)
            for path in sorted(stale):
                repository.delete_artifacts(path)
        if _artifact_paths(client, run_id) & stale:  # this artifact store cannot delete
            client.delete_run(run_id)
            run_id = None
    if run_id is None:
        tags = {"study": study.name, "role": "summary", SUMMARY_TAG: "true"}
        run_id = client.create_run(study.experiment_id, tags=tags, run_name="report").info.run_id
    status = "FAILED"
    try:
        for path in files:
            client.log_artifact(run_id, str(path))
        if any(figure_dir.glob("*.png")):
            client.log_artifacts(run_id, str(figure_dir), "figures")
        stamp = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        client.set_tag(run_id, "report_generated", stamp)
        status = "FINISHED"
    finally:
        # Also for an existing run: FINISHED again after a successful update, FAILED if not.
        client.set_terminated(run_id, status)
    return run_id


def _artifact_paths(client: Any, run_id: str, folder: str | None = None) -> set[str]:
    """Every artifact file of a run, as paths relative to its artifact root."""
    found: set[str] = set()
    for entry in client.list_artifacts(run_id, folder):
        if entry.is_dir:
            found |= _artifact_paths(client, run_id, entry.path)
        else:
            found.add(entry.path)
    return found


def _artifact_repository(client: Any, run_id: str) -> Any:
    """The artifact repository of a run (local folder, proxied server, object store...)."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    root = client.get_run(run_id).info.artifact_uri
    return get_artifact_repository(root, tracking_uri=client.tracking_uri)


# ---------------------------------------------------------------------------------------------
# Formatting helpers
# ---------------------------------------------------------------------------------------------
def _trial_counts(study: StudyResults) -> dict[str, int]:
    trials = [t for c in study.cells for t in c.trials]
    return {
        "total": len(trials),
        "finished": sum(t.status == "finished" for t in trials),
        "diverged": sum(t.status == "finished" and t.diverged for t in trials),
        "failed": sum(t.status == "failed" for t in trials),
        "pruned": sum(t.status == "pruned" for t in trials),
        "running": sum(t.status == "running" for t in trials),
    }


def _basis_words(basis: str) -> str:
    return "paper setting" if basis == "paper" else "tuned (each cell's best trial)"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.-]+", "_", text).strip("_") or "all"


def _num(value: float | None, digits: int = 4) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    return f"{value:.{digits}g}"


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def _effect(row: ClaimRow) -> str:
    return _effect_values(asdict(row))


def _effect_values(values: dict[str, Any]) -> str:
    if values.get("effect") is None:
        return "-"
    return f"{values['effect']:+.3g} [{values['ci_low']:+.3g}, {values['ci_high']:+.3g}]"


def _result(result: dict[str, Any] | None) -> str:
    if result is None:
        return "-"
    if result["diverged"]:
        return f"diverged (#{result['trial']})"
    text = _num(result["objective"])
    if result["ci_low"] is not None:
        text += f" [{_num(result['ci_low'])}, {_num(result['ci_high'])}]"
    return f"{text} (#{result['trial']})"


def _trials(counts: dict[str, Any]) -> str:
    text = f"{counts['finished']}" + (f"/{counts['budget']}" if counts["budget"] else "")
    extra = [f"{counts[k]} {k}" for k in ("failed", "diverged", "pruned", "running") if counts[k]]
    return text + (f" ({', '.join(extra)})" if extra else "")


def _params(params: dict[str, Any]) -> str:
    return (
        " ".join(
            f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
            for k, v in sorted(params.items())
        )
        or "-"
    )


def _matrix_cell(entry: dict[str, Any]) -> str:
    if entry["effect"] is None:
        return entry["verdict"]
    return f"{entry['verdict']} ({entry['effect']:+.3g})"


def _table(header: list[str], rows: list[list[Any]]) -> str:
    if not rows:
        return "(none)"

    def cell(value: Any) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _clean(value: Any) -> Any:
    """NaN/inf -> None and numpy scalars -> Python, recursively (strict JSON)."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
