"""The model card every registered version carries (markdown: in its run, as the version's description in the
registry, and in reports/model_card.md), and the per-class change plot against the champion it was gated on."""

from __future__ import annotations

import json
from pathlib import Path

from bertops.config import Params, flat_params
from bertops.gate import Decision, Evidence
from bertops.layout import Layout

def _cell(value) -> str:
    """A value inside a markdown table cell: a pipe (corpus.label_separator's default) would end the cell."""
    return str(value).replace("|", "\\|")


def metrics_markdown(metrics: dict, family) -> str:
    """The headline numbers and, where the family has one, its per-class (or per-entity-type) table."""
    return family.metrics_markdown(metrics)


def checks_markdown(checks) -> str:
    """The gate's checks as a table; `checks` are gate.Check objects or their dicts (registration.json)."""
    rows = [c if isinstance(c, dict) else {"name": c.name, "passed": c.passed, "detail": c.detail} for c in checks]
    return "| check | result | detail |\n| --- | --- | --- |\n" + "".join(
        f"| {c['name']} | {'passed' if c['passed'] else '**failed**'} | {c['detail']} |\n" for c in rows)


def comparison_markdown(decision: Decision, challenger: Evidence | None = None,
                        champion: Evidence | None = None) -> str:
    if decision.champion_version is None:
        return f"No champion existed: this version became champion ({decision.reason}).\n"
    registered = decision.champion_registered_value
    text = (f"Against champion v{decision.champion_version} on this version's test split: "
            f"**{'promoted' if decision.promote else 'not promoted'}**.\n\n"
            f"| | test {decision.metric} on this test split | at its registration (its own split) |\n"
            f"| --- | --- | --- |\n| this version | {decision.challenger_value:.4f} | |\n"
            f"| champion v{decision.champion_version} | "
            f"{'' if decision.champion_value is None else f'{decision.champion_value:.4f}'} | "
            f"{'' if registered is None else f'{registered:.4f}'} |\n\n")
    if decision.champion_scored:
        text += f"The champion's score on this split: {decision.champion_scored}.\n\n"
    if decision.checks:
        text += checks_markdown(decision.checks)
    else:
        text += f"Reason: {decision.reason}\n"
    if challenger is not None and champion is not None and challenger.class_f1:
        text += "\n| class / type | champion F1 | this version F1 | change |\n| --- | --- | --- | --- |\n"
        for label, f1 in challenger.class_f1.items():
            before = champion.class_f1.get(label)
            text += (f"| {label} | {'' if before is None else f'{before:.4f}'} | {f1:.4f} | "
                     f"{'' if before is None else f'{f1 - before:+.4f}'} |\n")
    return text


def _limitations(params: Params, layout: Layout, metrics: dict, family) -> list[str]:
    held_out = (f"the fixed test file {params.corpus.test_source}" if params.corpus.test_source else
                f"split by content hash, corpus.split.seed {params.corpus.split.seed}")
    return [f"Scored on one held-out test split ({family.example_count(metrics)} examples, {held_out}); expect a different split or a different domain to score differently.",
            *family.limitations(params, layout, metrics)]


def render(params: Params, layout: Layout, name: str, version: str, tags: dict, metrics: dict,
           challenger: Evidence, decision: Decision, champion: Evidence | None) -> str:
    from bertops.tasks import task_of

    family = task_of(params)
    stats_file = layout.prepared_dir / "stats.json"
    stats = json.loads(stats_file.read_text()) if stats_file.is_file() else {}
    params_rows = "\n".join(f"| {k} | {_cell(v)} |" for k, v in flat_params(params).items()
                            if k.split(".")[0] in ("model", "task", "train", "corpus"))
    return f"""# {name} v{version}

## Intended use
{family.intended_use} Task `{params.task.type}`, fine-tuned from `{params.model.name_or_path}`.

## Data
- corpus: `{params.corpus.source}`; raw data md5 `{tags['bertops.data_raw_md5']}`, prepared data md5
  `{tags['bertops.data_prepared_md5']}` (DVC), test split sha256 `{tags['bertops.test_split_sha256'][:16]}...`
- splits: `{json.dumps(stats.get('splits', {}))}`

## Test metrics ({params.task.metric} gates promotion)
{metrics_markdown(metrics, family)}
## Comparison with the champion, on this version's test split
{comparison_markdown(decision, challenger, champion)}
## Training
| param | value |
| --- | --- |
{params_rows}

Hardware: {tags['bertops.hardware']}; git commit `{tags['bertops.git_commit']}` (dirty: {tags['bertops.git_dirty']});
MLflow run `{tags['bertops.run_id']}`; params hash `{tags['bertops.params_hash']}`.

## Limitations
""" + "".join(f"- {note}\n" for note in _limitations(params, layout, metrics, family))


def plot_class_changes(challenger: Evidence, champion: Evidence, decision: Decision, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [label for label in challenger.class_f1 if label in champion.class_f1]
    changes = [challenger.class_f1[label] - champion.class_f1[label] for label in labels]
    fig, ax = plt.subplots(figsize=(max(4, 0.6 * len(labels) + 2), 3.5))
    ax.bar(labels, changes, color=["tab:green" if c >= 0 else "tab:red" for c in changes])
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_ylabel("F1 change")
    ax.set_title(f"per-class F1 vs champion v{decision.champion_version}")
    ax.tick_params(axis="x", rotation=45)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
