"""Default values (kit/distill/default_values.py, runtime/default_values.py): a field of fixed choices takes the
choice the training data took when the request wrote none of them, and the runtime offers that choice alone for
such a request."""

from __future__ import annotations

import json

from kit.distill import default_values as learned
from runtime import Expert
from runtime.answer_rules import AnswerRules
from runtime.default_values import default_schema, words, writes
from runtime.manifest import GenerationDefaults

ROUTER = {"type": "object", "oneOf": [
    {"properties": {"tool": {"const": "get_weather"}, "arguments": {"type": "object", "properties": {
        "city": {"type": "string"}, "day": {"enum": ["today", "tomorrow"]}}, "required": ["city", "day"]}}},
    {"properties": {"tool": {"const": "toggle_setting"}, "arguments": {"type": "object", "properties": {
        "setting": {"enum": ["wifi", "airplane_mode"]}, "state": {"enum": ["on", "off"]}},
        "required": ["setting", "state"]}}}]}


def sample(text: str, tool: str, **arguments) -> dict:
    return {"id": text, "input": text, "output": json.dumps({"tool": tool, "arguments": arguments})}


SAMPLES = [sample("weather in Oslo tomorrow", "get_weather", city="Oslo", day="tomorrow"),
           sample("tomorrow's forecast for Lima", "get_weather", city="Lima", day="tomorrow"),
           sample("is it raining in Rome today", "get_weather", city="Rome", day="today"),
           sample("weather for Berlin", "get_weather", city="Berlin", day="today"),
           sample("how hot is it in Cairo right now", "get_weather", city="Cairo", day="today"),
           sample("turn on wifi", "toggle_setting", setting="wifi", state="on"),
           sample("enable airplane mode", "toggle_setting", setting="airplane_mode", state="on"),
           sample("disable the Wi-Fi", "toggle_setting", setting="wifi", state="off")]


def day_of(schema: dict) -> dict:
    return schema["oneOf"][0]["properties"]["arguments"]["properties"]["day"]


def test_a_request_writes_a_choice_as_its_words_in_a_row_or_run_together():
    assert words("Tomorrow's weather, Wi-Fi") == ["tomorrow", "s", "weather", "wi", "fi"]
    request = words("put the phone in airplane mode and the Wi-Fi on, tomorrow's fine")
    assert all(writes(request, choice) for choice in ("airplane_mode", "wifi", "on", "tomorrow"))
    assert not any(writes(words("call my phone now"), choice) for choice in ("on", "airplane_mode", "my call", ""))


def test_the_enum_fields_of_a_schema_are_found_in_every_branch():
    assert learned.enum_fields(ROUTER) == {"day": ["today", "tomorrow"], "setting": ["wifi", "airplane_mode"],
                                           "state": ["on", "off"]}


def test_a_default_is_learned_where_the_unnamed_choice_agrees_and_not_where_it_varies():
    fields = learned.enum_fields(ROUTER)
    unnamed = learned.unnamed_choices(SAMPLES, fields)
    assert unnamed["day"] == {"today": 2}  # Berlin and Cairo name no day; Oslo, Lima and Rome do
    assert unnamed["state"] == {"on": 1, "off": 1}  # "enable" and "disable": no "on" or "off" written, no rule
    assert learned.learn(SAMPLES, fields) == {"day": "today"}
    assert learned.learn(SAMPLES[:4], fields) == {}  # one unnamed day is no rule
    slip = sample("forecast for Paris", "get_weather", city="Paris", day="tomorrow")
    assert learned.learn(SAMPLES + [slip], fields) == {}  # 2 of 3 unnamed days today: under the share, no rule


def test_a_request_naming_no_choice_is_offered_the_default_alone():
    defaults = {"day": "today"}
    assert day_of(default_schema(ROUTER, defaults, "weather for Berlin")) == {"enum": ["today"]}
    assert day_of(default_schema(ROUTER, defaults, "will it rain in Oslo tomorrow?")) == day_of(ROUTER)
    assert default_schema(ROUTER, {}, "weather for Berlin") is ROUTER
    assert default_schema(None, defaults, "weather for Berlin") is None
    # a default the property does not list, or a property without an enum, is left alone
    assert day_of(default_schema(ROUTER, {"day": "yesterday"}, "weather for Berlin")) == day_of(ROUTER)
    assert default_schema(ROUTER, {"city": "Oslo"}, "weather for Berlin") == ROUTER


def test_the_rules_of_a_bundle_apply_the_defaults_and_an_older_bundle_has_none():
    rules = AnswerRules.of({"default_values": {"day": "today"}, "copy_fields": ["city"]})
    assert rules and not rules.rewrites_answers  # decoding changes, the answer is read as written
    schema = rules.schema(ROUTER, "weather for Berlin")
    assert day_of(schema) == {"enum": ["today"]}
    assert schema["oneOf"][0]["properties"]["arguments"]["properties"]["city"]["enum"][0] == "weather"
    assert AnswerRules.of({}).schema(ROUTER, "weather for Berlin") is ROUTER


def test_an_expert_answers_the_default_for_a_request_that_names_none(store_gguf, write_bundle, tmp_path):
    weather = {"type": "object", "properties": {"city": {"type": "string"}, "day": {"enum": ["today", "tomorrow"]}},
               "required": ["city", "day"], "additionalProperties": False}
    bundle = write_bundle(tmp_path / "weather", [(store_gguf, "gguf", "Q4_1")], name="weather", output_format="json",
                          output_schema=weather, copy_fields=["city"], default_values={"day": "tomorrow"},
                          system_prompt="Answer JSON with the city and the day of the weather asked for.",
                          generation=GenerationDefaults(max_tokens=32, temperature=0.0))
    with Expert.load(bundle, n_ctx=512) as expert:  # "tomorrow" as the default: the rule decides, not the model
        answer = expert.run("weather for Berlin")
        assert answer["day"] == "tomorrow" and answer["city"] in ("weather", "for", "Berlin", "weather for",
                                                                  "for Berlin", "weather for Berlin")
        assert expert.rules.schema(weather, "weather for Berlin today") == {**weather, "properties": {
            "city": {"type": "string", "enum": ["weather", "weather for", "weather for Berlin",
                                                "weather for Berlin today", "for", "for Berlin",
                                                "for Berlin today", "Berlin", "Berlin today", "today"]},
            "day": {"enum": ["today", "tomorrow"]}}}
