"""Verifiers on real inputs: a real SQLite file, the real sandbox, real MinHash; each rejection says why."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path

import pytest

from kit.distill.config import (ConfidentVerifier, DecontaminateVerifier, DedupVerifier, JsonSchemaVerifier,
                               PythonVerifier, SameKindVerifier, SqlVerifier)
from kit.distill.critic import Answer, Candidate, build_critic
from kit.distill.critic.confident import answer_confidence

SCHEMA = {"type": "object", "properties": {"value": {"type": "number"}, "unit": {"type": "string"}},
          "required": ["value", "unit"]}


def critic(*verifiers, eval_file=None, seeds=()):
    return build_critic(list(verifiers), schema=SCHEMA, eval_file=eval_file, seed_inputs=list(seeds),
                        judge_client=None, task_description="test task")


def candidate(value, text: str = "how far is it") -> Candidate:
    return voted([value], text)


def voted(values: list, text: str = "how far is it") -> Candidate:
    answers = [Answer(v, v if isinstance(v, str) else json.dumps(v)) for v in values]
    return Candidate(0, text, answers)


def review(c, cand):
    return asyncio.run(c.review(cand))


@pytest.fixture
def shop(tmp_path):
    path = tmp_path / "shop.db"
    db = sqlite3.connect(path)
    db.executescript("create table orders (id int, amount real, city text);"
                     "insert into orders values (1, 10.0, 'paris'), (2, 25.5, 'lyon'), (3, 7.0, 'paris');")
    db.commit()
    db.close()
    return path


def test_json_schema_names_the_failing_field():
    c = critic(JsonSchemaVerifier(type="json_schema"))
    assert review(c, candidate({"value": 3, "unit": "km"})) is None
    rejection = review(c, candidate({"value": "three", "unit": "km"}))
    assert rejection.verifier == "json_schema" and rejection.reason.startswith("value:")


def test_sql_runs_read_only_and_reports_errors(shop):
    c = critic(SqlVerifier(type="sql", database=shop, compare="none"))
    assert review(c, candidate("SELECT count(*) FROM orders")) is None
    assert "no such table" in review(c, candidate("SELECT * FROM customers")).reason
    assert "readonly" in review(c, candidate("DELETE FROM orders")).reason
    assert sqlite3.connect(shop).execute("select count(*) from orders").fetchone()[0] == 3


def test_sql_time_limit_stops_a_runaway_query(shop):
    c = critic(SqlVerifier(type="sql", database=shop, compare="none", timeout_s=0.5))
    endless = "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n) SELECT count(*) FROM n"
    assert review(c, candidate(endless)).reason.startswith("timeout")


def test_sql_majority_compares_result_sets_not_text(shop):
    c = critic(SqlVerifier(type="sql", database=shop, compare="majority"))
    agree = voted(["SELECT id FROM orders", "SELECT id FROM orders WHERE city = 'paris'",
                   "select id from orders where city='paris' order by id desc"])
    assert review(c, agree) is None and agree.votes == 2 and agree.chosen == 1
    split = voted(["SELECT 1", "SELECT 2", "SELECT 3"])
    assert "no majority" in review(c, split).reason


def test_sql_reference_and_json_field(shop):
    c = critic(SqlVerifier(type="sql", database=shop, compare="reference", field="sql"))
    good = candidate({"sql": "SELECT sum(amount) FROM orders"})
    good.reference = {"sql": "SELECT SUM(amount) AS total FROM orders"}
    assert review(c, good) is None
    bad = candidate({"sql": "SELECT max(amount) FROM orders"})
    bad.reference = {"sql": "SELECT sum(amount) FROM orders"}
    assert "differs from the reference" in review(c, bad).reason


def test_python_verifier_runs_the_recipe_tests_in_the_sandbox():
    tests = "assert add(2, 3) == 5\n"
    c = critic(PythonVerifier(type="python", tests=tests, timeout_s=3))
    assert review(c, candidate("def add(a, b):\n    return a + b\n")) is None
    assert review(c, candidate("def add(a, b):\n    return a * b\n")).reason.startswith("error: AssertionError")
    assert review(c, candidate("def add(a, b):\n    while True: pass\n")).reason.startswith("time_limit")
    assert review(c, candidate("import socket\nsocket.socket()\n")).reason.startswith("network")


def test_dedup_cuts_near_duplicates_of_kept_samples_and_seeds():
    c = critic(DedupVerifier(type="dedup", threshold=0.7), seeds=["convert three miles into kilometres for my run"])
    first = candidate({"value": 1, "unit": "km"}, "how many litres are in five gallons of fresh water today")
    assert review(c, first) is None
    c.admit("s1", first)
    near = candidate({"value": 1, "unit": "km"}, "how many litres are in five gallons of fresh water today please")
    assert review(c, near).reason == "near-duplicate of s1"
    assert review(c, candidate({"value": 1}, "convert three miles into kilometres for my run")).reason.startswith(
        "near-duplicate of seed")
    assert review(c, candidate({"value": 1}, "what is the boiling point of water at sea level in fahrenheit")) is None


def test_decontaminate_cuts_overlap_with_the_eval_set(tmp_path):
    eval_file = tmp_path / "eval.jsonl"
    eval_file.write_text(json.dumps({"input": "a long question about the distance from paris to lyon by train",
                                     "output": "465 km"}) + "\n")
    c = critic(DecontaminateVerifier(type="decontaminate", rule="coverage", ngram=5), eval_file=eval_file)
    leaked = candidate("465 km", "tell me the distance from paris to lyon by train please")
    assert "of eval item 1's 5-grams" in review(c, leaked).reason
    assert review(c, candidate("12 km", "how far is the beach from the station")) is None
    assert review(c, candidate("465 km", "how long is the drive to the coast")) is None  # answers: not compared
    both = critic(DecontaminateVerifier(type="decontaminate", rule="coverage", ngram=5, fields=["input", "output"]),
                  eval_file=eval_file)
    assert review(both, candidate("465 km", "how far to go")).verifier == "decontaminate"  # short texts: exact copies


EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.mark.parametrize("example, copies, new_questions", [
    ("tool-calling",
     ["wake me up at 7", "set volume to 50%", "turn on wifi"],
     ["wake me up at 7:15 please", "wake me up at 6:45 tomorrow", "set a timer for 10 minutes",
      "set a timer for 5 minutes please", "set the volume to maximum", "turn off the wifi"]),
    ("text-to-sql",
     ["What customers have never placed an order?", "How many reviews are there?",
      "What is the average price of all products in the Electronics category?"],
     ["What is the average rating given by customers from France?", "How many reviews are there for the Smart Phone?",
      "List the names of customers who live in the United States and have placed more than 5 orders",
      "What is the total revenue from orders placed by customers from Spain?",
      "What is the total stock of all products in the Electronics category?"]),
])
def test_decontaminate_cuts_copies_and_paraphrases_and_keeps_new_questions_that_share_stock_words(
        example, copies, new_questions):
    """On the examples' own eval sets: a copy, or a paraphrase that changes only stock words, is cut; a question
    that shares the stock words but changes what makes it itself (a number, a city, a condition) is kept."""
    c = critic(DecontaminateVerifier(type="decontaminate"), eval_file=EXAMPLES / example / "eval.jsonl")
    for text in copies:
        rejection = review(c, candidate("y", text))
        assert rejection is not None and "like eval item" in rejection.reason, text
    for text in new_questions:
        assert review(c, candidate("y", text)) is None, text
    assert any("70% like one eval item's" in note for note in c.notes)
    assert c.verifiers[0].rule["rule"] == "similarity" and c.verifiers[0].rule["min_similarity"] == 0.7


def test_decontaminate_coverage_rule_cuts_a_paraphrase_and_keeps_a_shared_generic_phrase(tmp_path):
    """The coverage rule is the share of one eval item a sample covers: a paraphrase that keeps most of a question
    is cut; a new question that only shares a stock phrase with it ("what is the average number of") is kept."""
    eval_file = tmp_path / "eval.jsonl"
    eval_file.write_text("\n".join(json.dumps({"input": q, "output": "x"}) for q in (
        "What is the average number of items per order for customers in Berlin?",
        "What is the total number of reviews with a rating of 5?",
        "set a timer for 5 minutes", "wake me up at 7", "what's the weather in Tokyo today")) + "\n")
    c = critic(DecontaminateVerifier(type="decontaminate", rule="coverage"), eval_file=eval_file)
    paraphrase = review(c, candidate("y", "what's the average number of items per order for the customers in Berlin"))
    assert paraphrase is not None and "eval item 1" in paraphrase.reason
    assert review(c, candidate("y", "Give me the total number of reviews with a rating of 5 please")) is not None
    assert review(c, candidate("y", "set a timer for 5 minutes to check the oven")) is not None
    assert review(c, candidate("y", "What is the average number of products in each category?")) is None
    assert review(c, candidate("y", "What is the total number of orders shipped to Spain last year?")) is None
    assert review(c, candidate("y", "set a timer for 10 minutes")) is None
    # a five-word item has two 4-grams: one stock phrase is half of it, and is kept; the whole item is cut
    assert review(c, candidate("y", "wake me up at 6:45 tomorrow")) is None
    assert review(c, candidate("y", "wake me up at 7:15 please")) is None  # "7:15" is one word, not "7"
    assert "eval item 4" in review(c, candidate("y", "please wake me up at 7 tomorrow")).reason
    assert review(c, candidate("y", "what's the weather in Paris tomorrow?")) is None
    assert any("50% of one eval item's word 4-grams, and more than one" in note for note in c.notes)


def test_decontaminate_without_eval_file_says_so():
    c = critic(DecontaminateVerifier(type="decontaminate"))
    assert review(c, candidate("x")) is None and "no eval.file" in c.notes[0]


def test_answer_confidence_is_the_least_sure_token_of_the_answer_value():
    reply = (('{"', 0.99), ("reasoning", 0.2), ('": "', 0.9), ("unsure words", 0.05), ('", "', 0.99), ("answer", 1.0),
             ('": {"', 0.98), ("tool", 1.0), ('": "', 0.97), ("air", 0.31), ("plane", 0.9), ('"}}', 0.95))
    assert answer_confidence(reply) == (0.31, "air")  # the reasoning before the answer does not count
    assert answer_confidence((("42", 0.6),)) == (0.6, "42")  # no answer key: the whole reply
    assert answer_confidence(None) is None and answer_confidence(()) is None


def test_confident_cuts_an_answer_the_teacher_was_torn_on_and_passes_one_without_probabilities():
    c = critic(ConfidentVerifier(type="confident", min_p=0.5))
    sure = candidate({"value": 3, "unit": "km"})
    sure.answers[0].least_p, sure.answers[0].least_token = 0.93, "km"
    torn = candidate({"value": 3, "unit": "mi"})
    torn.answers[0].least_p, torn.answers[0].least_token = 0.31, "mi"
    assert review(c, sure) is None
    rejection = review(c, torn)
    assert rejection.verifier == "confident" and "p 0.31 at 'mi'" in rejection.reason
    assert review(c, candidate({"value": 3, "unit": "km"})) is None  # no probabilities: passes, noted once
    assert review(c, candidate({"value": 4, "unit": "km"})) is None
    assert len(c.notes) == 1 and "no token probabilities" in c.notes[0]


def test_two_verifiers_of_one_type_both_run_and_are_reported_apart(tmp_path):
    from kit.distill.stats import step_names

    eval_file = tmp_path / "eval.jsonl"
    eval_file.write_text(json.dumps({"input": "a long question about the distance from paris to lyon by train",
                                     "output": "the distance is four hundred and sixty five km"}) + "\n")
    c = critic(DecontaminateVerifier(type="decontaminate", rule="coverage", ngram=5), DedupVerifier(type="dedup"),
               DecontaminateVerifier(type="decontaminate", rule="coverage", ngram=5, fields=["output"]),
               eval_file=eval_file)
    assert [(v.type, v.step) for v in c.verifiers] == [("decontaminate", 1), ("dedup", 2), ("decontaminate", 3)]
    by_input = review(c, candidate("12 km", "tell me the distance from paris to lyon by train please"))
    by_output = review(c, candidate("the distance is four hundred and sixty five km", "how far is it by rail"))
    assert by_input.verifier == "decontaminate (verifier 1)" and "5-gram" in by_input.reason
    assert by_output.verifier == "decontaminate (verifier 3)" and "5-gram" in by_output.reason
    # the checks of the input alone come first (before voting and the answer checks), each keeping its number
    assert step_names(c) == ["parse", "decontaminate (verifier 1)", "dedup", "self_consistency", "input",
                             "decontaminate (verifier 3)", "duplicate"]


def test_an_unknown_verifier_type_names_the_known_ones():
    from types import SimpleNamespace

    with pytest.raises(ValueError, match="'spellcheck'.*known types: confident, decontaminate, dedup, distinct_outputs, grounded, "
                                         "json_schema, judge, python, same_kind, sql"):
        critic(SimpleNamespace(type="spellcheck"))


def test_an_input_that_holds_its_own_answer_is_cut_first():
    c = critic(DecontaminateVerifier(type="decontaminate"))
    leaked = candidate("SELECT email FROM customers", "SELECT email FROM customers WHERE country = 'Spain'")
    assert review(c, leaked).verifier == "input"
    assert review(c, candidate("SELECT email FROM customers", "which emails do our customers have")) is None
    assert review(c, candidate("Paris", "is Paris the capital of France")) is None  # short answers may be named


def test_grounded_cuts_values_not_copied_from_the_input():
    from kit.distill.config import GroundedVerifier

    c = critic(GroundedVerifier(type="grounded", fields=["recipient", "text"]))
    text = "text Sam   it's raining, bring a coat"
    ok = {"tool": "send_message", "arguments": {"recipient": "Sam", "text": "it's raining, bring a coat"}}
    assert review(c, candidate(ok, text)) is None
    recased = {"tool": "send_message", "arguments": {"recipient": "Sam", "text": "It's raining, bring a coat"}}
    rejection = review(c, candidate(recased, text))
    assert rejection.verifier == "grounded"
    assert rejection.reason == "arguments.text \"It's raining, bring a coat\" is not copied from the input"
    invented = {"tool": "send_message", "arguments": {"recipient": "Sam", "text": "Hey! I'm here."}}
    assert "arguments.text" in review(c, candidate(invented, text)).reason
    other_keys = {"tool": "get_weather", "arguments": {"city": "Oslo", "day": "today"}}
    assert review(c, candidate(other_keys, text)) is None  # only the listed keys are checked
    nested = {"calls": [{"recipient": "Samuel", "text": "bring a coat"}]}
    assert review(c, candidate(nested, text)).reason.startswith("calls[0].recipient 'Samuel'")
    loose = critic(GroundedVerifier(type="grounded", fields=["text"], ignore_case=True))
    assert review(loose, candidate(recased, text)) is None


def test_json_answers_are_voted_field_by_field():
    """Three answers agreeing on the tool but one wording an argument differently still give a label (each
    field's majority); a field without a majority rejects, and the reason names the field."""
    from kit.distill.vote import vote

    def answers(*values):
        return [Answer(v, json.dumps(v)) for v in values]

    timer = {"tool": "set_timer", "arguments": {"duration_seconds": 180}}
    labelled, chosen = vote(answers(timer, timer | {"arguments": {"duration_seconds": 180, "label": "tea"}},
                                    {"tool": "set_timer", "arguments": {"duration_seconds": 300}}), "json", None)
    assert labelled.answer.value == timer and chosen == 0 and labelled.votes == 2 and not labelled.reason
    composed, chosen = vote(answers({"a": 1, "b": 2, "c": 5}, {"a": 1, "b": 3, "c": 6}, {"a": 9, "b": 3, "c": 5}),
                            "json", None)
    assert composed.answer.value == {"a": 1, "b": 3, "c": 5} and chosen is None
    assert composed.answer.output == '{"a":1,"b":3,"c":5}'
    split, _ = vote(answers(timer, {"tool": "set_timer", "arguments": {"duration_seconds": 60}},
                            {"tool": "set_timer", "arguments": {"duration_seconds": 600}}), "json", None)
    assert split.answer is None and split.reason == "no majority on 'arguments.duration_seconds' (1/3 agree)"
    text, _ = vote([Answer("Paris", "Paris"), Answer("paris", "paris"), Answer("Paris", "Paris")], "text",
                   lambda a: a.output)
    assert text.answer.output == "Paris" and text.votes == 2


def test_distinct_outputs_caps_how_often_one_answer_is_kept():
    from kit.distill.config import DistinctOutputsVerifier

    c = critic(DistinctOutputsVerifier(type="distinct_outputs", max_per_output=2))
    pasta = {"value": 600, "unit": "s"}
    for number, text in enumerate(("a 10 minute timer for pasta", "set a pasta timer for ten minutes"), 1):
        kept = candidate(pasta, text)
        assert review(c, kept) is None
        c.admit(f"s{number}", kept)
    third = review(c, candidate({"unit": "s", "value": 600}, "set a ten minute timer for the pasta"))  # key order
    assert third.verifier == "distinct_outputs" and "2 kept samples already have this answer" in third.reason
    assert review(c, candidate({"value": 180, "unit": "s"}, "three minute timer for eggs")) is None
    # another request that rightly has the same answer is not a rewrite: kept
    assert review(c, candidate(pasta, "remind me when the laundry is done in 600 seconds")) is None


ROUTER = {"type": "object", "required": ["tool", "arguments"], "oneOf": [
    {"properties": {"tool": {"const": "send_message"}, "arguments": {
        "type": "object", "properties": {"recipient": {"type": "string"}, "text": {"type": "string"}},
        "required": ["recipient", "text"]}}},
    {"properties": {"tool": {"const": "none"}, "arguments": {"type": "object", "maxProperties": 0}}}]}


def test_same_kind_cuts_a_seed_rewrite_that_drifted_to_another_branch_and_passes_fresh_inputs():
    seeds = [{"tool": "send_message", "arguments": {"recipient": "Maria", "text": "running late"}},
             {"tool": "none", "arguments": {}}]
    c = build_critic([SameKindVerifier(type="same_kind")], schema=ROUTER, eval_file=None, seed_inputs=[],
                     seed_outputs=seeds, judge_client=None, task_description="route")
    message = {"tool": "send_message", "arguments": {"recipient": "Leo", "text": "home soon"}}
    none = {"tool": "none", "arguments": {}}

    def rewrite(value, seed):
        return Candidate(0, "Maria, what time did you start running?", [Answer(value, json.dumps(value))], seed=seed)

    assert review(c, rewrite(message, 0)) is None and review(c, rewrite(none, 1)) is None
    rejection = review(c, rewrite(none, 0))
    assert rejection.verifier == "same_kind"
    assert rejection.reason == "rewritten from seed 0 (tool=send_message) but answered as tool=none"
    assert review(c, rewrite(message, 1)).reason.endswith("(tool=none) but answered as tool=send_message")
    assert review(c, rewrite(none, None)) is None  # a fresh input: new kinds come from those
    # a schema without branches (or no schema) has no kinds: every answer passes
    plain = build_critic([SameKindVerifier(type="same_kind")], schema=SCHEMA, eval_file=None, seed_inputs=[],
                         seed_outputs=[{"value": 1, "unit": "km"}], judge_client=None, task_description="")
    assert review(plain, Candidate(0, "x", [Answer({"value": 2}, '{"value": 2}')], seed=0)) is None
