"""Copied fields (runtime/copy_fields.py): values a recipe says are copied from the request are decoded as spans
of it, by the runtime, the eval and the teacher alike."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kit.distill.config import CriticConfig, GenerateConfig
from kit.distill.prompts import answer_schema
from runtime import Expert
from runtime.copy_fields import MAX_WORDS, copy_schema, request_spans
from runtime.manifest import GenerationDefaults

ROUTER = json.loads((Path(__file__).resolve().parents[1] / "examples" / "tool-calling" / "schema.json").read_text())
COPIED = ["recipient", "text", "name", "query", "label", "title", "city"]


def enums(node, found=None) -> dict[str, list]:
    """Every property that got an enum, by name."""
    found = {} if found is None else found
    if isinstance(node, dict):
        for name, prop in (node.get("properties") or {}).items():
            if isinstance(prop, dict) and "enum" in prop:
                found[name] = prop["enum"]
        for value in node.values():
            enums(value, found)
    elif isinstance(node, list):
        for item in node:
            enums(item, found)
    return found


def test_spans_are_the_requests_own_words_with_and_without_edge_punctuation():
    spans = request_spans("message Priya: can you bring the charger?")
    assert {"Priya", "Priya:", "can you bring the charger?", "can you bring the charger"} <= set(spans)
    assert "priya" not in spans and " Priya" not in spans and "Priya can" not in spans
    assert len(spans) == len(set(spans))
    assert request_spans("") == [] and request_spans(" ".join(["word"] * (MAX_WORDS + 1))) == []


def test_only_the_named_free_string_fields_are_restricted():
    restricted = copy_schema(ROUTER, COPIED, "what's the weather in Buenos Aires tomorrow")
    found = enums(restricted)
    assert set(found) >= {"city", "recipient", "text", "query"}
    assert "Buenos Aires" in found["city"] and "tomorrow" in found["city"]
    assert found["day"] == ["today", "tomorrow"]  # an enum of the schema's own is left as it is
    assert "setting" not in COPIED and found["setting"] != found["city"]
    time = restricted["oneOf"][1]["properties"]["arguments"]["properties"]["time"]
    assert "enum" not in time and "pattern" in time  # a field the recipe does not copy stays as it is
    assert ROUTER["oneOf"][0]["properties"]["arguments"]["properties"]["label"] == {"type": "string"}  # not changed
    assert copy_schema(ROUTER, [], "anything") is ROUTER and copy_schema(None, COPIED, "x") is None


def test_a_copied_field_with_a_pattern_keeps_the_spans_that_match_it():
    event = copy_schema(ROUTER, ["date"], "dentist on 2026-03-14 at 3pm")["oneOf"][3]["properties"]["arguments"]
    assert event["properties"]["date"]["enum"] == ["2026-03-14"]
    undated = copy_schema(ROUTER, ["date"], "dentist on the 14th of March")["oneOf"][3]["properties"]["arguments"]
    assert "enum" not in undated["properties"]["date"]  # no span fits: the pattern alone, the critic judges


def test_copied_fields_come_from_the_case_sensitive_grounded_checks():
    critic = CriticConfig.model_validate({"verifiers": [
        {"type": "json_schema"}, {"type": "grounded", "fields": ["city", "name"]},
        {"type": "grounded", "fields": ["query"], "ignore_case": True}, {"type": "grounded", "fields": ["name"]}]})
    assert critic.copied_fields == ["city", "name"]


def test_the_teachers_answer_schema_holds_copied_fields_to_the_input():
    config = GenerateConfig.model_validate({
        "task": {"name": "router", "description": "route a request"},
        "output": {"format": "json", "schema": ROUTER},
        "seeds": [{"input": "call mom", "output": {"tool": "call_contact", "arguments": {"name": "mom"}}}],
        "critic": {"verifiers": [{"type": "json_schema"}, {"type": "grounded", "fields": COPIED}]},
        "data": {"reasoning": False}})
    schema = answer_schema(config, "call Dr. Patel now")
    assert "Dr. Patel" in enums(schema)["name"]
    assert "enum" not in json.dumps(answer_schema(config)["properties"]["answer"]["oneOf"][7])  # no input: free


@pytest.mark.slow
def test_a_copy_expert_answers_with_the_requests_words_as_written(store_gguf, write_bundle, tmp_path):
    schema = {"type": "object", "properties": {"city": {"type": "string"}, "day": {"enum": ["today", "tomorrow"]}},
              "required": ["city", "day"]}
    fields = dict(name="weather", output_format="json", output_schema=schema,
                  system_prompt="Give the city and the day the user asks about as JSON.",
                  generation=GenerationDefaults(max_tokens=32, temperature=0.0))
    copying = write_bundle(tmp_path / "copying", [(store_gguf, "gguf", "Q4_1")], copy_fields=["city"], **fields)
    request = "hOw Is ThE wEaThEr In bUeNoS aIrEs tomorrow"  # a base model would recase or respell the city
    with Expert.load(copying, n_ctx=512) as expert:
        answer = expert.run(request)
    assert answer["city"] in request_spans(request)
    # with the bundle's stop words the city cannot be made of "weather", "in" or "tomorrow" alone
    stopping = write_bundle(tmp_path / "stopping", [(store_gguf, "gguf", "Q4_1")], copy_fields=["city"],
                            copy_stop_words={"city": ["how", "is", "the", "weather", "in", "tomorrow"]}, **fields)
    with Expert.load(stopping, n_ctx=512) as expert:
        assert "bUeNoS" in expert.run(request)["city"]


@pytest.mark.slow
def test_the_server_holds_copied_fields_when_asked_for_the_bundles_schema(store_gguf, write_bundle, tmp_path,
                                                                           free_port, person_schema):
    import openai

    from runtime.server import ServerSettings, create_app
    from tests.conftest import serving

    bundle = write_bundle(tmp_path / "people", [(store_gguf, "gguf", "Q4_1")], name="people", output_format="json",
                          output_schema=person_schema, copy_fields=["name"],
                          system_prompt="Extract the person mentioned by the user as JSON with their name and age.",
                          generation=GenerationDefaults(max_tokens=48, temperature=0.0))
    settings = ServerSettings(model=str(bundle), port=free_port(), n_ctx=1024)
    app = create_app(settings)
    with serving(app, settings.port) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=120)
        request = "mArIa LoPeZ-gArCiA turned 34 last week."
        reply = client.chat.completions.create(
            model="people", messages=[{"role": "user", "content": request}], max_tokens=48, temperature=0,
            response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": person_schema}})
        assert json.loads(reply.choices[0].message.content)["name"] in request_spans(request)
    app.state.expert.close()


def test_each_eval_case_gets_its_own_copied_spans():
    from kit.evaluate.worker import case_schema

    spec = {"schema": ROUTER, "copy_fields": ["city"]}
    oslo, lima = (enums(case_schema(spec, f"weather in {city} today"))["city"] for city in ("Oslo", "Lima"))
    assert "Oslo" in oslo and "Oslo" not in lima and "Lima" in lima
    assert case_schema({"schema": ROUTER}, "weather in Oslo") is ROUTER  # a spec without copied fields: as it was


def test_a_span_of_nothing_but_a_fields_stop_words_is_not_offered():
    stop = {"label": ["a", "for", "minutes", "set", "timer"], "city": ["in", "today", "weather"]}
    label = enums(copy_schema(ROUTER, COPIED, "set a timer for 5 minutes", stop))["label"]
    assert not {"timer", "set a timer", "a timer for", "minutes", "set"} & set(label)
    assert {"5 minutes", "timer for 5", "set a timer for 5 minutes"} <= set(label)  # a word of its own in them
    city = enums(copy_schema(ROUTER, COPIED, "weather in Tokyo today", stop))["city"]
    assert "today" not in city and "in Tokyo" in city and "Tokyo" in city
    # other copied fields, and a bundle without stop words, are offered every span
    assert "timer" in enums(copy_schema(ROUTER, COPIED, "set a timer for 5 minutes", stop))["text"]
    assert "timer" in enums(copy_schema(ROUTER, COPIED, "set a timer for 5 minutes"))["label"]


def test_stop_words_are_the_words_most_requests_of_a_fields_kind_write_and_no_value_holds():
    from kit.distill import stop_words

    def row(text, tool, **arguments):
        return {"input": text, "output": json.dumps({"tool": tool, "arguments": arguments})}

    timers = [row(f"set a timer for {n} minutes", "set_timer", duration_seconds=n * 60) for n in (2, 5, 9)] + [
        row("set a timer for 4 minutes for the pasta", "set_timer", duration_seconds=240, label="pasta"),
        row("timer 30 seconds for the tea", "set_timer", duration_seconds=30, label="tea"),
        row("set a timer called timer break", "set_timer", duration_seconds=60, label="timer break")]
    weather = [row(f"weather in {c} today", "get_weather", city=c, day="today") for c in ("Oslo", "Lima", "Rome")]
    learned = stop_words.learn(timers + weather, ["label", "city"], ROUTER)
    # "timer" is in a label once ("timer break"): never a stop word; the weather requests are too few to count;
    # every timer request writes a number and no label holds one
    assert learned == {"label": ["#number", "a", "for", "minutes", "set"]}
    weather += [row(f"weather in {c} today", "get_weather", city=c, day="today") for c in ("Pune", "Kiev")]
    assert stop_words.learn(timers + weather, ["label", "city"], ROUTER)["city"] == ["in", "today", "weather"]
    assert stop_words.learn(timers, [], ROUTER) == {}


def test_shapes_are_dates_times_and_other_numbers_and_a_stop_shape_cuts_every_span_holding_it():
    from kit.distill import stop_words
    from runtime.copy_fields import span_shapes

    assert span_shapes("haircut 2026-07-22 at 11am") == {"#date", "#time"}
    assert span_shapes("running 10 minutes late") == {"#number"} and span_shapes("lunch at noon") == {"#time"}
    assert span_shapes("on 22/07/2026") == {"#date"} and span_shapes("version 1.5") == {"#number"}
    assert span_shapes("dinner with the Smiths") == set()

    def event(text, title, date, time):
        return {"input": text, "output": json.dumps({"tool": "create_event", "arguments": {
            "title": title, "date": date, "time": time}})}

    events = [event("add dentist 2027-01-12 at 9am", "dentist", "2027-01-12", "09:00"),
              event("schedule team sync on 2027-02-03 at 14:30", "team sync", "2027-02-03", "14:30"),
              event("calendar: yoga class 2027-03-04 6pm", "yoga class", "2027-03-04", "18:00"),
              event("put lunch with Ana on 2027-04-05 at noon", "lunch with Ana", "2027-04-05", "12:00"),
              event("new event 3 budget review 2027-05-06 10:00", "3 budget review", "2027-05-06", "10:00")]
    learned = stop_words.learn(events, ["title", "date"], ROUTER)
    # a title never held a date or a time, every request writes both; one title holds a number: no stop shape
    assert {"#date", "#time"} <= set(learned["title"]) and "#number" not in learned["title"]
    assert "#date" not in learned.get("date", [])  # every date value is one
    title = enums(copy_schema(ROUTER, COPIED, "calendar: haircut 2026-07-22 at 11am", learned))["title"]
    assert title == ["calendar:", "calendar", "calendar: haircut", "haircut"]  # nothing running into the date
    # a bundle whose stop words name no shape offers those spans as before
    assert "haircut 2026-07-22" in enums(copy_schema(ROUTER, COPIED, "calendar: haircut 2026-07-22 at 11am",
                                                     {"title": ["at"]}))["title"]
