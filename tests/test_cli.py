"""The command line as users type it: global options before or after the command, --version, examples in every
--help, and predict's inputs and outputs (the registered-model side is in tests/test_pipeline_tiny.py)."""

import csv
import json
from pathlib import Path

import pytest

import bertops
from bertops.cli import EXAMPLES, build_parser, main
from bertops.errors import BertopsError
from bertops.predict import read_inputs, write_predictions


@pytest.mark.parametrize("argv", [
    ["--params", "p.yaml", "--root", "r", "check-params"],
    ["check-params", "--params", "p.yaml", "--root", "r"],
    ["--root", "r", "check-params", "--params", "p.yaml"],
    ["stage", "train", "--params", "p.yaml", "--root", "r"],
    ["predict", "some text", "--root", "r", "--params", "p.yaml"],
])
def test_params_and_root_go_before_or_after_the_command(argv):
    args = build_parser().parse_args(argv)
    assert args.params == Path("p.yaml") and args.root == Path("r")


def test_defaults_when_not_given():
    args = build_parser().parse_args(["check-params"])
    assert args.params == Path("params.yaml") and args.root == Path(".")


def test_version(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.strip() == f"bertops {bertops.__version__}"


def test_every_command_shows_an_example(capsys):
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    assert set(commands) == set(EXAMPLES) - {"bertops"}
    for name in commands:
        with pytest.raises(SystemExit):
            main([name, "--help"])
        out = capsys.readouterr().out
        assert "examples:" in out and f"bertops {name}" in out, (name, out)


def test_check_params_after_the_command_reads_that_file(tmp_path, capsys):
    from conftest import tiny_params

    import yaml

    (tmp_path / "p.yaml").write_text(yaml.safe_dump(tiny_params("some/model")))
    assert main(["check-params", "--params", str(tmp_path / "p.yaml")]) == 0
    assert json.loads(capsys.readouterr().out)["model"]["name_or_path"] == "some/model"


def test_predict_reads_plain_lines_csv_tsv_and_jsonl(tmp_path):
    (tmp_path / "a.txt").write_text("first text\n\nsecond text\n")
    assert read_inputs(["arg"], tmp_path / "a.txt") == ["arg", "first text", "second text"]
    (tmp_path / "a.csv").write_bytes("\ufeffid,body,other\r\n1,\"a, b\",x\r\n2,c,y\r\n".encode())
    assert read_inputs([], tmp_path / "a.csv", text_column="body") == ["a, b", "c"]
    assert read_inputs([], tmp_path / "a.csv", text_column="body", pair_column="other") == [("a, b", "x"), ("c", "y")]
    (tmp_path / "a.tsv").write_text("body\nq1\n")
    assert read_inputs([], tmp_path / "a.tsv", text_column="body") == ["q1"]
    (tmp_path / "a.jsonl").write_text('{"r": {"body": "nested"}}\n')
    assert read_inputs([], tmp_path / "a.jsonl", text_column="r.body") == ["nested"]
    with pytest.raises(BertopsError, match=r"a.jsonl:1: missing field 'body'"):
        read_inputs([], tmp_path / "a.jsonl", text_column="body")
    with pytest.raises(BertopsError, match="file not found"):
        read_inputs([], tmp_path / "none.csv")
    with pytest.raises(BertopsError, match="give text"):
        read_inputs([], None)


def test_output_csv_has_a_column_per_class_and_jsonl_keeps_rows(tmp_path):
    rows = [{"text": "a", "label": "pos", "probability": 0.9, "probabilities": {"neg": 0.1, "pos": 0.9}},
            {"text": "b", "label": "neg", "probability": 0.8, "probabilities": {"neg": 0.8, "pos": 0.2},
             "entities": [{"type": "PER", "text": "b"}]}]
    write_predictions(rows, tmp_path / "out.csv")
    read = list(csv.DictReader((tmp_path / "out.csv").open()))
    assert read[0]["probabilities.pos"] == "0.9" and read[1]["probabilities.neg"] == "0.8"
    assert json.loads(read[1]["entities"]) == [{"type": "PER", "text": "b"}] and read[0]["entities"] == ""
    write_predictions(rows, tmp_path / "out.jsonl")
    assert [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()] == rows


def test_output_must_be_jsonl_or_csv(capsys):
    assert main(["predict", "x", "--output", "out.parquet"]) == 2
    assert "write a .jsonl or a .csv file" in capsys.readouterr().err
