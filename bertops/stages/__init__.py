"""The pipeline's stages: what dvc.yaml, the Prefect flows and the CLI run, by name."""

from __future__ import annotations

from pathlib import Path

STAGE_FUNCTIONS = {  # stage name -> (module, function); imported lazily so `--help` stays fast
    "import": ("bertops.stages.import_corpus", "import_corpus"),
    "prepare": ("bertops.stages.prepare", "prepare"),
    "train": ("bertops.stages.train", "train"),
    "evaluate": ("bertops.stages.evaluate", "evaluate"),
    "register": ("bertops.stages.register", "register"),
}


def run_stage(name: str, params_path: Path, root: Path):
    """Validate the params, then run stage `name` on the project at `root`."""
    import importlib

    from bertops.config import load_params
    from bertops.layout import Layout

    params = load_params(params_path)  # validated before any work starts
    module, function = STAGE_FUNCTIONS[name]
    return getattr(importlib.import_module(module), function)(params, Layout(Path(root).resolve()))
