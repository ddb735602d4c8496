"""Value swaps (kit/distill/augment.py): new training rows whose copied values are exchanged, checked by the critic."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from kit.distill.augment import slots, value_swaps
from kit.distill.config import GenerateConfig
from kit.distill.critic import build_critic
from kit.distill.generate import swap_rows

WEATHER = {"type": "object", "properties": {
    "tool": {"enum": ["get_weather", "set_timer", "set_volume"]},
    "arguments": {"type": "object", "properties": {
        "city": {"type": "string"}, "day": {"enum": ["today", "tomorrow"]},
        "duration_seconds": {"type": "integer"}, "level": {"type": "integer", "maximum": 100}}}},
    "required": ["tool", "arguments"]}


def sample(id_: str, text: str, tool: str, **arguments) -> dict:
    return {"id": id_, "input": text, "value": {"tool": tool, "arguments": arguments}}


SAMPLES = [
    sample("a", "weather in Oslo tomorrow", "get_weather", city="Oslo", day="tomorrow"),
    sample("b", "is it hot in Buenos Aires today", "get_weather", city="Buenos Aires", day="today"),
    sample("c", "forecast for Lima today please", "get_weather", city="Lima", day="today"),
    sample("d", "set a 5 minute timer", "set_timer", duration_seconds=300),
    sample("e", "countdown 45 seconds", "set_timer", duration_seconds=45),
    sample("f", "timer 90 seconds", "set_timer", duration_seconds=90),
    sample("g", "volume to 30", "set_volume", level=30),
    sample("h", "set the volume to 150", "set_volume", level=150),
]


def test_a_swap_changes_a_copied_value_in_the_request_and_the_answer_together():
    swaps = {s.id: s for s in value_swaps(SAMPLES, per_sample=2)}
    for swap in swaps.values():
        arguments = swap.answer["arguments"]
        for value in arguments.values():
            assert str(value) in swap.input  # every copied value is still copied word for word
    oslo = [s for s in swaps.values() if s.source_id == "a"]
    assert oslo and all(s.answer["arguments"]["city"] in ("Buenos Aires", "Lima") for s in oslo)
    assert all(s.answer["tool"] == "get_weather" for s in oslo)


def test_a_value_derived_otherwise_than_by_a_factor_is_never_swapped():
    assert slots("dinner at 6pm", {"time": "18:00"}) == []
    assert slots("alarm at 6:45", {"minute": 45}) == []  # part of a clock time is not a number of its own
    assert slots("1 hour 30 minutes", {"duration_seconds": 5400}) == []  # two numbers: no single factor
    swaps = value_swaps(SAMPLES, per_sample=3)
    assert not any(s.source_id == "d" for s in swaps)  # one sample alone does not show a factor


def test_a_number_scaled_by_a_constant_factor_keeps_its_factor():
    minutes = [sample(f"m{n}", f"timer for {n} minutes", "set_timer", duration_seconds=60 * n) for n in (2, 10)]
    swaps = value_swaps(SAMPLES + minutes, per_sample=3)
    scaled = [s for s in swaps if s.source_id.startswith("m")]
    assert scaled
    for swap in scaled:
        n = int(swap.input.split()[2])
        assert 2 <= n <= 10 and swap.answer["arguments"]["duration_seconds"] == 60 * n
    seconds = [s for s in swaps if s.source_id in ("e", "f")]  # 45 and 90 seconds: factor 1, drawn from 45..90
    assert seconds and all(45 <= s.answer["arguments"]["duration_seconds"] <= 90 for s in seconds)
    assert all(str(s.answer["arguments"]["duration_seconds"]) in s.input for s in seconds)


def test_a_value_found_twice_or_inside_another_is_left_alone():
    answer = {"recipient": "Sam", "text": "Sam is here"}
    assert [s.written for s in slots("text Sam that Sam is here", answer)] == ["Sam is here"]  # "Sam" twice
    assert [s.written for s in slots("weather in Oslo", {"city": "Oslo", "note": "Os"})] == ["Oslo"]  # whole words
    assert slots("weather in Oslo", {"city": "Oslo", "query": "in Oslo"}) == []  # overlapping values


def test_swaps_are_deterministic_and_never_repeat_an_input():
    first = value_swaps(SAMPLES, per_sample=4, seed=1)
    assert first == value_swaps(SAMPLES, per_sample=4, seed=1)
    inputs = [s.input for s in first] + [s["input"] for s in SAMPLES]
    assert len(inputs) == len(set(inputs))
    assert value_swaps(SAMPLES, per_sample=0) == []


def config_for(tmp_path: Path, per_sample: int, eval_rows: list[dict]) -> GenerateConfig:
    eval_file = tmp_path / "eval.jsonl"
    eval_file.write_text("".join(json.dumps(r) + "\n" for r in eval_rows))
    return GenerateConfig.model_validate({
        "task": {"name": "router", "description": "route a request"},
        "output": {"format": "json", "schema": WEATHER},
        "seeds": [{"input": "weather in Rome today", "output": {"tool": "get_weather",
                                                                "arguments": {"city": "Rome", "day": "today"}}}],
        "critic": {"verifiers": [{"type": "json_schema"}, {"type": "dedup"}, {"type": "decontaminate"}]},
        "data": {"value_swaps": per_sample, "validation_fraction": 0.0},
        "eval_file": str(eval_file)})


def rows_of(samples: list[dict]) -> list[dict]:
    return [{"id": s["id"], "input": s["input"], "output": json.dumps(s["value"], separators=(",", ":"))}
            for s in samples]


def swapped(tmp_path: Path, per_sample: int, eval_rows: list[dict], held_out: set[str] = frozenset()):
    config = config_for(tmp_path, per_sample, eval_rows)
    critic = build_critic(config.critic.verifiers, schema=WEATHER, eval_file=config.eval_file, seed_inputs=[],
                          judge_client=None, task_description="")
    seeds = [{"id": "seed-1", "input": "weather in Rome today",
              "output": '{"tool":"get_weather","arguments":{"city":"Rome","day":"today"}}'}]
    return asyncio.run(swap_rows(config, critic, rows_of(SAMPLES), seeds, set(held_out)))


def test_swapped_rows_pass_the_schema_and_stay_out_of_the_eval_set(tmp_path):
    eval_rows = [{"input": "is it hot in Oslo today", "output": {"tool": "get_weather",
                                                                  "arguments": {"city": "Oslo", "day": "today"}}}]
    rows, figures = swapped(tmp_path, 3, eval_rows)
    inputs = [r["input"] for r in rows]
    assert "is it hot in Oslo today" not in inputs  # a swap that recreates an eval item is cut
    assert figures["rejected"].get("decontaminate", 0) >= 1
    assert figures["rejected"].get("json_schema", 0) >= 1  # level 150 swapped into a volume request, or kept out
    for row in rows:
        value = json.loads(row["output"])
        assert not (value["tool"] == "set_volume" and value["arguments"]["level"] > 100)
        assert row["id"].split("~swap")[0] in {s["id"] for s in SAMPLES} | {"seed-1"}
    assert figures["kept"] == len(rows) > 0 and figures["made"] == len(rows) + sum(figures["rejected"].values())


def test_held_out_probes_give_no_value_to_a_swap(tmp_path):
    rows, _ = swapped(tmp_path, 3, [], held_out={"b"})
    assert rows and not any("Buenos Aires" in r["input"] for r in rows)
    assert not any(r["id"].startswith("b~") for r in rows)


def test_no_swaps_for_answers_that_are_not_json(tmp_path):
    config = GenerateConfig.model_validate(config_for(tmp_path, 2, []).model_dump() | {"output": {"format": "sql"}})
    critic = build_critic([], schema=None, eval_file=None, seed_inputs=[], judge_client=None, task_description="")
    rows, figures = asyncio.run(swap_rows(config, critic, [], [], set()))
    assert rows == [] and "JSON answers only" in figures["note"]
