"""Extractive QA: SQuAD v1.1/v2.0 reading with precise errors, windows over long contexts, span decoding, the
official EM/F1, and the pipeline (prepare -> train -> evaluate -> register -> predict) on a tiny model."""

import json
import random
import subprocess
import sys

import numpy as np
import pytest
import yaml

from bertops.config import parse_params
from bertops.errors import CorpusError, ParamsError
from bertops.layout import Layout
from bertops.modeling import load_tokenizer
from bertops.qa.metrics import normalize_answer, question_scores, squad_scores
from bertops.qa.squad import read_squad
from bertops.qa.windows import CLS_INDEX, best_answers, encode_questions
from bertops.tasks import get_task
from bertops.tasks.question_answering import answer_questions
from conftest import FILLER, tiny_params, write_tiny_bert

PEOPLE = ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi"]
CITIES = ["paris", "london", "berlin", "madrid", "rome", "oslo", "vienna", "lisbon"]
GLUE = ["where", "who", "does", "live", "lives", "in", "near", "someone", ".", "?"]


@pytest.fixture(scope="module")
def tiny_qa_model(tmp_path_factory):
    return write_tiny_bert(tmp_path_factory.mktemp("tiny-qa-bert"), [*FILLER, "great", *PEOPLE, *CITIES, *GLUE])


def squad_doc(paragraphs):
    return {"version": "v2.0", "data": [{"title": "t", "paragraphs": paragraphs}]}


def synthetic_squad(n_paragraphs: int, seed: int = 0, unanswerable: bool = False) -> dict:
    """Each paragraph: fillers, one person, one city; 'who ...' asks for the person, 'where ...' for the city.
    With `unanswerable`, some paragraphs have no person and their 'who' question is impossible."""
    rng = random.Random(seed)
    paragraphs = []
    for p in range(n_paragraphs):
        person, city = rng.choice(PEOPLE), rng.choice(CITIES)
        no_person = unanswerable and p % 4 == 0
        words = rng.sample(FILLER, 4) + ([] if no_person else [person]) + ["lives", "in", city, "."] + \
            rng.sample(FILLER, 3)
        context = " ".join(words)
        qas = [{"id": f"{p}-where", "question": f"where does {person} live ?",
                "answers": [{"text": city, "answer_start": context.index(f" {city} ") + 1}]}]
        if no_person:
            qas.append({"id": f"{p}-who", "question": f"who lives in {city} ?", "answers": [],
                        "is_impossible": True})
        else:
            qas.append({"id": f"{p}-who", "question": f"who lives in {city} ?",
                        "answers": [{"text": person, "answer_start": context.index(f" {person} ") + 1}]})
        paragraphs.append({"context": context, "qas": qas})
    return squad_doc(paragraphs)


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d["data"][0]["paragraphs"][1]["qas"][0]["answers"][0].update(answer_start=0),
     "data[0].paragraphs[1].qas[0].answers[0]: the context at 0 reads"),
    (lambda d: d["data"][0]["paragraphs"][2]["qas"][1].update(answers=[]),
     "data[0].paragraphs[2].qas[1]: no answers and not marked is_impossible"),
    (lambda d: d["data"][0]["paragraphs"][0]["qas"][1].update(id="0-where"), "duplicate id '0-where'"),
    (lambda d: d["data"][0]["paragraphs"][0].update(context=""), "data[0].paragraphs[0]: empty context"),
    (lambda d: d.pop("data"), "'data' (SQuAD format"),
])
def test_squad_reader_names_the_question(tmp_path, mutate, message):
    doc = synthetic_squad(3)
    mutate(doc)
    path = tmp_path / "qa.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(CorpusError) as err:
        read_squad(path)
    assert str(path) in str(err.value) and message in str(err.value)


def test_squad_reader_v2_impossible_and_bad_json(tmp_path):
    path = tmp_path / "qa.json"
    path.write_text(json.dumps(synthetic_squad(8, unanswerable=True)))
    questions = read_squad(path)
    assert len(questions) == 16 and sum(not q.answers for q in questions) == 2
    path.write_text('{"data": [\n{"paragraphs": ]}')
    with pytest.raises(CorpusError, match=r"qa.json:2: not valid JSON"):
        read_squad(path)


def test_official_normalisation_and_scores():
    assert normalize_answer("The  Eiffel-Tower!") == "eiffeltower"
    assert question_scores("the Paris", ["Paris", "in Paris"]) == (1.0, 1.0)
    em, f1 = question_scores("in central Paris", ["Paris"])
    assert em == 0.0 and f1 == pytest.approx(2 * (1 / 3) * 1 / (1 / 3 + 1))
    scores = squad_scores({"a": "Paris", "b": "", "c": "x"}, {"a": ["Paris"], "b": [], "c": []})
    assert scores["exact_match"] == pytest.approx(2 / 3)
    assert scores["has_answer_exact_match"] == 1.0 and scores["no_answer_exact_match"] == 0.5


def test_answer_in_a_later_window_is_found(tiny_qa_model):
    tokenizer = load_tokenizer(str(tiny_qa_model))
    filler = " ".join(["the movie was"] * 30)  # ~90 tokens before the answer
    context = f"{filler} alice lives in oslo . {' '.join(['plot'] * 20)}"
    start = context.index("oslo")
    rows = [{"question": "where does alice live ?", "context": context,
             "answers": {"text": ["oslo"], "answer_start": [start]}}]
    features = encode_questions(rows, tokenizer, max_length=48, doc_stride=16)
    assert len(features) > 3 and all(len(f["input_ids"]) <= 48 for f in features)
    holding = [f for f in features if f["start_positions"] != CLS_INDEX]
    assert holding and len(holding) < len(features)  # windows without the answer point at [CLS]
    for f in holding:
        assert tokenizer.decode(f["input_ids"][f["start_positions"]:f["end_positions"] + 1]) == "oslo"
    # decoding: logits that favour the answer only in one late window, and a decoy [CLS]
    starts, ends = [], []
    for f in features:
        s, e = np.zeros(len(f["input_ids"])), np.zeros(len(f["input_ids"]))
        s[CLS_INDEX] = e[CLS_INDEX] = 1.0
        if f is holding[-1]:
            s[f["start_positions"]] = e[f["end_positions"]] = 5.0
        starts.append(s)
        ends.append(e)
    assert best_answers(features, starts, ends, [context]) == ["oslo"]
    assert best_answers(features, starts, ends, [context], allow_no_answer=True, null_threshold=-100.0) == [""]
    assert best_answers(features, starts, ends, [context], allow_no_answer=True) == ["oslo"]  # 10 > 2


def test_doc_stride_must_leave_room(tiny_qa_model):
    raw = tiny_params(tiny_qa_model, task__type="question_answering", task__metric="f1")
    raw["task"]["doc_stride"] = 16  # model.max_length is 32
    with pytest.raises(ParamsError, match="task.doc_stride .16. must be less than half of model.max_length"):
        parse_params(raw)


@pytest.mark.timeout(900)
def test_qa_pipeline_through_the_flow_fits_registers_and_predicts(tmp_path, tiny_qa_model):
    """The same dvc.yaml and Prefect flow as every task: a params change plus a SQuAD file."""
    from conftest import make_pipeline_repo, run_flow

    root = tmp_path
    (root / "qa.json").write_text(json.dumps(synthetic_squad(150, unanswerable=True)))
    raw = tiny_params(tiny_qa_model, corpus__source="qa.json", task__type="question_answering",
                      task__metric="exact_match", registry__model_name="tiny-qa")
    raw["task"].update(doc_stride=8, allow_no_answer=True)
    raw["model"]["max_length"] = 48
    # the tiny model sits on a plateau (answering with any entity) for ~20 epochs before it reads the question
    # word; no early stopping here
    raw["train"].update(epochs=40, early_stopping_patience=None, lr=3e-3, batch_size=8)
    (root / "params.yaml").write_text(yaml.safe_dump(raw))
    make_pipeline_repo(root)
    result = run_flow(root)
    assert set(result["stages"].values()) == {"ran"}
    assert result["registration"]["decision"] == "champion"

    assert json.loads((root / "data" / "prepared" / "stats.json").read_text())["questions"] == 300
    layout = Layout(root)
    train_paragraphs = {json.loads(line)["paragraph"] for line in layout.split("train").open()}
    test_paragraphs = {json.loads(line)["paragraph"] for line in layout.split("test").open()}
    assert not train_paragraphs & test_paragraphs
    metrics = json.loads(layout.metrics_file.read_text())
    assert metrics["exact_match"] >= 0.9, metrics
    assert metrics["no_answer_questions"] > 0 and metrics["no_answer_exact_match"] >= 0.8

    # `bertops predict` on a held-out question that evaluate answered right gives that answer (a hand-written
    # sentence used to stand here: whether the tiny model, at 0.9 exact match, gets one such sentence right flipped
    # with the rounding of the training kernels at seed 0 while seeds 1 and 2 passed either way)
    import serving

    right = next(e for e in serving.evaluated(layout) if e["correct"] and e["gold"] and e["id"].endswith("-where"))
    row = next(r for r in serving.test_rows(layout) if r["id"] == right["id"])
    done = subprocess.run([sys.executable, "-m", "bertops.cli", "predict", "--json",
                           f"{row['question']}\t{row['context']}"], cwd=root, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1])["answer"] == right["predicted"] == right["gold"][0]

    # the scoring server: the test questions answered as evaluate answered them; a context 4x max_length is
    # read window by window
    rows, evaluated = serving.test_rows(layout), serving.evaluated(layout)
    with serving.serving_project(root, "tiny-qa") as (url, model_uri, uri):
        out = serving.served(url, [{"question": r["question"], "context": r["context"]} for r in rows])
        assert [o["answer"] for o in out] == [e["predicted"] for e in evaluated]
        # a context of 12 windows: answered as evaluation's decoding answers it, window by window (the tiny
        # model itself is weak on such a context: it picks "dull" from the filler)
        long = {"question": "where does grace live ?",
                "context": " ".join(["the plot was quite dull ."] * 24 + ["grace lives in vienna ."]
                                    + ["the plot was quite dull ."] * 24)}
        task = parse_params(raw).task
        tokenizer = load_tokenizer(str(layout.model_dir))
        assert len(encode_questions([{"answers": {"text": []}, **long}], tokenizer, raw["model"]["max_length"],
                                    task.doc_stride)) >= 4
        model = get_task("question_answering").load_trained(layout.model_dir).eval()
        expected = answer_questions(model, tokenizer, [long], max_length=raw["model"]["max_length"],
                                    doc_stride=task.doc_stride, **task.decoding())
        assert [r["answer"] for r in serving.served(url, [long])] == expected
        serving.assert_bad_request(url, {"dataframe_records": [{"question": "where ?", "context": None}]},
                                   "row 0: 'context' is missing")
