"""The promotion gate: may a newly registered version take the `champion` alias from the current one?

The champion is scored on the challenger's test split at register (bertops/rescoring.py), so the two are
compared example by example on the same rows. They must be comparable (same metric, the same params where the
family says scores depend on them, per-example results that line up); then every check must pass:
- min_delta: the test metric improves by at least `registry.min_delta` (and by more than nothing);
- significance: the improvement is significant at `registry.alpha` by a paired, one-sided test (H1: the
  challenger is better): McNemar's exact test on per-example correctness where the family says so (accuracy),
  else a paired bootstrap over test examples of the family's statistic (macro F1, entity F1, QA exact match /
  F1, perplexity, Pearson / Spearman / RMSE / MAE, micro F1);
- class_regression: no class (or entity type) with at least `registry.min_class_support` test examples loses
  more than `registry.max_class_regression` F1 (rarer ones are listed as not checked: their F1 is noise).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.stats import binomtest

from bertops.config import RegistryParams


@dataclass(frozen=True)
class Evidence:
    """One version's test results: the headline metric and how each test example came out."""

    metric: str
    value: float
    test_split: str  # sha256 of the test split file
    predictions: list[dict] | None  # reports/test_predictions.jsonl rows in test-split order (None: not kept)
    class_f1: dict[str, float] = field(default_factory=dict)  # per class / entity type; {} for QA and MLM
    class_support: dict[str, int] = field(default_factory=dict)  # gold test examples / entities of each
    comparable: dict[str, str] = field(default_factory=dict)  # params the score depends on (masked LM: masking)

    @classmethod
    def from_reports(cls, metrics: dict, predictions: list[dict] | None, test_split: str,
                     class_table_key: str | None = None, comparable: dict | None = None) -> "Evidence":
        """`class_table_key`: the metrics.json key of the family's per-class / per-type table (None: it has none)."""
        table = metrics.get(class_table_key) or {} if class_table_key else {}
        return cls(metric=metrics["metric"], value=float(metrics[metrics["metric"]]), test_split=test_split,
                   predictions=predictions, class_f1={label: float(s["f1"]) for label, s in table.items()},
                   class_support={label: int(s["support"]) for label, s in table.items() if "support" in s},
                   # as the version tags store them (rescoring.compare_tags): 0.15 and the champion's "0.15" agree
                   comparable={k: str(v) for k, v in (comparable or {}).items()})


@dataclass(frozen=True)
class Check:
    name: str  # min_delta | significance | class_regression
    passed: bool
    detail: str


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str
    metric: str
    challenger_value: float
    champion_version: str | None = None
    champion_value: float | None = None
    p_value: float | None = None
    test: str | None = None
    checks: tuple[Check, ...] = ()
    champion_registered_value: float | None = None  # the champion's score at its registration, on its own split
    champion_scored: str | None = None  # how the champion's score on this split was obtained


def improvement(metric: str, challenger: float, champion: float, family) -> float:
    """Positive when the challenger is better (higher is better, except for metrics like perplexity or RMSE)."""
    return challenger - champion if family.metric_mode(metric) == "max" else champion - challenger


# ---- paired statistics over test examples -------------------------------------------------------------------

def mcnemar_exact(champion_correct: list[bool], challenger_correct: list[bool]) -> tuple[float, int, int]:
    """One-sided exact McNemar test: p-value, pairs only the challenger got right, pairs only the champion got right."""
    won = sum(1 for a, b in zip(champion_correct, challenger_correct) if b and not a)
    lost = sum(1 for a, b in zip(champion_correct, challenger_correct) if a and not b)
    if won + lost == 0:
        return 1.0, 0, 0
    return float(binomtest(won, won + lost, 0.5, alternative="greater").pvalue), won, lost


def paired_bootstrap(metric: str, champion_rows: list[dict], challenger_rows: list[dict], samples: int,
                     seed: int = 0, family=None) -> float:
    """One-sided paired bootstrap (Koehn 2004): the share of resamples of the test examples in which the
    challenger is not better, with the +1 correction so that p is never 0. The task family recomputes the
    metric on each resample (`family.statistic`)."""
    n = len(challenger_rows)
    rng = np.random.default_rng(seed)
    champion_stat, challenger_stat = family.statistic(metric, champion_rows), family.statistic(metric, challenger_rows)
    not_better = 0
    for start in range(0, samples, 250):  # blocks of resamples keep the index matrix small
        idx = rng.integers(0, n, size=(min(250, samples - start), n))
        delta = challenger_stat(idx) - champion_stat(idx)
        if family.metric_mode(metric) == "min":
            delta = -delta
        not_better += int((delta <= 0).sum())
    return (not_better + 1) / (samples + 1)


def significance(challenger: Evidence, champion: Evidence, alpha: float, samples: int,
                 family) -> tuple[Check, float | None, str | None]:
    if not champion.predictions:
        return Check("significance", False, "the champion has no per-example test results (registered before "
                                            "bertops kept them): no paired test, no automatic promotion"), None, None
    ours, theirs = challenger.predictions or [], champion.predictions
    if [family.example_key(r) for r in ours] != [family.example_key(r) for r in theirs]:
        return Check("significance", False, "per-example test results do not line up with the champion's"), None, None
    if family.paired_test(challenger.metric) == "mcnemar_exact":
        p, won, lost = mcnemar_exact([r["correct"] for r in theirs], [r["correct"] for r in ours])
        test, numbers = "mcnemar_exact", f"{won} examples only the challenger gets right, {lost} only the champion"
    else:
        p = paired_bootstrap(challenger.metric, theirs, ours, samples, family=family)
        test, numbers = "paired_bootstrap", f"{samples} resamples of {len(ours)} test examples"
    verdict = "significant" if p <= alpha else "not significant"
    return Check("significance", p <= alpha, f"{test} p={p:.4g} ({numbers}): {verdict} at alpha {alpha}"), p, test


def class_regressions(challenger: Evidence, champion: Evidence, tolerance: float | None,
                      min_support: int = 1) -> Check:
    if tolerance is None:
        return Check("class_regression", True, "not checked (registry.max_class_regression is null)")
    # the test split is the same for both (checked before), so the challenger's support is the champion's too
    rare = sorted(label for label in challenger.class_f1
                  if challenger.class_support.get(label, min_support) < min_support)
    drops = {label: champion.class_f1[label] - f1 for label, f1 in challenger.class_f1.items()
             if label in champion.class_f1 and label not in rare}
    skipped = (f"; not checked, under {min_support} test examples: "
               + ", ".join(f"{label} ({challenger.class_support[label]})" for label in rare)) if rare else ""
    worst = sorted(((d, label) for label, d in drops.items() if d > tolerance), reverse=True)
    if worst:
        listed = ", ".join(f"{label} F1 {champion.class_f1[label]:.4f} -> {challenger.class_f1[label]:.4f}"
                           for _, label in worst)
        return Check("class_regression", False, f"regresses by more than {tolerance}: {listed}{skipped}")
    if not drops:
        return Check("class_regression", True, "no per-class scores to compare" + skipped)
    largest = max(drops.values())
    return Check("class_regression", True,
                 f"no class loses more than {tolerance} F1 (largest drop {largest:+.4f}){skipped}")


def decide(challenger: Evidence, champion: Evidence | None, champion_version: str | None,
           registry: RegistryParams, family, champion_scored: str | None = None,
           champion_registered_value: float | None = None) -> Decision:
    """`family`: the task family of the versions (its paired statistic and which way its metric is better).
    `champion`: the champion's evidence on the challenger's test split (None with `champion_version` set: it
    could not be scored, and `champion_scored` says why)."""
    if champion_version is None:
        return Decision(True, "no champion yet", challenger.metric, challenger.value)
    base = {"metric": challenger.metric, "challenger_value": challenger.value,
            "champion_version": str(champion_version), "champion_scored": champion_scored,
            "champion_registered_value": champion_registered_value}
    if champion is None:
        return Decision(False, f"champion v{champion_version} could not be compared on this test split "
                               f"({champion_scored}): no automatic promotion", **base)
    if champion.metric != challenger.metric:
        return Decision(False, f"champion v{champion_version} was scored on {champion.metric!r}, not "
                               f"{challenger.metric!r}: not comparable", **base)
    differ = sorted(k for k in set(champion.comparable) | set(challenger.comparable)
                    if champion.comparable.get(k) != challenger.comparable.get(k))
    if differ:
        listed = ", ".join(f"{k} {champion.comparable.get(k, 'unset')} -> {challenger.comparable.get(k, 'unset')}"
                           for k in differ)
        return Decision(False, f"champion v{champion_version} was scored with other {listed}: not comparable, "
                               "no automatic promotion", **base)
    base["champion_value"] = champion.value
    if champion.test_split != challenger.test_split:  # score_champion always scores on the challenger's split
        return Decision(False, f"champion v{champion_version}'s per-example results are for another test split: "
                               "not comparable", **base)
    delta = improvement(challenger.metric, challenger.value, champion.value, family)
    checks = [Check("min_delta", delta > 0 and delta >= registry.min_delta,
                    f"test {challenger.metric} {challenger.value:.4f} vs champion v{champion_version}'s "
                    f"{champion.value:.4f} on this test split: improvement {delta:+.4f} (must be > 0 and >= "
                    f"min_delta {registry.min_delta})")]
    sig, p_value, test = significance(challenger, champion, registry.alpha, registry.bootstrap_samples, family)
    checks += [sig, class_regressions(challenger, champion, registry.max_class_regression,
                                      registry.min_class_support)]
    failed = [c for c in checks if not c.passed]
    if failed:
        reason = "; ".join(f"{c.name} failed: {c.detail}" for c in failed)
    else:
        reason = f"beats champion v{champion_version}: " + "; ".join(c.detail for c in checks)
    return Decision(not failed, reason, p_value=p_value, test=test, checks=tuple(checks), **base)
