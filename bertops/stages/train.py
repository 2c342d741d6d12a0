"""Stage 3, train: Lightning fine-tuning; the best checkpoint in Hugging Face format under models/best."""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import shutil
import time

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint, TQDMProgressBar
from mlflow import MlflowClient

from bertops import tracking
from bertops.config import Params, flat_params, params_hash
from bertops.errors import BertopsError
from bertops.files import write_atomic
from bertops.layout import Layout
from bertops.modeling import check_max_length, load_tokenizer, resolve_model_path, save_trained
from bertops.tasks import task_of
from bertops.training import distributed
from bertops.training.mlflow_logging import MlflowMetricsLogger
from bertops.training.recipe import task_data, trainer_kwargs
from bertops.training.spool import RunSpool
from bertops.training.strategies import GradualUnfreezing, apply_strategy, encoder_parts, parameter_counts

log = logging.getLogger(__name__)


def _fingerprint(params: Params, layout: Layout) -> str:
    """Identifies a training job: same params and same prepared data -> an interrupted run may resume."""
    digest = hashlib.sha256(params_hash(params).encode())
    for name in ("train", "val"):
        digest.update(layout.split(name).read_bytes())
    return digest.hexdigest()[:16]


def _readable_checkpoint(path) -> bool:
    """A kill during a checkpoint write can leave a truncated file: then start over rather than crash."""
    if not path.is_file():
        return False
    try:
        torch.load(path, map_location="cpu", weights_only=False, mmap=True)
        return True
    except Exception as exc:  # noqa: BLE001 - any unreadable checkpoint means the same thing
        log.warning("cannot resume from %s (%s): starting over", path, exc)
        return False


def _write_history(client: MlflowClient, run_id: str, layout: Layout, val_keys: tuple[str, ...]) -> None:
    """Learning curves for DVC plots, read back from MLflow (so a resumed run's curve is complete)."""
    plots = layout.reports_dir / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    with (plots / "train_loss.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["step", "train_loss"])
        for m in sorted(client.get_metric_history(run_id, "train_loss"), key=lambda m: m.step):
            writer.writerow([m.step, f"{m.value:.6f}"])
    val = {key: {m.step: m.value for m in client.get_metric_history(run_id, key)}
           for key in val_keys}
    steps = sorted(set().union(*[set(v) for v in val.values()]))
    with (plots / "val_metrics.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["epoch", "step", *val])
        for epoch, step in enumerate(steps, start=1):
            writer.writerow([epoch, step, *(f"{val[k].get(step, float('nan')):.6f}" for k in val)])


def train(params: Params, layout: Layout, run_tags: dict[str, str] | None = None) -> dict | None:
    """Fine-tune; `run_tags` go on the MLflow run (a study passes `mlflow.parentRunId` to nest its runs). Returns the
    run's summary, or None in a training process other than rank zero."""
    hp = params.train
    # before the model is built: the new head's initial weights come from this seed too
    L.seed_everything(hp.seed, workers=True, verbose=False)
    family = task_of(params)
    labels = json.loads(layout.labels_file.read_text())  # the label space prepare found (the family's format)
    check_max_length(params.model.name_or_path, params.model.revision, params.model.max_length)
    tokenizer = load_tokenizer(params.model.name_or_path, params.model.revision)
    model, new_params = family.load_model(params, labels, tokenizer, layout)
    model, new_params = apply_strategy(model, new_params, params.finetune, family.name)
    counts = parameter_counts(model)
    log.info("finetune.encoder=%s: %d of %d parameters train", params.finetune.encoder, counts["trainable_params"],
             counts["total_params"])

    rank_zero = distributed.is_rank_zero()
    work = layout.work_dir / "train" / _fingerprint(params, layout)
    state_file, last_ckpt = work / "state.json", work / "ckpt" / "last.ckpt"
    client = experiment_id = spool = None
    if rank_zero:
        experiment_id = tracking.configure(params, layout)
        client = MlflowClient()
        if (work / FINISHED).is_file() and layout.model_dir.is_dir():
            # trained before, but MLflow was unreachable at the end: ship what waits, finish, do not train again
            return _finish(json.loads((work / FINISHED).read_text()), params, layout, client, work, experiment_id)
        resume = hp.resume and state_file.is_file() and _readable_checkpoint(last_ckpt)
        if resume:
            run_id = json.loads(state_file.read_text())["run_id"]
            spool = RunSpool(work / "spool", client, run_id)  # ships what a killed run left first
            spool.status("RUNNING")
            log.info("resuming MLflow run %s from %s", run_id, last_ckpt)
        else:
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir(parents=True)
            # the one synchronous call: the run's id comes from the server (it fails before any training)
            run = client.create_run(experiment_id, run_name=f"train-{params.registry.model_name}",
                                    tags={"bertops.stage": "train", "bertops.base_model": params.model.name_or_path,
                                          "bertops.params_hash": params_hash(params), **(run_tags or {})})
            run_id = run.info.run_id
            spool = RunSpool(work / "spool", client, run_id)
            spool.params({**{k: v[:6000] for k, v in flat_params(params).items()},
                          "model.resolved_path": resolve_model_path(params.model.name_or_path)})
        distributed.announce(state_file, {"run_id": run_id, "resume": resume})
    else:  # another rank of a multi-process run: rank zero owns the MLflow run and the work directory
        state = distributed.await_announcement(state_file)
        run_id, resume = state["run_id"], state["resume"]

    data = task_data(family, params, {name: layout.split(name) for name in ("train", "val")}, tokenizer, labels)
    module = family.build_module(model, new_params, params)
    monitor = f"val_{params.task.metric}"
    mode = family.metric_mode(params.task.metric)
    checkpoint = ModelCheckpoint(dirpath=work / "ckpt", filename="best", monitor=monitor, mode=mode, save_top_k=1,
                                 enable_version_counter=False)
    # the resume point, after every validation: not `save_last=True`, which since Lightning 2.6 writes last.ckpt only
    # when the best one improves, so a kill after the metric plateaus would redo every epoch since the best
    latest = ModelCheckpoint(dirpath=last_ckpt.parent, filename=last_ckpt.stem, monitor=None, save_top_k=1,
                             enable_version_counter=False)
    callbacks = [checkpoint, latest, TQDMProgressBar(refresh_rate=10)]
    if rank_zero:
        callbacks.append(MlflowMetricsLogger(spool, log_every_n_steps=params.tracking.log_every_n_steps,
                                             flush_every_n_steps=params.tracking.flush_every_n_steps))
    if params.finetune.gradual_unfreezing:
        callbacks.append(GradualUnfreezing(encoder_parts(model)))
    if hp.early_stopping_patience:
        callbacks.append(EarlyStopping(monitor=monitor, mode=mode, patience=hp.early_stopping_patience))
    kwargs = trainer_kwargs(params)
    precision = kwargs["precision"]
    trainer = L.Trainer(**kwargs, callbacks=callbacks, default_root_dir=str(work))
    started = time.perf_counter()
    try:
        trainer.fit(module, datamodule=data, ckpt_path=str(last_ckpt) if resume else None)
    except BaseException:
        if rank_zero:
            spool.status("FAILED")  # the checkpoint and the spool stay for a resume
            spool.drain(min(params.tracking.ship_timeout_s, 30))
            spool.close()
        raise
    fit_seconds = time.perf_counter() - started
    if not rank_zero:
        return None  # rank zero exports, logs and reports
    if trainer.interrupted:  # Lightning turns Ctrl-C into a graceful stop: keep the checkpoint, export nothing
        spool.status("KILLED")
        spool.drain(min(params.tracking.ship_timeout_s, 30))
        spool.close()
        raise BertopsError(f"training interrupted; re-run the train stage to resume from {last_ckpt}")

    best = torch.load(checkpoint.best_model_path, map_location="cpu", weights_only=False)
    module.load_state_dict(best["state_dict"])
    family.finalize(module.model, tokenizer, params, layout)  # e.g. decision thresholds chosen on validation
    if layout.model_dir.exists():
        shutil.rmtree(layout.model_dir)
    save_trained(module.model, tokenizer, layout.model_dir, params.model.name_or_path, params.model.revision)
    family.after_save(params, layout)

    summary = {
        "best_val_" + params.task.metric: float(checkpoint.best_model_score),
        "best_epoch": int(best["epoch"]) + 1,
        "epochs_trained": trainer.current_epoch,
        "fit_seconds": round(fit_seconds, 1),
        "precision": precision,
        "processes": trainer.world_size,
        **counts,
        "checkpoint_mb": round(sum(f.stat().st_size for f in layout.model_dir.rglob("*") if f.is_file()) / 2**20, 2),
        "train_examples": len(data.splits["train"]),
        "train_real_tokens_per_s": round(data.splits["train"].real_tokens() * trainer.current_epoch / fit_seconds, 1)
        if not resume else None,
    }
    spool.metrics([(k, float(v), int(time.time() * 1000), trainer.global_step)
                   for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)])
    spool.tags({"bertops.precision": precision})
    spool.status("FINISHED")
    finished = {"run_id": run_id, **summary, "val_metrics": list(module.VAL_METRICS)}
    write_atomic(work / FINISHED, json.dumps(finished, indent=1) + "\n")  # the checkpoint is saved: never again
    shutil.rmtree(work / "ckpt", ignore_errors=True)
    return _finish(finished, params, layout, client, work, experiment_id, spool)


FINISHED = "finished.json"  # in the work directory: training ended and models/best is written


def _finish(finished: dict, params: Params, layout: Layout, client: MlflowClient, work, experiment_id,
            spool: RunSpool | None = None) -> dict:
    """Ship what the spool holds (within tracking.ship_timeout_s), then the learning curves and the train-run
    record; if MLflow is still unreachable, fail with the spool kept, so that a re-run finishes here."""
    run_id = finished["run_id"]
    spool = spool or RunSpool(work / "spool", client, run_id)
    shipped = spool.drain(params.tracking.ship_timeout_s)
    left = spool.pending()
    spool.close()
    if not shipped:
        raise BertopsError(
            f"training finished and {layout.model_dir} is saved, but the tracking server "
            f"{tracking.tracking_uri(params, layout.project_root)} did not take {left} spooled records within "
            f"tracking.ship_timeout_s = {params.tracking.ship_timeout_s:g} s (they wait in {spool.file}); re-run "
            f"the train stage once it is back: it ships them and finishes run {run_id} without training again")
    _write_history(client, run_id, layout, tuple(finished["val_metrics"]))
    tracking.write_train_run(layout, run_id, experiment_id)
    shutil.rmtree(work, ignore_errors=True)
    summary = {k: v for k, v in finished.items() if k != "val_metrics"}
    log.info("training done: %s", summary)
    return summary
