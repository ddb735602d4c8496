"""Derived values (kit/distill/derived_values.py, runtime/derived_numbers.py, runtime/clock_times.py,
runtime/answer_rules.py): a number the answer computes from a request number by a constant factor is trained and
decoded as the arithmetic, a 24-hour time as the request's own time, and the runtime turns both back."""

from __future__ import annotations

import json

import jsonschema
import pytest

from kit.core.dataset import DERIVED_VALUES, derived_values
from kit.distill import derived_values as learned
from kit.distill.sample_store import write_dataset
from runtime import Expert
from runtime.answer_rules import AnswerRules
from runtime.clock_times import clock_schema, clock_spans, to_24h
from runtime.derived_numbers import derived_schema, evaluate, expressions, request_numbers
from runtime.manifest import GenerationDefaults

TIMER = {"type": "object", "properties": {
    "tool": {"enum": ["set_timer", "set_volume"]},
    "arguments": {"type": "object", "properties": {"duration_seconds": {"type": "integer", "minimum": 1},
                                                   "level": {"type": "integer"}}}},
    "required": ["tool", "arguments"]}


def sample(text: str, answer: dict) -> dict:
    return {"id": text, "input": text, "output": json.dumps(answer)}


def timer(text: str, seconds: int) -> dict:
    return sample(text, {"tool": "set_timer", "arguments": {"duration_seconds": seconds}})


SAMPLES = [timer("set a timer for 5 minutes", 300), timer("timer 12 minutes for tea", 720),
           timer("countdown 45 seconds", 45), timer("a 2 hour timer", 7200), timer("timer 90 seconds", 90),
           sample("volume to 30", {"tool": "set_volume", "arguments": {"level": 30}}),
           sample("volume 70 please", {"tool": "set_volume", "arguments": {"level": 70}})]


def test_request_numbers_are_digits_and_words_but_not_times_dates_or_parts_of_words():
    assert request_numbers("timer 1 hour 30 minutes, one more, 5min, 1.5 hours") == [1, 30, 5, 1.5]
    assert request_numbers("alarm at 10:45 on 2026-05-04 for v2") == []
    assert request_numbers("a 10-minute timer and twenty seconds") == [10, 20]
    assert request_numbers("a 5 minute timer at 6pm, then at 7:30 p.m.") == [5]  # times of day are no quantities


def test_expressions_cover_one_term_and_ordered_sums_and_evaluate_back():
    offered = expressions([1, 30], [3600, 60, 1])
    assert {"1 * 3600", "30 * 60", "30", "1 * 3600 + 30 * 60"} <= set(offered)
    assert "30 * 60 + 1 * 3600" not in offered and "1 + 30" not in offered  # request order; a plain sum is no derivation
    assert evaluate("1 * 3600 + 30 * 60") == 5400 and evaluate("1.5 * 60") == 90 and evaluate("45") == 45


def resolve(text: str, fields: dict) -> str:
    return AnswerRules(derived_numbers=fields).finish(text)


def test_fields_and_factors_are_learned_from_the_samples_only_where_a_factor_repeats():
    fields = learned.learn(SAMPLES + [timer("timer 3 hours", 10800)])["derived_numbers"]
    assert set(fields) == {"duration_seconds"}  # the volume level is copied (factor 1 only): not derived
    # learned: 60, 1, 3600; a day (86400 seconds) follows from the family of "hour", "minute", "second" (unit_families)
    assert fields["duration_seconds"][0] == 60 and set(fields["duration_seconds"]) == {60, 1, 3600, 86400}
    rules = learned.learn(SAMPLES + [timer("timer 4 hours", 24000)])
    slip = rules["derived_numbers"]["duration_seconds"]
    assert 6000 not in slip  # a factor one sample shows is no rule (here a teacher's slip)
    assert rules["unit_families"]["duration_seconds"]["hour"] == 3600  # two samples disagree on "hour": the family says
    assert learned.learn([timer("set a timer for 5 minutes", 300)])["derived_numbers"] == {}
    assert learned.learn([timer("set a timer for 5 minutes", 300)])["derived_numbers"] == {}


def test_a_unit_the_samples_never_show_follows_from_the_family_of_those_they_do():
    minutes = [timer(f"set a timer for {n} minutes", n * 60) for n in (3, 5, 12)] + [
        timer("countdown 45 seconds", 45), timer("timer 90 secs", 90), timer("timer for one hour", 3600)]
    rules = learned.learn(minutes)  # one sample in hours: no rule of its own
    assert rules["unit_factors"]["duration_seconds"]["hour"] == 3600 == rules["unit_families"]["duration_seconds"]["hour"]
    assert "minute" not in rules["unit_families"]["duration_seconds"]  # learned, not added
    assert "day" not in rules["unit_factors"]["duration_seconds"]  # one unit past those shown (seconds, minutes)
    assert 3600 in rules["derived_numbers"]["duration_seconds"] and learned.inconsistent(minutes, rules) == {}
    offered = lambda text: AnswerRules.of(rules).schema(TIMER, text)["properties"]["arguments"][  # noqa: E731
        "properties"]["duration_seconds"]["anyOf"][0]["enum"]
    assert offered("set a timer for one hour") == ["1 * 3600"]
    assert offered("timer 1 hr 30 minutes") == ["1 * 3600", "30 * 60", "1 * 3600 + 30 * 60"]
    # a field counting minutes takes hours as 60 and no seconds (not a whole factor)
    in_minutes = [sample(f"park for {n} minutes", {"minutes": n}) for n in (10, 25)] + [
        sample(f"park for {n} hours", {"minutes": n * 60}) for n in (2, 3)]
    rules = learned.learn(in_minutes)
    assert rules["unit_factors"]["minutes"] == {"hour": 60, "minute": 1, "min": 1, "hr": 60, "hrs": 60, "day": 1440}
    # units that disagree with every family's ratios (a "minute" of 60, an "hour" of 100) add nothing
    odd = [timer(f"timer {n} minutes", n * 60) for n in (2, 4)] + [timer(f"timer {n} hours", n * 100) for n in (2, 3)]
    assert learned.learn(odd)["unit_families"] == {}
    # no derived field, no family
    assert learned.learn([sample("volume to 30", {"level": 30}), sample("volume 70", {"level": 70})])[
        "unit_families"] == {}


def test_training_answers_write_the_arithmetic_and_keep_everything_else():
    rules = learned.learn(SAMPLES + [timer("timer 3 hours", 10800)])
    fields = rules["derived_numbers"]
    rewritten = {s["input"]: json.loads(learned.student_answer(s["input"], s["output"], rules)) for s in SAMPLES}
    assert rewritten["set a timer for 5 minutes"]["arguments"]["duration_seconds"] == "5 * 60"
    assert rewritten["a 2 hour timer"]["arguments"]["duration_seconds"] == "2 * 3600"
    assert rewritten["countdown 45 seconds"]["arguments"]["duration_seconds"] == "45"
    assert rewritten["volume to 30"] == {"tool": "set_volume", "arguments": {"level": 30}}
    both = timer("timer 1 hour 30 minutes", 5400)
    assert json.loads(learned.student_answer(both["input"], both["output"], rules))["arguments"] == \
        {"duration_seconds": "1 * 3600 + 30 * 60"}
    odd = timer("timer for a while", 600)  # no number in the request to derive it from: the number stays
    assert learned.student_answer(odd["input"], odd["output"], rules) == odd["output"]
    for s in SAMPLES:  # and the runtime works every training answer back to the teacher's label
        assert json.loads(resolve(learned.student_answer(s["input"], s["output"], rules), fields)) == \
            json.loads(s["output"])


def test_values_no_rule_explains_are_named_and_left_out_only_where_the_rule_holds_for_most():
    slips = [timer("timer 4 hours", 24000), timer("set a deadline for the homework", 1800)]
    alarms = [sample(text, {"tool": "set_alarm", "arguments": {"time": hhmm}}) for text, hhmm in
              [("alarm at 6pm", "18:00"), ("wake me at 7:30", "07:30"), ("alarm 5am", "05:00"),
               ("alarm for my flight", "09:00")]]
    samples = SAMPLES + [timer("timer 3 hours", 10800)] + slips + alarms
    rules = learned.learn(samples)
    assert rules["clock_fields"] == ["time"] and "duration_seconds" in rules["derived_numbers"]
    out = learned.inconsistent(samples, rules)
    assert set(out) == {"timer 4 hours", "set a deadline for the homework", "alarm for my flight"}
    assert out["timer 4 hours"].startswith("'duration_seconds' 24000 is no number of the request times")
    assert out["alarm for my flight"] == "'time' 09:00 is no time the request gives"
    assert learned.unexplained("volume to 30", SAMPLES[5]["output"], rules) is None  # no derived field in it
    # a rule that explains only half of its field's values does not overrule the teacher
    many = SAMPLES + [timer(f"timer for a while {'x' * i}", 600) for i in range(5)]
    assert learned.inconsistent(many, learned.learn(many)) == {}


def labelled(text: str, seconds: int, label: str) -> dict:
    return sample(text, {"tool": "set_timer", "arguments": {"duration_seconds": seconds, "label": label}})


def test_a_factor_only_samples_breaking_their_units_rule_show_is_no_factor_and_those_samples_are_slips():
    from runtime.derived_numbers import number_units

    assert number_units("a 5-minute timer, then 2 Hours and 30 secs") == {5: ["minute"], 2: ["hour"], 30: ["sec"]}
    assert number_units("timer for one hour at 6:45pm") == {1: ["hour"]}  # words count; clock times do not
    rows = [timer("set a timer for 5 minutes", 300), timer("timer 12 minutes", 720), timer("8 minute timer", 480),
            timer("timer 1 hour", 3600), timer("a 2 hour timer", 7200), timer("4 hours for the roast", 14400),
            timer("set a timer for 3 hours", 1800), timer("timer 2 hours and 30 minutes", 1200),  # the teacher's slips
            timer("timer 45 seconds", 45), timer("90 seconds please", 90)]
    rules = learned.learn(rows)
    # 600 (two slips) is not learned; 86400 is the family's day, next to the hour (kit.distill.unit_families)
    assert rules["derived_numbers"] == {"duration_seconds": [60, 3600, 1, 86400]}
    assert learned.unit_factors(rows, rules["derived_numbers"]) == {
        "duration_seconds": {"minute": (60, 3), "hour": (3600, 3), "second": (1, 2)}}
    assert rules["unit_factors"] == {"duration_seconds": {"hour": 3600, "minute": 60, "second": 1} | {
        "sec": 1, "min": 60, "hr": 3600, "hrs": 3600, "day": 86400}}
    slips = learned.inconsistent(rows, rules)
    assert set(slips) == {"set a timer for 3 hours", "timer 2 hours and 30 minutes"}
    assert slips["set a timer for 3 hours"] == ("'duration_seconds' 1800 is no number of the request times 60 or "
                                                "3600 or 1 or 86400")
    # learned with the slip's factor (as a smaller dataset may), the unit's rule still names it
    assert learned._unit_slip("set a timer for 3 hours", {"duration_seconds": 1800},
                              {"duration_seconds": [60, 3600, 1, 600]}, learned.unit_factors(rows, rules[
                                  "derived_numbers"])) == (
        "duration_seconds", "'duration_seconds' takes '3 hour' as 3 * 600, where 'hour' is * 3600 in 3 samples")


def test_a_label_repeating_the_words_a_derived_value_came_from_is_dropped_unless_the_seeds_write_it():
    repeats = [labelled("set a timer for 8 minutes", 480, "8 minutes"), labelled("timer one hour", 60, "one hour")]
    kept = [labelled("timer 20 minutes for the 2 loaves", 1200, "the 2 loaves"),  # 2 is not the 20 it came from
            labelled("a 4 minute timer for eggs", 240, "eggs"), labelled("tea timer 3 minutes", 180, "tea")]
    alarms = [sample(t, {"tool": "set_alarm", "arguments": {"time": hhmm, "label": label}}) for t, hhmm, label in
              [("alarm 6:45 for the gym", "06:45", "gym"), ("alarm at 7pm", "19:00", "7pm alarm"),
               ("wake me at 5am", "05:00", "work")]]
    samples = SAMPLES + repeats + kept + alarms
    rules = learned.learn(samples)
    assert rules["no_repeat_fields"] == ["label"]  # "tool" is never beside a derived value
    out = learned.repeated_spans(samples, rules)
    assert set(out) == {"set a timer for 8 minutes", "timer one hour", "alarm at 7pm"}
    assert json.loads(out["set a timer for 8 minutes"][0]) == {"tool": "set_timer", "arguments": {"duration_seconds": 480}}
    assert json.loads(out["alarm at 7pm"][0])["arguments"] == {"time": "19:00"}
    assert out["timer one hour"][1] == "'label' repeats the request words a derived value beside it was taken from"
    # seeds that label a timer with its duration say the author wants it; seeds that label it otherwise, that not
    assert learned.learn(samples, [labelled("timer 9 minutes", 540, "9 minutes")])["no_repeat_fields"] == []
    assert learned.learn(samples, [labelled("timer 9 minutes for rice", 540, "rice")])["no_repeat_fields"] == ["label"]
    # a label of nothing but unit words the samples learned ("minutes") is a repeat in the training answers too
    worded = samples + [labelled("timer for 10 minutes", 600, "minutes"), labelled("2 hours timer", 7200, "hours"),
                        labelled("a 3 hours timer", 10800, "3 hours")]
    rules = learned.learn(worded, [labelled("timer 9 minutes for rice", 540, "rice")])
    assert rules["no_repeat_fields"] == ["label"]
    assert rules["unit_factors"]["duration_seconds"].items() >= {"hour": 3600, "minute": 60, "second": 1}.items()
    assert {"timer for 10 minutes", "2 hours timer"} <= set(learned.repeated_spans(worded, rules))
    # without seeds, a habit most samples share is the task's
    habit = samples + [labelled(f"timer {n} minutes", n * 60, f"{n} minutes") for n in (2, 6, 7, 11)]
    assert learned.learn(habit)["no_repeat_fields"] == [] and learned.repeated_spans(habit, learned.learn(habit)) == {}


def test_the_runtime_drops_a_repeat_the_model_writes_before_working_the_value_out():
    rules = AnswerRules(derived_numbers={"duration_seconds": [60, 1]}, clock_fields=("time",),
                        no_repeat_fields=("label",))
    finish = lambda answer: json.loads(rules.finish(json.dumps(answer)))  # noqa: E731
    assert finish({"tool": "set_timer", "arguments": {"duration_seconds": "5 * 60", "label": "5 minute"}}) == \
        {"tool": "set_timer", "arguments": {"duration_seconds": 300}}
    assert finish({"tool": "set_timer", "arguments": {"duration_seconds": "5 * 60", "label": "tea"}}) == \
        {"tool": "set_timer", "arguments": {"duration_seconds": 300, "label": "tea"}}
    assert finish({"tool": "set_alarm", "arguments": {"time": "6:45 am", "label": "6:45 alarm"}}) == \
        {"tool": "set_alarm", "arguments": {"time": "06:45"}}
    assert finish({"tool": "set_alarm", "arguments": {"time": "6:45 am", "label": "gym"}})["arguments"]["label"] == "gym"
    # a label of nothing but the field's unit words (and numbers) repeats the value too, once the units are known
    units = AnswerRules(derived_numbers={"duration_seconds": [60, 3600, 1]}, no_repeat_fields=("label",),
                        unit_factors={"duration_seconds": {"minute": 60, "hour": 3600}})
    for label in ("minutes", "minute", "hour 30", "Five Minutes"):
        assert "label" not in json.loads(units.finish(json.dumps({"duration_seconds": "5 * 60", "label": label})))
    for label in ("pasta", "minute rice", "seconds"):  # a word of its own beside it, or a unit no sample showed
        assert json.loads(units.finish(json.dumps({"duration_seconds": "5 * 60", "label": label})))["label"] == label
    assert json.loads(rules.finish('{"duration_seconds": "5 * 60", "label": "minutes"}'))["label"] == "minutes"
    # without the rule (an older bundle) the label stays
    older = AnswerRules(derived_numbers={"duration_seconds": [60, 1]})
    assert json.loads(older.finish('{"duration_seconds": "5 * 60", "label": "5 minute"}'))["label"] == "5 minute"


def test_the_dataset_trains_the_arithmetic_and_keeps_the_label(tmp_path):
    from datasets import load_from_disk

    fields = learned.learn(SAMPLES)
    assert fields["derived_numbers"] and not fields["clock_fields"]
    write_dataset(SAMPLES, tmp_path / "dataset", system_prompt="route", validation_fraction=0.2, seed=0,
                  answer=lambda text, output: learned.student_answer(text, output, fields),
                  extra_files={DERIVED_VALUES: json.dumps(fields)})
    data = load_from_disk(str(tmp_path / "dataset"))
    row = next(r for split in ("train", "validation") for r in data[split] if r["input"] == "timer 12 minutes for tea")
    assert json.loads(row["output"])["arguments"]["duration_seconds"] == 720
    assert json.loads(row["messages"][-1]["content"])["arguments"]["duration_seconds"] == "12 * 60"
    # the rules travel with it (a dataset written before a kind of rule existed reads as having none of that kind)
    saved = {key: value for key, value in json.loads(json.dumps(fields)).items() if key != "unit_families"}
    # unit_families: for people only
    assert derived_values(tmp_path / "dataset") == saved | {"copy_stop_words": {}, "named_choices": {}}
    assert derived_values(tmp_path / "nothing") == {"derived_numbers": {}, "unit_factors": {}, "clock_fields": [],
                                                    "no_repeat_fields": [], "copy_stop_words": {}, "named_choices": {}}


def test_a_number_written_with_a_learned_unit_word_is_offered_in_that_units_factor_only():
    from runtime.derived_numbers import unit_bound_factors

    units = {"minute": 60, "hour": 3600, "second": 1}
    assert unit_bound_factors("set a 5 minute timer", units) == {5: [60]}
    assert unit_bound_factors("timer 1 hour 30 minutes and five seconds", units) == {1: [3600], 30: [60], 5: [1]}
    # a number written without a unit word, or once with one and once without, keeps every factor
    assert unit_bound_factors("timer 5", units) == {} and unit_bound_factors("5 eggs, 5 minutes", units) == {}
    assert unit_bound_factors("set a 5 minute timer", {}) == {}
    rules = AnswerRules(derived_numbers={"duration_seconds": [3600, 60, 1]},
                        unit_factors={"duration_seconds": units})
    offered = lambda text: rules.schema(TIMER, text)["properties"]["arguments"]["properties"][  # noqa: E731
        "duration_seconds"]["anyOf"][0]["enum"]
    assert offered("set a 5 minute timer") == ["5 * 60"]  # never "5 * 3600", which a 135M student once chose
    assert offered("timer 1 hour 30 minutes") == ["1 * 3600", "30 * 60", "1 * 3600 + 30 * 60"]
    assert offered("timer 5 for the eggs") == ["5 * 3600", "5 * 60", "5"]  # no unit word: the model's choice
    assert offered("a timer for 2 eggs, 4 minutes") == ["2 * 3600", "2 * 60", "2", "4 * 60", "2 * 3600 + 4 * 60",
                                                         "2 * 60 + 4 * 60", "2 + 4 * 60"]
    # the bundle carries the rule: a manifest (or an older one without it) gives the same rules
    assert AnswerRules.of({"derived_numbers": {"duration_seconds": [60]}, "unit_factors": {"duration_seconds": units}}
                          ).unit_factors == {"duration_seconds": units}
    assert AnswerRules.of({"derived_numbers": {"duration_seconds": [60]}}).unit_factors == {}


def test_the_request_schema_offers_expressions_over_its_own_numbers():
    fields = {"duration_seconds": [60, 1]}
    prop = derived_schema(TIMER, fields, "timer 7 minutes")["properties"]["arguments"]["properties"]
    options, plain = prop["duration_seconds"]["anyOf"]
    assert options == {"type": "string", "enum": ["7 * 60", "7"]} and plain == {"type": "integer", "minimum": 1}
    assert prop["level"] == {"type": "integer"}
    assert derived_schema(TIMER, fields, "timer please") is TIMER and derived_schema(TIMER, {}, "7 minutes") is TIMER


def test_resolve_works_out_only_the_derived_fields():
    fields = {"duration_seconds": [60]}
    text = '{"tool":"set_timer","arguments":{"duration_seconds":"25 * 60","label":"3 * 4"}}'
    assert json.loads(resolve(text, fields)) == {"tool": "set_timer",
                                                 "arguments": {"duration_seconds": 1500, "label": "3 * 4"}}
    assert resolve('{"duration_seconds": 300}', fields) == '{"duration_seconds": 300}'  # nothing to do: as written
    assert resolve("not json", fields) == "not json" and resolve(text, {}) == text


def test_each_eval_case_is_decoded_with_its_own_expressions():
    from kit.evaluate.worker import case_schema

    spec = {"schema": TIMER, "derived_numbers": {"duration_seconds": [60]}, "clock_fields": ["time"]}
    enum = case_schema(spec, "timer 9 minutes")["properties"]["arguments"]["properties"]["duration_seconds"]["anyOf"][0]
    assert enum["enum"] == ["9 * 60"]
    assert case_schema({"schema": TIMER}, "timer 9 minutes") is TIMER  # the base student and the teacher: plain


ALARM = {"type": "object", "properties": {"time": {"type": "string", "pattern": "^([01][0-9]|2[0-3]):[0-5][0-9]$"},
                                         "label": {"type": "string"}}, "required": ["time"]}


def alarm(text: str, time: str) -> dict:
    return sample(text, {"time": time})


def test_clock_spans_are_the_times_a_request_writes_and_convert_to_24_hours():
    text = "alarm at 6pm, 10:45 p.m., 7.30 am, 9:30, 8 o'clock or noon; not 2026-05-04, v2 or 25:00"
    assert clock_spans(text) == ["6pm", "10:45 p.m.", "7.30 am", "9:30", "8 o'clock", "noon"]
    assert [to_24h(s) for s in clock_spans(text)] == ["18:00", "22:45", "07:30", "09:30", "08:00", "12:00"]
    assert to_24h("12am") == "00:00" and to_24h("12:15 PM") == "12:15" and to_24h("13pm") is None


def test_a_bare_hour_after_at_is_a_clock_span_but_a_count_after_at_is_not():
    assert clock_spans("wake me up at 7") == ["at 7"] and to_24h("at 7") == "07:00"
    assert clock_spans("meet at 12, then at 7pm or at 8 o'clock") == ["at 12", "7pm", "8 o'clock"]
    assert clock_spans("volume at 65 percent, at 20 degrees, at 5 minutes, at 45, at 7:30") == ["7:30"]
    assert request_numbers("wake me up at 7") == [] and request_numbers("set the volume at 65") == [65]


def test_a_time_field_taken_from_the_requests_times_is_learned_and_trained_as_written():
    samples = [alarm("wake me at 6:15 am", "06:15"), alarm("alarm for 11pm", "23:00"), alarm("alarm 7", "19:00"),
               alarm("alarm at 9:30 for the bus", "09:30"), sample("weather at 5pm", {"time": "later"})]
    rules = learned.learn(samples)
    assert rules["clock_fields"] == ["time"] and rules["derived_numbers"] == {}
    trained = [json.loads(learned.student_answer(s["input"], s["output"], rules))["time"] for s in samples]
    assert trained == ["6:15 am", "11pm", "19:00", "9:30", "later"]  # no time in "alarm 7": the label stays
    assert learned.learn(samples[:1])["clock_fields"] == []  # one sample shows no rule
    finish = AnswerRules(clock_fields=("time",)).finish
    assert [json.loads(finish(learned.student_answer(s["input"], s["output"], rules))) for s in samples] == \
        [json.loads(s["output"]) for s in samples]


def test_the_request_schema_offers_the_requests_own_times():
    offered = clock_schema(ALARM, ["time"], "alarm for 10:45 pm")["properties"]["time"]["anyOf"]
    assert offered == [{"type": "string", "enum": ["10:45 pm"]}, ALARM["properties"]["time"]]
    assert clock_schema(ALARM, ["time"], "alarm please") is ALARM
    both = AnswerRules(("label",), {}, ("time",)).schema(ALARM, "alarm 6pm gym")["properties"]
    assert both["time"]["anyOf"][0]["enum"] == ["6pm"] and "gym" in both["label"]["enum"]


def _timer_bundle(write_bundle, store_gguf, folder):
    return write_bundle(folder, [(store_gguf, "gguf", "Q4_1")], name="timer", output_format="json",
                        output_schema=TIMER, derived_numbers={"duration_seconds": [60, 1]},
                        system_prompt="Set a timer: answer JSON with the tool and the duration in seconds.",
                        generation=GenerationDefaults(max_tokens=48, temperature=0.0))


def test_an_expert_answers_plain_numbers_whichever_way_the_model_writes_them(store_gguf, write_bundle, tmp_path):
    bundle = _timer_bundle(write_bundle, store_gguf, tmp_path / "timer")
    with Expert.load(bundle, n_ctx=512) as expert:
        answer = expert.run("set a timer for 7 minutes")
        jsonschema.validate(answer, TIMER)  # the grammar's anyOf decoded and worked out: a number again
        seconds = answer["arguments"].get("duration_seconds")
        assert seconds is None or isinstance(seconds, int)
        # held to the expression branch alone, the model must write one of the request's expressions
        only = {**TIMER, "properties": {**TIMER["properties"], "arguments": {
            "type": "object", "properties": {"duration_seconds": {"type": "string", "enum": ["7 * 60", "7"]}},
            "required": ["duration_seconds"]}}}
        text = expert.chat([{"role": "user", "content": "set a timer for 7 minutes"}], json_schema=only)
        assert json.loads(expert.finish(text))["arguments"]["duration_seconds"] in (420, 7)


@pytest.mark.slow
def test_the_server_works_out_derived_numbers_in_plain_and_streamed_replies(store_gguf, write_bundle, tmp_path,
                                                                           free_port):
    import openai

    from runtime.server import ServerSettings, create_app
    from tests.conftest import serving

    bundle = _timer_bundle(write_bundle, store_gguf, tmp_path / "timer")
    settings = ServerSettings(model=str(bundle), port=free_port(), n_ctx=1024)
    app = create_app(settings)
    request = dict(model="timer", messages=[{"role": "user", "content": "timer 3 minutes"}], max_tokens=48,
                   temperature=0, response_format={"type": "json_schema",
                                                   "json_schema": {"name": "timer", "schema": TIMER}})
    with serving(app, settings.port) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=120)
        plain = client.chat.completions.create(**request).choices[0].message.content
        streamed = "".join(chunk.choices[0].delta.content or "" for chunk in
                           client.chat.completions.create(**request, stream=True) if chunk.choices)
    app.state.expert.close()
    assert json.loads(plain) == json.loads(streamed)
    jsonschema.validate(json.loads(plain), TIMER)
    assert not isinstance(json.loads(plain)["arguments"].get("duration_seconds", 0), str)


def test_an_alarm_expert_answers_24_hour_times(store_gguf, write_bundle, tmp_path):
    bundle = write_bundle(tmp_path / "alarm", [(store_gguf, "gguf", "Q4_1")], name="alarm", output_format="json",
                          output_schema=ALARM, clock_fields=["time"],
                          system_prompt="Set an alarm: answer JSON with the time.",
                          generation=GenerationDefaults(max_tokens=32, temperature=0.0))
    with Expert.load(bundle, n_ctx=512) as expert:
        jsonschema.validate(expert.run("wake me at 4:15pm"), ALARM)  # span or HH:MM, it comes back as HH:MM
        only = {**ALARM, "properties": {"time": {"type": "string", "enum": ["4:15pm"]}}}
        text = expert.chat([{"role": "user", "content": "wake me at 4:15pm"}], json_schema=only)
        assert json.loads(expert.finish(text))["time"] == "16:15"


def test_the_bundle_carries_the_rules_its_dataset_was_trained_with(tiny_llama, tmp_path):
    """The rules are learned when the dataset is written and reach the bundle through it, so an app, `kit run`
    and `kit serve` decode as the eval scored."""
    from export.config import BundleInfo, ExportConfig, ExportStageConfig
    from export.stage import run as export
    from kit.core.run_dir import RunDir
    from runtime.manifest import read_manifest
    from tests.test_export import make_adapter

    rules = {"derived_numbers": {"duration_seconds": [60, 1]}, "clock_fields": ["time"],
             "copy_stop_words": {"label": ["set", "timer"]}, "named_choices": {"day": ["tomorrow"]}}
    write_dataset(SAMPLES, tmp_path / "dataset", system_prompt="route", validation_fraction=0.2, seed=0,
                  answer=lambda text, output: learned.student_answer(text, output, rules),
                  extra_files={DERIVED_VALUES: json.dumps(rules)})
    config = ExportStageConfig(
        export=ExportConfig(gguf_types=["F16"], ship=["F16"], gguf_pre_tokenizer="gpt-2", onnx={"enabled": False},
                            min_top1_agreement=0.0, max_perplexity_ratio=10.0, verify_tokens=4, threads=1),
        bundle=BundleInfo(name="timer", output_format="json", output_schema=TIMER),
        adapter=make_adapter(tiny_llama, tmp_path / "adapter"), base=str(tiny_llama), dataset=tmp_path / "dataset")
    export(config, RunDir(tmp_path / "run"))
    manifest = read_manifest(tmp_path / "run" / "bundle")
    assert manifest.derived_numbers == rules["derived_numbers"] and manifest.clock_fields == ["time"]
    assert manifest.copy_stop_words == {"label": ["set", "timer"]} and manifest.named_choices == {"day": ["tomorrow"]}
