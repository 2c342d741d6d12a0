"""Sentence-pair classification: one sequence with [SEP] and segment ids, the longer side truncated first,
and a pair model trained, registered and queried with {text, text_pair} inputs."""

import json
import random

import mlflow
import pytest
import yaml

from bertops import tracking
from bertops.config import load_params
from bertops.layout import Layout
from bertops.modeling import load_tokenizer
from bertops.stages.evaluate import evaluate
from bertops.stages.import_corpus import import_corpus
from bertops.stages.prepare import prepare
from bertops.stages.register import register
from bertops.stages.train import train
from bertops.tasks.sequence_classification import encode_sequences
from bertops.training.data import EncodedSplit

from conftest import FILLER, NEGATIVE, POSITIVE, tiny_params


def test_pair_encoding_has_segments_and_trims_the_longer_side(tiny_model_dir):
    tokenizer = load_tokenizer(str(tiny_model_dir))
    long_a = " ".join(["movie"] * 40)
    rows = [{"text": long_a, "text_pair": "great film", "label": "x"},
            {"text": "great film", "text_pair": long_a, "label": "y"}]
    split = EncodedSplit(encode_sequences(rows, tokenizer, ["x", "y"], max_length=16))
    for i, feature in enumerate(split.features):
        ids, segments = feature["input_ids"], feature["token_type_ids"]
        assert len(ids) == 16
        tokens = tokenizer.convert_ids_to_tokens(ids)
        assert tokens[0] == "[CLS]" and tokens.count("[SEP]") == 2 and tokens[-1] == "[SEP]"
        first_sep = tokens.index("[SEP]")
        assert set(segments[: first_sep + 1]) == {0} and set(segments[first_sep + 1:]) == {1}
        short_side = tokens[first_sep + 1:-1] if i == 0 else tokens[1:first_sep]
        assert short_side == ["great", "film"]  # only the long side lost tokens
    assert split.features[0]["labels"] == 0 and split.features[1]["labels"] == 1


def distractor_pairs(n: int, seed: int = 0) -> list[dict]:
    """The label is the polarity of the second sentence; the first carries a sentiment word of random polarity.
    A model that does not tell the segments apart sees two sentiment words and cannot beat ~0.75."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        pol_a, pol_b = rng.random() < 0.5, rng.random() < 0.5
        a = " ".join(rng.sample(FILLER, 3) + [rng.choice(POSITIVE if pol_a else NEGATIVE)])
        b = " ".join([rng.choice(POSITIVE if pol_b else NEGATIVE)] + rng.sample(FILLER, 3))
        rows.append({"premise": f"{a} {i}", "hypothesis": b, "label": "positive" if pol_b else "negative"})
    return rows


@pytest.mark.timeout(600)
def test_pair_model_trains_registers_and_predicts(tmp_path, tiny_model_dir, capsys):
    (tmp_path / "pairs.jsonl").write_text("\n".join(json.dumps(r) for r in distractor_pairs(600)) + "\n")
    raw = tiny_params(tiny_model_dir, corpus__source="pairs.jsonl", corpus__text_column="premise",
                      corpus__text_pair_column="hypothesis", corpus__label_column="label",
                      registry__model_name="tiny-pairs")
    raw["train"].update({"epochs": 20, "early_stopping_patience": 5})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    params, layout = load_params(tmp_path / "params.yaml"), Layout(tmp_path)
    import_corpus(params, layout)
    prepare(params, layout)
    train(params, layout)
    metrics = evaluate(params, layout)
    assert metrics["accuracy"] >= 0.9, metrics  # ignoring which segment a word is in caps it near 0.75
    assert register(params, layout)["decision"] == "champion"

    tracking.configure(params, layout)
    model = mlflow.pyfunc.load_model("models:/tiny-pairs@champion")
    out = model.predict([{"text": "the movie was awful", "text_pair": "brilliant and charming"},
                         {"text": "the movie was great", "text_pair": "awful and dull"}])
    assert list(out["label"]) == ["positive", "negative"]

    # the scoring server: the test pairs as evaluate predicted them; a row without its second text is a 400
    import serving
    from conftest import FILLER

    rows, evaluated = serving.test_rows(layout), serving.evaluated(layout)
    with serving.serving_project(tmp_path, "tiny-pairs") as (url, model_uri, uri):
        out = serving.served(url, [{"text": r["text"], "text_pair": r["text_pair"]} for r in rows])
        assert [o["label"] for o in out] == [e["predicted"] for e in evaluated]
        assert max(abs(o["probability"] - e["probability"]) for o, e in zip(out, evaluated)) < 1e-4
        long = serving.long_text(params.model.max_length, FILLER)
        assert len(serving.served(url, [{"text": long, "text_pair": long}])) == 1
        serving.assert_bad_request(url, {"dataframe_records": [{"text": "a", "text_pair": "b"}, {"text": "c"}]},
                                   "row 1: 'text_pair' is missing (this model takes sentence pairs)")
        serving.assert_bad_request(url, {"dataframe_records": [{"text": "a", "text_pair": ""}]},
                                   "row 0: 'text_pair' is empty")
        serving.assert_bad_request(url, {"inputs": ["just one text"]}, "text_pair")

    from bertops.cli import main

    capsys.readouterr()  # drop what training printed
    code = main(["--root", str(tmp_path), "--params", str(tmp_path / "params.yaml"), "predict", "--pairs", "--json",
                 "the movie was dull\tbrilliant and charming", "the film was superb\tboring and bland"])
    assert code == 0
    out = capsys.readouterr().out
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert [r["label"] for r in rows] == ["positive", "negative"], out
    assert main(["--root", str(tmp_path), "--params", str(tmp_path / "params.yaml"), "predict", "--pairs",
                 "no tab here"]) == 2
    assert "has no TAB" in capsys.readouterr().err
