"""The MLflow Model Registry side of bertops: who is champion, how the alias moves (gate, manual promotion,
rollback), and looking versions up by lineage."""

from __future__ import annotations

import datetime
import getpass
import json

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from bertops.errors import BertopsError

CHAMPION, CHALLENGER = "champion", "challenger"
HISTORY_TAG = "bertops.champion_history"  # on the registered model: JSON list of versions, oldest first


def current_champion(client: MlflowClient, name: str):
    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise


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
    move_champion(client, name, version)
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    for key, value in {"bertops.decision": CHAMPION, "bertops.manual_promotion_by": getpass.getuser(),
                       "bertops.manual_promotion_reason": reason, "bertops.manual_promotion_at": now}.items():
        client.set_model_version_tag(name, str(version), key, value)


def rollback(client: MlflowClient, name: str) -> str:
    """Move `champion` back to the previous champion; returns that version."""
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
