"""Token classification (NER): the CoNLL/JSONL readers, first-sub-token labels, entity-level metrics, [UNK]
coverage, and the whole pipeline (Prefect flow -> DVC stages -> registry -> predict) on a tiny model."""

import json
import random
import subprocess
import sys

import pytest
import yaml

from bertops.corpora.token_readers import read_token_examples
from bertops.errors import CorpusError
from bertops.layout import Layout
from bertops.modeling import add_tokens, load_tokenizer
from bertops.ner_metrics import entity_scores, entity_spans
from bertops.tasks.token_classification import encode_words
from bertops.modeling import IGNORE_INDEX
from bertops.vocab_coverage import vocab_coverage
from conftest import FILLER, POSITIVE, make_pipeline_repo, run_flow, tiny_params, write_tiny_bert

FIRST = ["alice", "bob", "carol", "dave", "erin", "frank"]
LAST = ["smith", "jones", "brown", "taylor"]
CITIES = ["paris", "london", "berlin", "madrid", "rome", "oslo"]


@pytest.fixture(scope="module")
def tiny_ner_model(tmp_path_factory):
    return write_tiny_bert(tmp_path_factory.mktemp("tiny-ner-bert"), [*POSITIVE, *FILLER, *FIRST, *LAST, *CITIES])


def synthetic_ner(n: int, seed: int = 0) -> list[tuple[list[str], list[str]]]:
    """Fillers with a person (first name, sometimes a surname) and/or a city; the number keeps rows unique."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        words = [(w, "O") for w in rng.sample(FILLER, rng.randint(2, 6))]
        if i % 3 != 2:
            person = [(rng.choice(FIRST), "B-person")]
            if rng.random() < 0.5:
                person.append((rng.choice(LAST), "I-person"))
            at = rng.randrange(len(words) + 1)
            words[at:at] = person
        if i % 3 != 0:
            words.insert(rng.randrange(len(words) + 1), (rng.choice(CITIES), "B-geo-loc"))
        words.append((str(i), "O"))
        rows.append(([w for w, _ in words], [t for _, t in words]))
    return rows


def write_conll(path, rows, separator="\n"):
    path.write_text(separator.join("".join(f"{w}\t{t}\n" for w, t in zip(words, tags)) for words, tags in rows))


def read(path, scheme="BIO", **kw):
    return read_token_examples(path, fmt="auto", encoding="utf-8", tokens_column="tokens", tags_column="tags",
                               scheme=scheme, **kw)


def test_conll_reader_sentences_separators_and_docstart(tmp_path):
    path = tmp_path / "c.conll"
    # WNUT-16 separates tweets by lines holding only a TAB; CoNLL-2003 has 4 columns and -DOCSTART-
    path.write_text("-DOCSTART- -X- O O\n\nEU NNP B-NP B-ORG\nrejects VBZ B-VP O\n\t\nPeter\tB-PER\n"
                    "Blackburn\tI-PER\n\n\n")
    sentences = read(path)
    assert [s.tokens for s in sentences] == [("EU", "rejects"), ("Peter", "Blackburn")]
    assert [s.tags for s in sentences] == [("B-ORG", "O"), ("B-PER", "I-PER")]
    assert [s.line for s in sentences] == [3, 6]


@pytest.mark.parametrize("content, scheme, line, message", [
    ("a\tO\nb\n", "BIO", 2, "expected 'token<TAB>tag'"),
    ("a\tO\n\nb\tB-x\nc\tE-x\n", "BIO", 4, "not in the BIO scheme"),
    ("a\tS-x\nb\tO\nc\tX-y\n", "BIOES", 3, "not in the BIOES scheme"),
    ("a\tPER\n", "BIO", 1, "not in the BIO scheme"),
])
def test_conll_reader_names_file_and_line(tmp_path, content, scheme, line, message):
    path = tmp_path / "bad.conll"
    path.write_text(content)
    with pytest.raises(CorpusError) as err:
        read(path, scheme)
    assert f"bad.conll:{line}:" in str(err.value) and message in str(err.value)


def test_jsonl_reader_checks_lengths_types_and_labels(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('{"tokens": ["a", "b"], "tags": ["B-x", "I-x"]}\n{"tokens": ["a"], "tags": ["O", "O"]}\n')
    with pytest.raises(CorpusError, match=r"c.jsonl:2: 1 tokens but 2 tags"):
        read(path)
    path.write_text('{"tokens": "a b", "tags": ["O"]}\n')
    with pytest.raises(CorpusError, match=r"c.jsonl:1: field 'tokens' must be a list of strings"):
        read(path)
    path.write_text('{"tokens": ["a"], "tags": ["B-y"]}\n')
    with pytest.raises(CorpusError, match=r"c.jsonl:1: unknown tag 'B-y'"):
        read(path, labels=["O", "B-x", "I-x"])
    path.write_text("")
    with pytest.raises(CorpusError, match="no sentences"):
        read(path)


def test_labels_on_first_subtoken_only(tiny_ner_model):
    tokenizer = load_tokenizer(str(tiny_ner_model))
    rows = [{"tokens": ["alice", "42", "paris"], "tags": ["B-person", "O", "B-geo-loc"]}]
    labels = ["O", "B-geo-loc", "B-person"]
    feature = encode_words(rows, tokenizer, labels, max_length=32)[0]
    pieces = tokenizer.convert_ids_to_tokens(feature["input_ids"])
    assert pieces == ["[CLS]", "alice", "4", "##2", "paris", "[SEP]"]
    assert feature["labels"] == [IGNORE_INDEX, 2, 0, IGNORE_INDEX, 1, IGNORE_INDEX]


def test_entity_scores_are_strict_spans():
    gold = [["B-person", "I-person", "O", "B-geo-loc"]]
    assert entity_scores(gold, [["B-person", "I-person", "O", "B-geo-loc"]])["f1"] == 1.0
    partial = entity_scores(gold, [["B-person", "O", "O", "B-geo-loc"]])  # a wrong boundary is a miss
    assert partial["precision"] == pytest.approx(0.5) and partial["recall"] == pytest.approx(0.5)
    assert partial["per_type"]["geo-loc"]["f1"] == 1.0 and partial["per_type"]["person"]["f1"] == 0.0
    assert entity_spans(["I-person", "I-person"]) == set()  # strict IOB2: no entity starts with I-
    assert entity_spans(["S-x", "B-y", "E-y"], "BIOES") == {("x", 0, 1), ("y", 1, 3)}


def test_unknown_characters_are_counted_and_can_be_added(tiny_ner_model):
    from transformers import AutoModelForTokenClassification

    tokenizer = load_tokenizer(str(tiny_ner_model))
    coverage = vocab_coverage(tokenizer, [["alice", "🔥", "paris"], ["x🔥y", "rome"]])
    assert coverage["uncovered_characters"]["🔥"] == 2
    assert coverage["words_with_unk"] == 2 and coverage["unk_word_ratio"] == pytest.approx(0.4)
    model = AutoModelForTokenClassification.from_pretrained(tiny_ner_model, num_labels=3)
    before = model.get_input_embeddings().weight.shape[0]
    added = add_tokens(model, tokenizer, list(coverage["uncovered_characters"]))
    assert added > 0 and tokenizer.unk_token not in tokenizer.tokenize("alice 🔥 paris")
    assert model.get_input_embeddings().weight.shape[0] >= before + added


@pytest.mark.timeout(900)
def test_ner_pipeline_through_the_flow_registers_and_predicts(tmp_path, tiny_ner_model):
    """Switching task is a params change plus a corpus: the same dvc.yaml and flow train and register NER."""
    root = tmp_path
    rows = synthetic_ner(300)
    write_conll(root / "tweets.conll", rows, separator="\t\n")  # WNUT-style separators
    params = tiny_params(tiny_ner_model, corpus__source="tweets.conll", task__type="token_classification",
                         task__metric="f1", registry__model_name="tiny-ner")
    params["train"].update(epochs=12, early_stopping_patience=4)
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    make_pipeline_repo(root)

    result = run_flow(root)
    assert set(result["stages"].values()) == {"ran"}
    assert result["registration"]["decision"] == "champion"

    metrics = json.loads((root / "reports" / "metrics.json").read_text())
    assert metrics["metric"] == "f1" and metrics["f1"] >= 0.9
    assert set(metrics["per_type"]) == {"person", "geo-loc"}
    assert json.loads((root / "data" / "prepared" / "labels.json").read_text()) == [
        "O", "B-geo-loc", "B-person", "I-person"]
    predictions = [json.loads(line) for line in (root / "reports" / "test_predictions.jsonl").open()]
    assert sum(p["gold_entities"] for p in predictions) == metrics["entities"]
    val_curve = (root / "reports" / "plots" / "val_metrics.csv").read_text().splitlines()
    assert val_curve[0] == "epoch,step,val_loss,val_f1,val_precision,val_recall"

    predicted = subprocess.run(
        [sys.executable, "-m", "bertops.cli", "predict", "--json", "the movie was carol jones and the story berlin 7"],
        cwd=root, capture_output=True, text=True)
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    entities = json.loads(predicted.stdout.strip().splitlines()[-1])["entities"]
    # words of the tiny vocabulary only: "with" and "in" were [UNK], which no training sentence has, and one
    # model tagged "with" as a person
    assert {(e["type"], e["text"]) for e in entities} == {("person", "carol jones"), ("geo-loc", "berlin")}

    # the scoring server: the test sentences' words tagged as evaluate tagged them; a text is cut at whitespace;
    # a sentence 4x max_length is answered with a tag for every word
    import serving

    layout = Layout(root)
    rows, evaluated = serving.test_rows(layout), serving.evaluated(layout)
    with serving.serving_project(root, "tiny-ner") as (url, model_uri, uri):
        out = serving.served(url, [{"words": r["tokens"]} for r in rows])
        assert [o["tags"] for o in out] == [e["predicted"] for e in evaluated]
        text = "the movie was carol jones and the story berlin 7"
        (row,) = serving.served(url, [{"text": text}])
        assert {(e["type"], e["text"], text[e["start"]:e["end"]]) for e in row["entities"]} == {
            ("person", "carol jones", "carol jones"), ("geo-loc", "berlin", "berlin")}
        long = serving.long_text(params["model"]["max_length"], FILLER).split()
        (row,) = serving.served(url, [{"words": long}])
        assert len(row["tags"]) == len(long)
        serving.assert_bad_request(url, {"dataframe_records": [{"words": []}]}, "row 0: 'words' must be")
        serving.assert_bad_request(url, {"dataframe_records": [{"words": ["carol jones"]}]},
                                   "strings without whitespace")
        serving.assert_bad_request(url, {"dataframe_records": [{"text": " "}]}, "row 0: give 'words'")
    serving.assert_requirements_cover_imports(model_uri, uri, [{"text": text}])
