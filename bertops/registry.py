"""The MLflow Model Registry side of bertops: who is champion, how the alias moves (gate, manual promotion,
rollback), and looking versions up by lineage."""

from __future__ import annotations

import contextlib
import datetime
import getpass
import json
import os
import random
import socket
import tempfile
import time
import uuid
from pathlib import Path

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from bertops.errors import BertopsError
from bertops.gate import Evidence

CHAMPION, CHALLENGER = "champion", "challenger"
HISTORY_TAG = "bertops.champion_history"  # on the registered model: JSON list of versions, oldest first


def current_champion(client: MlflowClient, name: str):
    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise


def read_predictions(path: Path) -> list[dict]:
    with Path(path).open() as fh:  # lines end at \n only (a text may hold U+2028, which splitlines would cut at)
        return [json.loads(line) for line in fh if line.strip()]


def version_evidence(client: MlflowClient, mv) -> Evidence:
    """A registered version's test results: its tags, and the reports/metrics.json and per-example
    reports/test_predictions.jsonl its run carries (None when it has none: registered by an older bertops)."""
    tags = mv.tags
    metric = tags.get("bertops.metric")
    metrics = {"metric": metric, metric: float(tags.get("bertops.test_value", "nan"))}
    predictions = None
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("metrics.json", "test_predictions.jsonl"):
            try:
                path = client.download_artifacts(mv.run_id, f"reports/{name}", dst_path=tmp)
            except (MlflowException, OSError):
                continue
            if name == "metrics.json":
                metrics = {**json.loads(Path(path).read_text()), **metrics}
            else:
                predictions = read_predictions(path)
    table_key = None
    if tags.get("bertops.task"):
        from bertops.tasks import get_task

        table_key = get_task(tags["bertops.task"]).class_table_key
    from bertops.rescoring import compared_params

    return Evidence.from_reports(metrics, predictions, tags.get("bertops.test_split_sha256", "unknown"), table_key,
                                 compared_params(tags))


LOCK_SUFFIX = ".bertops-gate-lock"


@contextlib.contextmanager
def gate_lock(client: MlflowClient, name: str, wait_s: float = 600, stale_s: float = 1800):
    """Serialise gate decisions (and manual promote/rollback) for one registered model across processes and
    machines sharing the registry.

    MLflow has no compare-and-set for aliases, but creating a registered model is atomic (its name is unique in
    the registry's database), so the lock is a registered model named `<name>.bertops-gate-lock` that exists
    while a decision is being made. A lock older than `stale_s` (its holder died) is broken by whoever first
    creates its breaker, `<lock>.broken-<since>`, a name unique to that one lock: two waiters that both find it
    stale cannot both delete (the second would delete the first one's fresh lock)."""
    lock = name + LOCK_SUFFIX
    holder = f"{getpass.getuser()}@{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    deadline = time.monotonic() + wait_s
    while True:
        since = repr(time.time())
        try:
            client.create_registered_model(
                lock, tags={"bertops.lock_holder": holder, "bertops.lock_since": since},
                description=f"bertops: a promotion decision for {name!r} is in progress (deleted when done)")
            break
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        try:
            tags = client.get_registered_model(lock).tags
            held_since = tags.get("bertops.lock_since", "inf")
            if time.time() - float(held_since) > stale_s and _claim_break(client, lock, held_since):
                if client.get_registered_model(lock).tags.get("bertops.lock_since") == held_since:
                    client.delete_registered_model(lock)  # the holder died mid-decision
                continue
        except MlflowException:
            continue  # released between our calls: try again at once
        if time.monotonic() > deadline:
            raise BertopsError(f"another registration of {name!r} has held the promotion lock for over {wait_s:.0f} s "
                               f"({lock!r} in the registry); if no registration is running, delete that model")
        time.sleep(0.2 + random.random() * 0.3)
    try:
        yield
    finally:
        client.delete_registered_model(lock)


def _claim_break(client: MlflowClient, lock: str, held_since: str) -> bool:
    """Whether this process is the one that breaks the stale lock taken at `held_since`."""
    try:
        client.create_registered_model(f"{lock}.broken-{held_since.replace('.', '-')}",
                                       description="bertops: marks a stale promotion lock as broken (kept)")
        return True
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        return False


def champion_history(client: MlflowClient, name: str) -> list[str]:
    return json.loads(client.get_registered_model(name).tags.get(HISTORY_TAG, "[]"))


def move_champion(client: MlflowClient, name: str, version: str) -> None:
    """Point `champion` at `version` and append it to the history that rollback walks back."""
    client.set_registered_model_alias(name, CHAMPION, str(version))
    history = champion_history(client, name)
    if not history or history[-1] != str(version):
        history.append(str(version))
    client.set_registered_model_tag(name, HISTORY_TAG, json.dumps(history))


def _get_version(client: MlflowClient, name: str, version: str):
    try:
        return client.get_model_version(name, str(version))
    except MlflowException:
        raise BertopsError(f"no version {version} of registered model {name!r}") from None


def promote(client: MlflowClient, name: str, version: str, reason: str) -> None:
    """Manual override of the gate; who, why and when are recorded on the version."""
    if not reason.strip():
        raise BertopsError("promote: --reason must say why the gate is overridden")
    _get_version(client, name, version)
    with gate_lock(client, name):  # not between a running gate's comparison and its alias move
        move_champion(client, name, version)
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    for key, value in {"bertops.decision": CHAMPION, "bertops.manual_promotion_by": getpass.getuser(),
                       "bertops.manual_promotion_reason": reason, "bertops.manual_promotion_at": now}.items():
        client.set_model_version_tag(name, str(version), key, value)


def rollback(client: MlflowClient, name: str) -> str:
    """Move `champion` back to the previous champion; returns that version."""
    with gate_lock(client, name):  # as the gate does: history and alias read and written by one process at a time
        history = champion_history(client, name)
        current = current_champion(client, name)
        if current is not None and history and history[-1] == str(current.version):
            history.pop()
        if not history:
            raise BertopsError(f"rollback: {name!r} has no earlier champion to go back to")
        previous = history[-1]
        client.set_registered_model_alias(name, CHAMPION, previous)
        client.set_registered_model_tag(name, HISTORY_TAG, json.dumps(history))
    if current is not None:
        client.set_model_version_tag(name, str(current.version), "bertops.rolled_back_to", previous)
    return previous


def lineage_of(client: MlflowClient, name: str, version: str) -> dict[str, str]:
    tags = _get_version(client, name, version).tags
    return {k: v for k, v in sorted(tags.items()) if k.startswith("bertops.")}


def versions_trained_on(client: MlflowClient, data_hash: str) -> list[tuple[str, str]]:
    """(model name, version) of every version whose raw or prepared data has this DVC md5."""
    found = set()
    for key in ("bertops.data_raw_md5", "bertops.data_prepared_md5"):
        for mv in client.search_model_versions(f"tags.`{key}` = '{data_hash}'"):
            found.add((mv.name, str(mv.version)))
    return sorted(found, key=lambda nv: (nv[0], int(nv[1])))


def _alias_version(client: MlflowClient, name: str, alias: str):
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def review(client: MlflowClient, name: str, version: str | None = None) -> str:
    """Challenger (or VERSION) against the champion, as a reviewer reads it in a terminal: the metric, the gate's
    checks with their numbers, and per-class F1 side by side."""
    champion = current_champion(client, name)
    candidate = _get_version(client, name, version) if version else _alias_version(client, name, CHALLENGER)
    if candidate is None:
        versions = client.search_model_versions(f"name = '{name}'")
        if not versions:
            raise BertopsError(f"no registered model {name!r} (or it has no versions)")
        candidate = max(versions, key=lambda mv: int(mv.version))
    lines = [f"{name}: reviewing v{candidate.version} against champion "
             f"{'v' + str(champion.version) if champion else '(none)'}"]
    shown = [("candidate", candidate)] + ([("champion", champion)] if champion and champion.version != candidate.version else [])
    tags = candidate.tags
    metric = tags.get("bertops.metric", "?")
    for role, mv in shown:
        lines.append(f"  {role:<9} v{mv.version}: test {metric} {mv.tags.get('bertops.test_value', '?')}  "
                     f"decision {mv.tags.get('bertops.decision', '?')}  run {mv.run_id}")
    if "bertops.gate.champion_value" in tags:  # the champion it was gated on, scored on the candidate's test split
        lines.append(f"  champion v{tags.get('bertops.gate.champion_version', '?')} on the candidate's test split: "
                     f"{metric} {float(tags['bertops.gate.champion_value']):.4f} (at its registration, on its own "
                     f"split: {tags.get('bertops.gate.champion_registered_value', '?')})")
    lines.append(f"  decision: {tags.get('bertops.decision', '?')} - {tags.get('bertops.decision_reason', '')}")
    for key in sorted(k for k in tags if k.startswith("bertops.gate.")):
        lines.append(f"    {key.removeprefix('bertops.gate.')}: {tags[key]}")
    per_class = {role: version_evidence(client, mv).class_f1 for role, mv in shown}
    if per_class.get("candidate"):
        lines.append(f"  {'class / type':<20} {'champion':>9} {'candidate':>9} {'change':>8}")
        for label, value in sorted(per_class["candidate"].items()):
            before = per_class.get("champion", {}).get(label)
            change = f"{value - before:+.4f}" if before is not None else ""
            lines.append(f"  {label:<20} {'' if before is None else f'{before:.4f}':>9} {value:>9.4f} {change:>8}")
    return "\n".join(lines)


def training_inputs(root: Path, params) -> dict[str, str]:
    """What a training run is made of, as version tags name it: the prepared data (DVC md5), the params, the code
    of the training and scoring stages, and the base model's files."""
    from bertops import lineage
    from bertops.config import params_hash

    return {"bertops.data_prepared_md5": lineage.dvc_out_hashes(root).get("data/prepared", "unknown"),
            "bertops.params_hash": params_hash(params),
            "bertops.code_sha256": lineage.code_sha256(root),
            "bertops.base_model_sha256": lineage.base_model_sha256(params.model.name_or_path, params.model.revision,
                                                                   root)}


def champion_with_same_inputs(client: MlflowClient, name: str, root: Path, params) -> tuple[str | None, list[str]]:
    """(the champion's version, []) when it was trained on exactly these inputs, so that retraining would only
    repeat it; else (None, what differs). A champion registered before a tag was recorded differs in it."""
    champion = current_champion(client, name)
    if champion is None:
        return None, ["no champion"]
    now = training_inputs(root, params)
    differ = [key.removeprefix("bertops.") for key, value in now.items()
              if value == "unknown" or champion.tags.get(key) != value]
    return (None, differ) if differ else (str(champion.version), [])
