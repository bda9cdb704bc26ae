"""`llm-console eval safety --dataset`: public labelled data read strictly, and the stored-text PII measure."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from console import cli
from engine.safety.base import Finding
from engine.safety.measure_public import (
    PRESIDIO_SYNTH_DEV_PATH,
    DatasetError,
    GoldSpan,
    PiiPublicScore,
    PiiSample,
    ToxicitySample,
    load_davidson_classes,
    load_pii_jsonl,
    load_presidio_synth,
    load_toxicity_jsonl,
    score_sample,
    split_of,
    toxicity_public_report,
)


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("LLM_CONSOLE_DATA_DIR", str(tmp_path / "data"))
    return tmp_path


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# --- reading files --------------------------------------------------------------------------------------------


def test_presidio_synth_format_is_read_with_its_spans(tmp_path):
    path = _write(tmp_path / "synth.json", json.dumps([
        {"full_text": "Call Ana Lima on 555-0101", "spans": [
            {"entity_type": "PERSON", "entity_value": "Ana Lima", "start_position": 5, "end_position": 13}]},
        {"full_text": "nothing here", "spans": []},
    ]))
    samples = load_presidio_synth(path)
    assert [s.text for s in samples] == ["Call Ana Lima on 555-0101", "nothing here"]
    assert samples[0].spans == (GoldSpan("PERSON", 5, 13),)
    assert samples[1].spans == ()


def test_jsonl_accepts_our_label_names_and_maps_them_to_presidio_research_kinds(tmp_path):
    path = _write(tmp_path / "mine.jsonl", '{"text": "mail a@b.org now", "spans": [{"label": "email", "start": 5, '
                                           '"end": 12}]}\n\n{"text": "at 1 Main St", "spans": [{"label": "ADDRESS", '
                                           '"start": 3, "end": 12}]}\n')
    samples = load_pii_jsonl(path)
    assert [s.spans[0].kind for s in samples] == ["EMAIL_ADDRESS", "STREET_ADDRESS"]


@pytest.mark.parametrize(("content", "message"), [
    ("[", "not JSON"),
    ('{"full_text": "x"}', "expected a JSON list"),
    ('[{"spans": []}]', "item 1: 'full_text' (the text) is missing"),
    ('[{"full_text": "abc", "spans": [{"entity_type": "PERSON", "start_position": 1, "end_position": 9}]}]',
     "item 1 span 1: span 1..9 is outside the text (length 3)"),
    ('[{"full_text": "abc", "spans": [{"entity_type": "PERSON", "start_position": "1", "end_position": 2}]}]',
     "whole-number start and end"),
    ('[{"full_text": "abc", "spans": [{"start_position": 0, "end_position": 2}]}]', "needs a label"),
])
def test_a_broken_presidio_synth_file_names_the_file_and_the_place(tmp_path, content, message):
    path = _write(tmp_path / "bad.json", content)
    with pytest.raises(DatasetError, match=re.escape(message)) as err:
        load_presidio_synth(path)
    assert str(path) in str(err.value)


def test_a_broken_jsonl_line_is_named_by_its_number(tmp_path):
    path = _write(tmp_path / "bad.jsonl", '{"text": "ok", "spans": []}\n{"text": "ok"\n')
    with pytest.raises(DatasetError, match=r"bad.jsonl:2: not JSON"):
        load_pii_jsonl(path)
    with pytest.raises(DatasetError, match="no such file"):
        load_pii_jsonl(tmp_path / "missing.jsonl")


def test_davidson_csv_is_read_by_class_and_a_wrong_file_is_refused(tmp_path):
    good = _write(tmp_path / "d.csv", ',count,hate_speech,offensive_language,neither,class,tweet\n'
                                      '0,3,0,0,3,2,"a nice day, really"\n1,3,2,1,0,0,hateful words\n'
                                      '2,3,0,3,0,1,rude words\n')
    rows = load_davidson_classes(good)
    assert [sorted(r.classes) for r in rows] == [["neither"], ["hate"], ["offensive"]]
    assert rows[0].text == "a nice day, really"
    with pytest.raises(DatasetError, match="columns 'class' and 'tweet'"):
        load_davidson_classes(_write(tmp_path / "other.csv", "text,label\nhi,0\n"))
    with pytest.raises(DatasetError, match="row 2: class must be 0, 1 or 2"):
        load_davidson_classes(_write(tmp_path / "c.csv", "class,tweet\n7,hello\n"))


def test_toxicity_jsonl_takes_a_binary_label_or_a_label_list(tmp_path):
    rows = load_toxicity_jsonl(_write(tmp_path / "t.jsonl", '{"text": "you are awful", "label": 1}\n'
                                                            '{"text": "thanks a lot", "label": 0}\n'
                                                            '{"text": "I will hurt you", "labels": ["threat"]}\n'))
    assert [sorted(r.classes) for r in rows] == [["toxic"], [], ["threat"]]
    with pytest.raises(DatasetError, match="t2.jsonl:1: needs 'label'"):
        load_toxicity_jsonl(_write(tmp_path / "t2.jsonl", '{"text": "x", "label": "yes"}\n'))


# --- the stored-text measure ----------------------------------------------------------------------------------


def _cut(label: str, start: int, end: int) -> Finding:
    return Finding(detector="presidio", label=label, score=0.9, start=start, end=end, detector_version="t")


def test_a_value_cut_whole_is_found_cut_in_part_is_found_and_leaked_and_uncut_is_leaked():
    text = "Ana Lima lives at 12 Rua Azul, Porto; call 555 0101 or see Acme Ltd"
    sample = PiiSample(text, (
        GoldSpan("PERSON", 0, 8), GoldSpan("STREET_ADDRESS", 18, 29), GoldSpan("GPE", 31, 36),
        GoldSpan("PHONE_NUMBER", 43, 51), GoldSpan("ORGANIZATION", 59, 67),
    ))
    cuts = [_cut("PERSON", 0, 8), _cut("ADDRESS", 18, 24), _cut("PERSON", 59, 63), _cut("PERSON", 38, 42)]
    score = PiiPublicScore()
    score_sample(score, sample, cuts, "stored", keep_examples=10)
    counts = {k: (c.gold, c.found, c.leaked) for k, c in score.per_kind.items()}
    assert counts["PERSON"] == (1, 1, 0)
    assert counts["STREET_ADDRESS"] == (1, 1, 1)  # "Azul" is left
    assert counts["PHONE_NUMBER"] == (1, 0, 1)
    assert counts["GPE"] == (1, 0, 1)
    overall = score.overall()  # personal kinds only: GPE and ORGANIZATION apart
    assert (overall.gold, overall.found, overall.leaked) == (3, 2, 2)
    assert score.cuts == 4
    assert score.cuts_on_personal == 2
    assert score.cuts_on_other_labelled == 1  # "Acme" is labelled, but no personal value
    assert {c["cut"] for c in score.false_cuts} == {"Acme", "call"}
    assert {m["value"] for m in score.misses} == {"12 Rua Azul", "555 0101"}


def test_punctuation_left_around_a_cut_value_is_no_leak():
    text = "card: 4111-1111-1111-1111."
    sample = PiiSample(text, (GoldSpan("CREDIT_CARD", 6, 25),))
    score = PiiPublicScore()
    score_sample(score, sample, [_cut("CREDIT_CARD", 6, 10), _cut("CREDIT_CARD", 11, 25)], "stored")
    c = score.per_kind["CREDIT_CARD"]
    assert (c.found, c.leaked) == (1, 0)  # the hyphen between two cuts holds no letter or digit


def test_the_split_is_a_fixed_function_of_the_text():
    assert split_of("hello") == split_of("hello")
    halves = {split_of(f"text number {i}") for i in range(50)}
    assert halves == {"tune", "report"}


# --- through the command and the real scanners ----------------------------------------------------------------


@pytest.mark.slow
def test_the_command_measures_a_jsonl_file_through_the_stored_path(env, tmp_path, capsys):
    lines = [
        {"text": "Please write to maria.lopez@example.com about order 4471.",
         "spans": [{"label": "EMAIL_ADDRESS", "start": 16, "end": 39}]},
        {"text": "My card 4111 1111 1111 1111 was charged twice.",
         "spans": [{"label": "CREDIT_CARD", "start": 8, "end": 27}]},
        {"text": "The router restarts every night after the update.", "spans": []},
    ]
    for line in lines:
        span = line["spans"][0] if line["spans"] else None
        if span:
            assert line["text"][span["start"]:span["end"]].strip() == line["text"][span["start"]:span["end"]]
    path = _write(tmp_path / "own.jsonl", "\n".join(json.dumps(x) for x in lines) + "\n")
    assert cli.main(["eval", "safety", "--dataset", "pii-jsonl", str(path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["dataset"] == {"kind": "pii-jsonl", "path": str(path)}
    assert report["texts"] == 3
    assert report["per_kind"]["EMAIL_ADDRESS"] == {"gold": 1, "found": 1, "leaked": 0, "recall": 1.0,
                                                   "leak_rate": 0.0}
    assert report["per_kind"]["CREDIT_CARD"]["leaked"] == 0
    assert report["cuts"]["on_no_personal_value"] == 0  # the order number and the plain sentence stay intact
    assert cli.main(["eval", "safety", "--dataset", "pii-jsonl", str(path)]) == 0
    out = capsys.readouterr().out
    assert "EMAIL_ADDRESS" in out and "on no personal value: 0" in out


def test_the_command_refuses_an_unknown_kind_and_a_broken_file_with_one_line(env, tmp_path, capsys):
    assert cli.main(["eval", "safety", "--dataset", "csv", "x.csv"]) == 1
    assert "unknown kind 'csv'; choose one of presidio-synth, pii-jsonl, davidson, toxicity-jsonl" in \
        capsys.readouterr().err
    bad = _write(tmp_path / "bad.jsonl", "not json\n")
    assert cli.main(["eval", "safety", "--dataset", "pii-jsonl", str(bad)]) == 1
    assert f"{bad}:1: not JSON" in capsys.readouterr().err


def test_toxicity_auc_is_computed_per_label_and_task(offline_scanner):
    rows = [ToxicitySample(t, frozenset({"toxic"})) for t in (
        "you are a worthless idiot and everyone hates you", "shut up you stupid moron", "I will kill you")]
    rows += [ToxicitySample(t, frozenset()) for t in (
        "thank you for the quick refund", "my parcel arrived on Tuesday", "how do I reset my password?")]
    report = toxicity_public_report("toxicity-jsonl", rows, scanner=offline_scanner)
    task = report["tasks"]["any_vs_none"]
    assert (task["positives"], task["negatives"]) == (3, 3)
    assert set(task["roc_auc"]) >= {"toxicity", "insult", "max"}
    assert task["roc_auc"]["toxicity"] >= 0.8  # clear cases: a detector that ranks at random fails this


@pytest.mark.skipif(not PRESIDIO_SYNTH_DEV_PATH.exists(), reason="the public dev file is not at ../shared/data")
def test_the_public_dev_file_reads_and_splits_in_two_halves():
    samples = load_presidio_synth(PRESIDIO_SYNTH_DEV_PATH)
    assert len(samples) == 750
    tune = [s for s in samples if split_of(s.text) == "tune"]
    assert 300 < len(tune) < 450


def test_a_tweet_with_a_line_break_inside_its_quotes_keeps_it(tmp_path):
    path = tmp_path / "d.csv"
    path.write_bytes(b'class,tweet\r\n2,"first line\nsecond line"\r\n0,plain\r\n')
    rows = load_davidson_classes(path)
    assert [r.text for r in rows] == ["first line\nsecond line", "plain"]


@pytest.mark.skipif(not PRESIDIO_SYNTH_DEV_PATH.exists(), reason="the public dev file is not at ../shared/data")
def test_on_a_fixed_slice_of_the_public_dev_file_personal_values_are_cut_from_the_stored_text():
    """100 texts of the tune half, through the stored path: a floor that the scanner before issue 20 missed (0.61)."""
    from engine.safety.measure_public import pii_public_report

    samples = [s for s in load_presidio_synth(PRESIDIO_SYNTH_DEV_PATH) if split_of(s.text) == "tune"][:100]
    report = pii_public_report(samples, examples=1000)
    overall = report["overall"]
    assert overall["gold"] >= 90
    assert overall["recall"] >= 0.90, report["misses"]
    assert overall["leak_rate"] <= 0.10, report["misses"]
    assert report["cuts"]["share_on_no_personal_value"] <= 0.10, report["false_cuts"]
    # Almost no personal value is stored whole (before issue 20 the tune half's recall was 0.61). One is today: a lone
    # unknown first name with no cue ("Why is Glyceria so impulsive?").
    whole = [m["value"] for m in report["misses"] if m["value"] in m["stored"]]
    assert len(whole) <= 2, whole
