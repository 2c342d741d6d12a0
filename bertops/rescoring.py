"""The champion on today's test split: at register, the current champion is loaded from the registry and scored
by the same task scorer on the challenger's test split, so that the gate compares the two models example by
example on the same rows, however the corpus grew since the champion was registered.

A champion that cannot be loaded or scored (its artifacts are gone, another task, a label the test split has and
its head lacks) gives a reason instead of evidence: the new version then stays challenger, and nothing raises."""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bertops.gate import Evidence

log = logging.getLogger(__name__)
COMPARE_TAG = "bertops.compare."  # version tags: the params that must agree for two scores to compare


@dataclass(frozen=True)
class ChampionScore:
    """What the gate compares the challenger with: the champion's evidence on today's split, or why there is none."""

    evidence: Evidence | None
    how: str  # how the evidence was obtained, or why it could not be (shown in the reason, the card, review)
    registered_value: float | None  # the champion's test score when it was registered, on its own split


def compare_tags(family, params) -> dict[str, str]:
    return {COMPARE_TAG + k: str(v) for k, v in family.comparable_params(params).items()}


def compared_params(tags: dict) -> dict[str, str]:
    """A version's comparable params, read back from its bertops.compare.* tags."""
    return {k.removeprefix(COMPARE_TAG): v for k, v in tags.items() if k.startswith(COMPARE_TAG)}


def _checkpoint_of(model_dir: Path, work: Path) -> Path:
    """The checkpoint directory inside a downloaded MLflow model: a bertops pyfunc model's artifact, or the
    transformers flavor's model/ and tokenizer components merged into one directory."""
    import yaml

    mlmodel = model_dir / "MLmodel"
    spec = yaml.safe_load(mlmodel.read_text()) if mlmodel.is_file() else {}
    artifacts = ((spec or {}).get("flavors", {}).get("python_function", {}).get("artifacts") or {})
    if "checkpoint" in artifacts:  # a bertops pyfunc model: its `checkpoint` artifact (stored under its own name)
        pyfunc = model_dir / artifacts["checkpoint"]["path"]
        if (pyfunc / "config.json").is_file():
            return pyfunc
    if (model_dir / "model" / "config.json").is_file():
        merged = work / "checkpoint"
        shutil.copytree(model_dir / "model", merged)
        tokenizer = model_dir / "components" / "tokenizer"
        if tokenizer.is_dir():
            shutil.copytree(tokenizer, merged, dirs_exist_ok=True)
        return merged
    raise FileNotFoundError("no checkpoint in the registered model (looked for its pyfunc `checkpoint` artifact "
                            "and the transformers flavor's model/)")


def _run_artifact(client, run_id: str, name: str, work: Path) -> Path | None:
    from mlflow.exceptions import MlflowException

    try:
        return Path(client.download_artifacts(run_id, f"reports/{name}", dst_path=str(work)))
    except (MlflowException, OSError):
        return None


def _labels(family, labels_file: Path | None, checkpoint: Path, today_labels):
    """The champion's own label space: its labels.json; for versions registered before bertops kept it, the
    id2label of its head (labelled families), else today's."""
    if labels_file is not None:
        return json.loads(labels_file.read_text())
    config = json.loads((checkpoint / "config.json").read_text())
    if family.labelled and config.get("id2label"):
        return [config["id2label"][str(i)] for i in range(len(config["id2label"]))]
    return today_labels


def score_champion(client, mv, family, params, layout, labels, rows: list[dict], test_sha: str) -> ChampionScore:
    """The champion version `mv` scored on `rows` (today's test split, whose file hash is `test_sha`), with the
    settings it was evaluated with (its own params.yaml: max length, masking)."""
    from bertops.config import load_params
    from bertops.layout import Layout
    from bertops.registry import version_evidence

    tags = mv.tags
    registered = None
    try:
        registered = float(tags["bertops.test_value"])
    except (KeyError, ValueError):
        pass
    if tags.get("bertops.task", params.task.type) != params.task.type:
        return ChampionScore(None, f"the champion is a {tags['bertops.task']} model, not {params.task.type}: not "
                                   "comparable", registered)
    if tags.get("bertops.test_split_sha256") == test_sha:
        stored = version_evidence(client, mv)
        if stored.predictions:
            return ChampionScore(stored, "its per-example results at registration, on this same test split",
                                 registered)
    with tempfile.TemporaryDirectory(prefix="bertops-champion-") as tmp:
        work = Path(tmp)
        try:
            import mlflow

            # through this client's stores, not mlflow's global ones (another project may have set those)
            source = mv.source
            if source.startswith("models:/m-"):  # an MLflow 3 logged model: its artifact location
                source = client.get_logged_model(source.removeprefix("models:/")).artifact_location
            model_dir = Path(mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(work / "m"),
                                                                 tracking_uri=client.tracking_uri))
            checkpoint = _checkpoint_of(model_dir, work)
        except Exception as exc:  # noqa: BLE001 - any failure to fetch the champion is a reason, not a crash
            return ChampionScore(None, f"the champion's model could not be loaded from {mv.source}: "
                                       f"{type(exc).__name__}: {exc}"[:800], registered)
        own_params, note = params, " with the challenger's settings (the champion's params.yaml is not in its run)"
        params_file = _run_artifact(client, mv.run_id, "params.yaml", work)
        if params_file is not None:
            try:
                own_params, note = load_params(params_file), ""
            except Exception as exc:  # noqa: BLE001
                note = f" with the challenger's settings (the champion's params.yaml no longer validates: {exc})"
        if own_params.task.type != params.task.type:
            return ChampionScore(None, f"the champion's params are for {own_params.task.type}: not comparable",
                                 registered)
        try:
            champion_labels = _labels(family, _run_artifact(client, mv.run_id, "labels.json", work), checkpoint,
                                      labels)
            scored = family.score(own_params, Layout(layout.root, layout.project, model_path=checkpoint),
                                  champion_labels, rows)
        except Exception as exc:  # noqa: BLE001 - e.g. a label of today's split that the champion's head lacks
            log.warning("champion v%s could not be scored on today's test split", mv.version, exc_info=True)
            return ChampionScore(None, f"the champion could not be scored on today's test split: "
                                       f"{type(exc).__name__}: {exc}"[:800], registered)
    metrics = dict(scored.metrics)
    metric = params.task.metric
    if metric not in metrics:
        return ChampionScore(None, f"the champion's scorer gives no {metric!r}: not comparable", registered)
    metrics["metric"] = metric
    evidence = Evidence.from_reports(metrics, scored.predictions, test_sha, family.class_table_key,
                                     comparable=compared_params(tags))
    log.info("champion v%s on today's test split: %s %.4f (at registration, on its own split: %s)", mv.version,
             metric, evidence.value, registered)
    return ChampionScore(evidence, f"re-scored on this test split ({len(rows)} examples){note}", registered)
