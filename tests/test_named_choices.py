"""Named choices (runtime/named_choices.py, kit/distill/named_choices.py): an enum field held to the one choice a
request names, where the training data showed that choice so answered."""

from __future__ import annotations

import json
from pathlib import Path

from kit.distill import named_choices as learned
from runtime.answer_rules import AnswerRules
from runtime.named_choices import named_choices, named_schema

ROUTER = json.loads((Path(__file__).resolve().parents[1] / "examples" / "tool-calling" / "schema.json").read_text())


def row(text: str, tool: str, **arguments) -> dict:
    return {"id": text, "input": text, "output": json.dumps({"tool": tool, "arguments": arguments})}


def enum_of(schema: dict, tool: str, key: str) -> list:
    branch = next(b for b in schema["oneOf"] if b["properties"]["tool"].get("const") == tool)
    return branch["properties"]["arguments"]["properties"][key]["enum"]


def test_a_request_names_choices_as_words_with_underscores_and_hyphens_read_as_spaces():
    choices = ["wifi", "bluetooth", "airplane_mode", "do_not_disturb", "flashlight"]
    assert named_choices("put the phone in Airplane Mode", choices) == ["airplane_mode"]
    assert named_choices("turn on do-not-disturb and wifi", choices) == ["wifi", "do_not_disturb"]  # schema order
    assert named_choices("switch off the wifi-router light", choices) == []  # part of a longer word
    assert named_choices("tomorrowland tickets", ["today", "tomorrow"]) == []


def test_a_field_is_narrowed_to_a_named_choice_the_request_names_alone():
    named = {"day": ["today", "tomorrow"], "state": ["off"]}
    assert enum_of(named_schema(ROUTER, named, "forecast for Cairo tomorrow"), "get_weather", "day") == ["tomorrow"]
    # naming both, or neither: decoded as before
    assert enum_of(named_schema(ROUTER, named, "today or tomorrow in Oslo?"), "get_weather", "day") == ["today", "tomorrow"]
    assert enum_of(named_schema(ROUTER, named, "weather in Oslo"), "get_weather", "day") == ["today", "tomorrow"]
    # "on" is no named choice: "disable wifi on the phone" keeps both states; "off" named alone narrows
    assert enum_of(named_schema(ROUTER, named, "disable wifi on the phone"), "toggle_setting", "state") == ["on", "off"]
    assert enum_of(named_schema(ROUTER, named, "wifi off"), "toggle_setting", "state") == ["off"]
    assert named_schema(ROUTER, {}, "wifi off") is ROUTER
    # the bundle's rules carry them (an older manifest without them decodes as before)
    rules = AnswerRules.of({"named_choices": named})
    assert rules and enum_of(rules.schema(ROUTER, "Paris tomorrow?"), "get_weather", "day") == ["tomorrow"]
    assert AnswerRules.of({}).named_choices == {}


def test_named_choices_are_learned_per_choice_and_a_sample_against_one_is_a_slip():
    weather = [row(f"weather in {c} tomorrow", "get_weather", city=c, day="tomorrow") for c in ("Oslo", "Lima", "Rome")]
    weather += [row(f"{c} today", "get_weather", city=c, day="today") for c in ("Pune", "Kyiv", "Bern")]
    toggles = [row(f"turn {s} off", "toggle_setting", setting=s, state="off") for s in ("wifi", "bluetooth")] + [
        row("wifi on", "toggle_setting", setting="wifi", state="on"),
        row("disable wifi on the phone", "toggle_setting", setting="wifi", state="off"),
        row("disable bluetooth on the tablet", "toggle_setting", setting="bluetooth", state="off"),
        row("flashlight on please", "toggle_setting", setting="flashlight", state="on")]
    slip = row("what about Porto tomorrow?", "get_weather", city="Porto", day="today")
    rules = learned.learn(weather + toggles + [slip], ROUTER)
    # tomorrow: 3 of 4; today: 3 of 3; "on" named alone: answered on 2 times of 4; wifi 4 of 4, bluetooth only 2
    assert rules == {"setting": ["wifi"], "day": ["today"]}
    rules = learned.learn(weather + weather[:3] + toggles + [slip], ROUTER)  # 6 of 7 tomorrows: still short of 0.9
    assert rules["day"] == ["today"]
    more = [row(f"is it cold in {c} tomorrow", "get_weather", city=c, day="tomorrow") for c in "ABCDEFG"]
    rules = learned.learn(weather + more + [slip], ROUTER)  # 10 of 11
    assert rules["day"] == ["today", "tomorrow"]
    assert learned.slips(weather + more + [slip], rules, ROUTER) == {
        slip["id"]: "'day' is 'today' where the request names 'tomorrow'"}
    assert learned.learn(weather, {"type": "object"}) == {}
