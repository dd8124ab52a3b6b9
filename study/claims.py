"""The claims check: each of the paper's claims as a seed-paired effect with a verdict.

Replicate r of every cell trains from the same init seed and sees the same category permutation
and within-category item order, so two conditions are compared replicate by replicate: the
effect is the mean over replicates of a per-replicate quantity, and its 95% CI is a percentile
bootstrap over replicates (:func:`trainables.metrics.bootstrap_ci`, deterministic).

Sign convention: **a positive effect is in the claimed direction.** "A beats B" on a metric is
``B - A`` per replicate for a metric that is minimised (the objective ``test_loss_auc``: mean
test loss over the first epoch) and ``A - B`` for one that is maximised. Verdict: the CI
excludes 0 on the positive side -> ``holds``; on the negative side -> ``reversed``; otherwise
``not significant``. A claim whose cells the setting lacks is ``not tested``. With fewer than
``MIN_REPLICATES`` (5) replicates the bootstrap CI is too coarse to call: never significant.

Claims 1-5 are about classification: they compare cells with ``task = classify`` only (an
autoencoder cell is never scored on them, also when it runs on categorised data). Claims (metric
m = the study objective, except claim 6):

1. Smoother orderings slow feedforward learning. Per replicate, the least-squares slope of m over
   k across the ``reps-k`` cells of ``feedforward`` (needs two k); effect = slope signed so that
   positive = worse with more repeats (units: m per extra repeat).
2. Minimum smoothness beats random for feedforward: ``feedforward/reps-1`` beats
   ``feedforward/random`` on m.
3. Leaky memory learns faster from smoother orderings: slope of m over k for ``leaky``, signed so
   positive = better with more repeats (``leaky-reset`` is reported beside it).
4. Leaky memory with reset beats feedforward at every smoothness level: ``leaky-reset/o`` beats
   ``feedforward/o`` for every ordering o. One row per level; the headline holds only if every
   level holds, is reversed if any level is, and carries the weakest level's effect. At
   ``reps-1`` the oracle reset clears memory on every sample, so the two models are the same
   network there; that level is reported but left out of the headline.
5. (a) Nets trained on smooth orderings keep their advantage on unsmooth test streams: in a
   setting whose test protocol is ``streamed`` with an unsmooth ``test_ordering`` (reps-1 or
   random), ``leaky-reset/reps-k`` (k >= 2; ``leaky`` if there is no leaky-reset) beats
   ``feedforward/reps-k``; headline over all such k as in claim 4. (b) The LSTM's advantage does
   not transfer: on the same streams ``leaky-reset/reps-k`` beats ``lstm/reps-k``.

   5a does *not* also require the in-domain advantage (the "keeps" contrast: the same nets
   tested on their own ordering). Decision: what the paper shows (A.10) and what a user of a
   trained net meets is the comparison on the unsmooth stream; the in-domain advantage is claim
   4 of the settings that test in-domain, reported beside it in the claims matrix (in
   paper-a10-generalization the ``test-same`` setting; in robustness-claims the baseline),
   where it is measured on its own replicates. Folding it into 5a would make 5a's verdict
   depend on cells of another setting and count claim 4 twice; a reader who wants "keeps"
   reads 5a with claim 4 of the in-domain column.
6. Multiscale memory with reset un-mixes timescales better than the other autoencoders:
   ``multiscale-reset/o`` beats every other model at ordering o on ``timescale_selectivity``
   (maximised); headline as in claim 4 over all those comparisons.

A claim is evaluated per *setting* (a data set, or a data set and a variant) and per *basis*:
``paper`` compares each cell's paper-setting trial, ``tuned`` each cell's best trial.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from study.results import direction_of, ordering_key, reps_of
from trainables.metrics import bootstrap_ci, paired_difference

HOLDS, REVERSED, NOT_SIGNIFICANT, NOT_TESTED = "holds", "reversed", "not significant", "not tested"
VERDICTS = (HOLDS, REVERSED, NOT_SIGNIFICANT, NOT_TESTED)
SELECTIVITY = "timescale_selectivity"
MIN_REPLICATES = 5
"""Fewer paired replicates give a percentile bootstrap too coarse to call (with 2, the "CI" is
just the two values): such rows are never significant."""
UNSMOOTH_TEST_ORDERINGS = ("reps-1", "random")

CLAIMS: dict[str, str] = {
    "1": "Smoother orderings slow feedforward learning",
    "2": "Minimum smoothness (reps-1) beats random for feedforward nets",
    "3": "Leaky memory learns faster from smoother orderings",
    "4": "Leaky memory with reset beats feedforward at every smoothness level",
    "5a": "Nets trained on smooth orderings keep their advantage on unsmooth test streams",
    "5b": "The LSTM's advantage does not transfer to unsmooth test streams",
    "6": "Multiscale memory with reset un-mixes timescales better than the other autoencoders",
}
"""Claim id -> statement (5 has two parts)."""

EFFECTS: dict[str, str] = {
    "1": "feedforward: mean over replicates of the slope of {m} over k (reps-k cells), "
    "positive = {m} worse per extra repeat",
    "2": "feedforward: reps-1 beats random on {m} (paired, positive = reps-1 better)",
    "3": "leaky: mean over replicates of the slope of {m} over k (reps-k cells), "
    "positive = {m} better per extra repeat",
    "4": "at each ordering: leaky-reset beats feedforward on {m} (positive = leaky-reset "
    "better); headline = weakest level, holds only if every level holds (reps-1 excluded: "
    "identical networks)",
    "5a": "streamed test on an unsmooth stream, each smooth training ordering reps-k (k>=2): "
    "leaky-reset beats feedforward on {m}; headline = weakest level",
    "5b": "streamed test on an unsmooth stream, each reps-k (k>=2): leaky-reset beats lstm "
    "on {m} (positive = the LSTM's advantage does not transfer)",
    "6": "at each ordering: multiscale-reset beats each other model on timescale_selectivity "
    "(higher = better); headline = weakest comparison",
}
"""Claim id -> precise definition of its effect ({m} = the study objective)."""


@dataclass(frozen=True)
class Condition:
    """What the claims need of one cell on one basis: its per-replicate run metrics."""

    per_replicate: Mapping[str, np.ndarray] | None
    """Run metric -> [R] values; None when the trial diverged or its curves are missing."""
    seed: int | None
    note: str = ""
    """Why ``per_replicate`` is None (for not-tested rows)."""
    task: str = "classify"
    """The cell's task: claims 1-5 use 'classify' cells only."""


@dataclass
class ClaimRow:
    """One row of the claims table (``report.json`` ``claims``)."""

    claim: str
    """'1'..'6', '5a', '5b'."""
    setting: str
    """'paper' or 'tuned', plus ': <data set[/variant]>' when the study has several settings,
    plus what the setting's variant overrides, e.g. ' (gradient=leak-unscaled)'."""
    basis: str
    """'paper' (paper-setting trials) or 'tuned' (each cell's best trial)."""
    group: str
    """The data set or data set/variant the row compares within."""
    level: str
    """'all' for the headline row; else the ordering or comparison of a detail row."""
    comparison: str
    metric: str
    effect: float | None
    ci_low: float | None
    ci_high: float | None
    verdict: str
    replicates: int
    note: str = ""
    varied: dict[str, Any] | None = None
    """What the setting's variant overrides (field -> value; {} for a baseline), None when the
    setting has no variant."""

    @property
    def headline(self) -> bool:
        """The row that answers the claim for its setting."""
        return self.level == "all"

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict; ``claim`` is an int for 1-6 (5a/5b keep their letter in ``part``)."""
        out = asdict(self)
        out["claim"] = int(self.claim[0])
        out["part"] = self.claim[1:]
        out["statement"] = CLAIMS[self.claim]
        out["headline"] = self.headline
        return out


def verdict(ci_low: float, ci_high: float, replicates: int) -> str:
    """``holds`` / ``reversed`` / ``not significant`` from a CI of an effect signed to the claim.

    >>> verdict(0.01, 0.03, 10), verdict(-0.03, -0.01, 10), verdict(-0.01, 0.02, 10)
    ('holds', 'reversed', 'not significant')
    >>> verdict(0.01, 0.03, 3)  # too few replicates for a verdict
    'not significant'
    """
    if replicates < MIN_REPLICATES:
        return NOT_SIGNIFICANT
    if ci_low > 0:
        return HOLDS
    if ci_high < 0:
        return REVERSED
    return NOT_SIGNIFICANT


def improvement(
    a: Condition, b: Condition, metric: str
) -> tuple[float, float, float, int, str] | str:
    """How much A beats B on ``metric``, seed-paired: (effect, ci_low, ci_high, R, note).

    Returns a reason string instead when either side lacks the metric. Replicates are paired when
    both trials share seed and replicate count; otherwise the means are compared with an
    independent bootstrap (and the note says so).
    """
    for side in (a, b):
        if side.per_replicate is None:
            return side.note or "no result"
        if metric not in side.per_replicate:
            return f"no {metric} in the trial's metrics"
    x = np.asarray(a.per_replicate[metric], dtype=np.float64)  # type: ignore[index]
    y = np.asarray(b.per_replicate[metric], dtype=np.float64)  # type: ignore[index]
    better_is_lower = direction_of(metric) == "min"
    if a.seed == b.seed and x.shape == y.shape:
        diff = paired_difference(y, x) if better_is_lower else paired_difference(x, y)
        return diff["effect"], diff["ci_low"], diff["ci_high"], int(x.size), ""
    effect, low, high = _unpaired(y, x) if better_is_lower else _unpaired(x, y)
    return effect, low, high, int(min(x.size, y.size)), "not seed-paired: independent bootstrap"


def evaluate(
    conditions: Mapping[tuple[str, str], Condition],
    objective: str,
    basis: str,
    group: str,
    setting: str,
    test_stream: str | None = None,
    varied: dict[str, Any] | None = None,
) -> list[ClaimRow]:
    """Every claim's rows for one setting and basis.

    Args:
        conditions: (model, ordering) -> the cell's condition on this basis.
        objective: the study objective (the metric of claims 1-5).
        basis: 'paper' or 'tuned'.
        group: the setting's data set[/variant].
        setting: the label written in each row's ``setting``.
        test_stream: the setting's streamed test ordering, None if tested on isolated items or
            on the training ordering (claim 5 needs an unsmooth stream).
        varied: what the setting's variant overrides, copied into each row.

    Returns:
        Headline rows (``level='all'``) for every claim, detail rows where a claim has levels.
    """
    classify = {k: c for k, c in conditions.items() if c.task == "classify"}
    excluded = {k: f"task={c.task}" for k, c in conditions.items() if k not in classify}
    context = _Context(classify, objective, basis, group, setting, varied, excluded)
    rows: list[ClaimRow] = []
    if conditions and not classify:
        why = "claims 1-5 are about classification; this setting's cells are autoencoders"
        rows += [context.not_tested(claim, why) for claim in ("1", "2", "3", "4", "5a", "5b")]
    else:
        rows += _classification_claims(context, test_stream)
    context = _Context(conditions, objective, basis, group, setting, varied)
    comparisons = [
        (f"vs {m} @ {o}", ("multiscale-reset", o), (m, o))
        for o in context.orderings("multiscale-reset")
        for m in context.models_at(o)
        if m != "multiscale-reset" and context.may_have((m, o), SELECTIVITY)
    ]
    if not context.has_metric_anywhere("multiscale-reset", SELECTIVITY):
        rows.append(
            context.not_tested("6", "needs multiscale-reset autoencoder cells with latents")
        )
    else:
        rows += context.every_level("6", comparisons, metric=SELECTIVITY)
    return rows


def _classification_claims(context: _Context, test_stream: str | None) -> list[ClaimRow]:
    """Claims 1-5 over the classification cells of one setting and basis."""
    rows: list[ClaimRow] = []
    rows += context.slope("1", "feedforward", worse_with_k=True)
    rows += context.pair("2", ("feedforward", "reps-1"), ("feedforward", "random"), "all")
    rows += context.slope("3", "leaky", worse_with_k=False)
    rows += context.slope("3", "leaky-reset", worse_with_k=False, headline=False)
    rows += context.every_level(
        "4",
        [
            (o, ("leaky-reset", o), ("feedforward", o))
            for o in context.orderings("leaky-reset", "feedforward")
        ],
        degenerate={"reps-1": "identical networks: reset on every sample of reps-1"},
    )
    if test_stream in UNSMOOTH_TEST_ORDERINGS:
        memory = "leaky-reset" if context.has_model("leaky-reset") else "leaky"
        smooth = [o for o in context.orderings(memory, "feedforward") if (reps_of(o) or 0) >= 2]
        rows += context.every_level("5a", [(o, (memory, o), ("feedforward", o)) for o in smooth])
        smooth = [o for o in context.orderings("leaky-reset", "lstm") if (reps_of(o) or 0) >= 2]
        rows += context.every_level("5b", [(o, ("leaky-reset", o), ("lstm", o)) for o in smooth])
    else:
        why = (
            "needs a streamed test on an unsmooth stream (test_protocol=streamed, "
            "test_ordering=reps-1 or random); this setting tests "
            f"{test_stream or 'isolated items'}"
        )
        rows += [context.not_tested("5a", why), context.not_tested("5b", why)]
    return rows


# -- implementation ----------------------------------------------------------------------------
class _Context:
    def __init__(
        self,
        conditions: Mapping[tuple[str, str], Condition],
        objective: str,
        basis: str,
        group: str,
        setting: str,
        varied: dict[str, Any] | None = None,
        excluded: Mapping[tuple[str, str], str] | None = None,
    ) -> None:
        self.conditions = conditions
        self.objective = objective
        self.basis = basis
        self.group = group
        self.setting = setting
        self.varied = varied
        self.excluded = excluded or {}
        """Cells left out of ``conditions`` -> why (named when a claim needs them)."""

    def has_model(self, model: str) -> bool:
        return any(m == model for m, _ in self.conditions)

    def orderings(self, *models: str) -> list[str]:
        """Orderings present for every one of ``models``."""
        sets = [{o for m, o in self.conditions if m == model} for model in models]
        common = set.intersection(*sets) if sets else set()
        return sorted(common, key=ordering_key)

    def models_at(self, ordering: str) -> list[str]:
        return sorted({m for m, o in self.conditions if o == ordering})

    def has_metric(self, key: tuple[str, str], metric: str) -> bool:
        found = self.conditions.get(key)
        return bool(found and found.per_replicate is not None and metric in found.per_replicate)

    def may_have(self, key: tuple[str, str], metric: str) -> bool:
        """The cell has the metric, or has no result on this basis (then it counts as missing)."""
        found = self.conditions.get(key)
        return bool(found and (found.per_replicate is None or metric in found.per_replicate))

    def has_metric_anywhere(self, model: str, metric: str) -> bool:
        return any(self.has_metric(key, metric) for key in self.conditions if key[0] == model)

    def row(self, claim: str, level: str, comparison: str, metric: str, **values: Any) -> ClaimRow:
        return ClaimRow(
            claim=claim,
            setting=self.setting,
            basis=self.basis,
            group=self.group,
            level=level,
            comparison=comparison,
            metric=metric,
            effect=values.get("effect"),
            ci_low=values.get("ci_low"),
            ci_high=values.get("ci_high"),
            verdict=values.get("verdict", NOT_TESTED),
            replicates=values.get("replicates", 0),
            note=values.get("note", ""),
            varied=self.varied,
        )

    def not_tested(self, claim: str, why: str, level: str = "all", metric: str = "") -> ClaimRow:
        return self.row(claim, level, "-", metric or self.objective, note=why)

    def measured(
        self, claim: str, level: str, comparison: str, metric: str, found: Any
    ) -> ClaimRow:
        if isinstance(found, str):
            return self.row(claim, level, comparison, metric, note=found)
        effect, low, high, replicates, note = found
        if replicates < MIN_REPLICATES:
            few = f"{replicates} replicates: fewer than {MIN_REPLICATES}, no verdict"
            note = "; ".join(filter(None, [note, few]))
        return self.row(
            claim,
            level,
            comparison,
            metric,
            effect=effect,
            ci_low=low,
            ci_high=high,
            verdict=verdict(low, high, replicates),
            replicates=replicates,
            note=note,
        )

    def pair(
        self,
        claim: str,
        a: tuple[str, str],
        b: tuple[str, str],
        level: str,
        metric: str | None = None,
    ) -> list[ClaimRow]:
        metric = metric or self.objective
        comparison = f"{a[0]}/{a[1]} vs {b[0]}/{b[1]}"
        missing = [
            f"{m}/{o}" + (f" ({self.excluded[(m, o)]})" if (m, o) in self.excluded else "")
            for m, o in (a, b)
            if (m, o) not in self.conditions
        ]
        if missing:
            return [self.not_tested(claim, f"needs cells {', '.join(missing)}", level, metric)]
        found = improvement(self.conditions[a], self.conditions[b], metric)
        return [self.measured(claim, level, comparison, metric, found)]

    def slope(
        self, claim: str, model: str, worse_with_k: bool, headline: bool = True
    ) -> list[ClaimRow]:
        level = "all" if headline else model
        ks = sorted(
            (reps_of(o), o) for m, o in self.conditions if m == model and reps_of(o) is not None
        )
        if len(ks) < 2:
            have = ", ".join(o for _, o in ks) or "none"
            return [
                self.not_tested(
                    claim, f"needs {model} at two reps-k orderings (has {have})", level
                )
            ]
        comparison = f"{model}: slope over k in {', '.join(o for _, o in ks)}"
        sides = [self.conditions[(model, o)] for _, o in ks]
        for side in sides:
            if side.per_replicate is None or self.objective not in side.per_replicate:
                return [
                    self.measured(
                        claim, level, comparison, self.objective, side.note or "no result"
                    )
                ]
        values = [np.asarray(s.per_replicate[self.objective], dtype=np.float64) for s in sides]  # type: ignore[index]
        sizes = {v.size for v in values}
        seeds = {s.seed for s in sides}
        if len(sizes) != 1 or len(seeds) != 1:
            note = "reps-k cells are not seed-paired (different seeds or replicate counts)"
            return [self.not_tested(claim, note, level)]
        k = np.array([float(kk) for kk, _ in ks])
        slopes = per_replicate_slope(k, np.stack(values, axis=1))  # [R]
        lower_is_better = direction_of(self.objective) == "min"
        # worse with k: the metric grows with k if lower is better
        sign = 1.0 if worse_with_k == lower_is_better else -1.0
        signed = sign * slopes
        low, high = bootstrap_ci(signed)
        found = (float(signed.mean()), low, high, int(signed.size), "")
        return [self.measured(claim, level, comparison, self.objective, found)]

    def every_level(
        self,
        claim: str,
        levels: list[tuple[str, tuple[str, str], tuple[str, str]]],
        metric: str | None = None,
        degenerate: Mapping[str, str] | None = None,
    ) -> list[ClaimRow]:
        metric = metric or self.objective
        degenerate = degenerate or {}
        if not levels:
            return [self.not_tested(claim, _needs(claim), metric=metric)]
        details = []
        for level, a, b in levels:
            row = self.pair(claim, a, b, level, metric)[0]
            if level in degenerate:
                row.note = "; ".join(
                    filter(None, [row.note, degenerate[level] + " (not in headline)"])
                )
            details.append(row)
        counted = [r for r in details if r.level not in degenerate]
        if not counted:
            return [
                self.not_tested(claim, "only levels where the claim is vacuous", metric=metric),
                *details,
            ]
        if any(r.verdict == NOT_TESTED for r in counted):
            missing = [r.level for r in counted if r.verdict == NOT_TESTED]
            headline = self.not_tested(claim, f"no result at {', '.join(missing)}", metric=metric)
            return [headline, *details]
        weakest = min(counted, key=lambda r: r.effect)  # type: ignore[arg-type, return-value]
        verdicts = {r.verdict for r in counted}
        if verdicts == {HOLDS}:
            overall = HOLDS
        elif REVERSED in verdicts:
            overall = REVERSED
        else:
            overall = NOT_SIGNIFICANT
        held = sum(r.verdict == HOLDS for r in counted)
        headline = self.row(
            claim,
            "all",
            f"{len(counted)} levels ({', '.join(r.level for r in counted)})",
            metric,
            effect=weakest.effect,
            ci_low=weakest.ci_low,
            ci_high=weakest.ci_high,
            verdict=overall,
            replicates=weakest.replicates,
            note=f"holds at {held}/{len(counted)} levels; weakest: {weakest.level}",
        )
        return [headline, *details]


def per_replicate_slope(k: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Least-squares slope of ``values`` [R, K] over ``k`` [K], per replicate -> [R].

    >>> per_replicate_slope(np.array([1.0, 3.0, 5.0]), np.array([[1.0, 2.0, 3.0]])).tolist()
    [0.5]
    """
    centred = k - k.mean()
    return (values - values.mean(axis=1, keepdims=True)) @ centred / float(centred @ centred)


def _unpaired(a: np.ndarray, b: np.ndarray, resamples: int = 2000) -> tuple[float, float, float]:
    """Mean of a minus mean of b with an independent percentile bootstrap CI (seed 0)."""
    rng = np.random.default_rng(0)
    ma = a[rng.integers(0, a.size, size=(resamples, a.size))].mean(axis=1)
    mb = b[rng.integers(0, b.size, size=(resamples, b.size))].mean(axis=1)
    diff = ma - mb
    return (
        float(a.mean() - b.mean()),
        float(np.quantile(diff, 0.025)),
        float(np.quantile(diff, 0.975)),
    )


def _needs(claim: str) -> str:
    return {
        "4": "needs leaky-reset and feedforward cells at the same ordering",
        "5a": "needs leaky-reset (or leaky) and feedforward cells at a reps-k ordering, k >= 2",
        "5b": "needs leaky-reset and lstm cells at a reps-k ordering, k >= 2",
        "6": "needs multiscale-reset and other autoencoder cells at the same ordering",
    }.get(claim, "needs more cells")
