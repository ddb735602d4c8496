"""What the teacher is asked: the generation plan (diverse on purpose), the prompts, the reply schemas
and how replies are parsed. Everything comes from the recipe; nothing here knows a task."""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from kit.distill.critic.base import Answer, input_text
from runtime.copy_fields import copy_schema

EVOLUTIONS = (  # each completes "Rewrite this input so that you ..."
    "add one more constraint or requirement to it",
    "make it more specific and concrete, with realistic details",
    "make it need one more step of reasoning",
    "change the scenario and the details but keep the same kind of request",
    "phrase it the way a busy real user would type it: short and casual",
)
LIKE_ASK = ("the same kind of request needing the same kind of answer, with other details (other names, numbers, "
            "times, dates, places and wording)")
# asked of a fresh list: left alone, a small teacher opens nearly every input of a topic the way the one seed of
# that topic does (22 of 24 messages "text X ...", 18 of 22 songs "play ..."), and a student trained on them
# misreads "tell Alex I'll call him back" or "send Lena the message ..."; asked this, 47 of 72 inputs opened with a
# word no other input of their list had, against 39 of 72 (Qwen2.5-Coder-1.5B, 18 lists of 4); over a whole build's
# 200 kept samples the openings moved little (74 distinct first words per tool against 69) and the student did not
# gain, so `data.distinct_openings` is off by default
OPENINGS_ASK = "All {count} ask for the topic's action, each opening with a different word."
ECHO_WORDS = 5  # an input sharing this many consecutive words with the request's own ask is an echo of it
MAX_SHOTS = 16  # seeds shown in every prompt, always the same ones in the same order


class ParseError(ValueError):
    pass


@dataclass(frozen=True)
class PlanItem:
    index: int
    evolve_seed: int | None  # rewrite this seed, or (None) write a fresh input
    evolution: str
    topic: str | None
    persona: str | None
    difficulty: str | None
    like: str | None = None  # a failed probe input to write new inputs like (later rounds)
    wordings: tuple[str, ...] = ()  # ways of wording the request, one per input of the item's list

    @property
    def origin(self) -> str:
        if self.like is not None:
            return f"like failed probe: {self.like[:80]}"
        if self.evolve_seed is not None:
            return f"evolve seed {self.evolve_seed}: {self.evolution}"
        parts = [f"{k}={v}" for k, v in (("topic", self.topic), ("persona", self.persona),
                                           ("difficulty", self.difficulty)) if v]
        return "new " + ", ".join(parts) if parts else "new"


def request_seed(data_seed: int, index: int, role: str, k: int = 0) -> int:
    """A sampling seed per request: distinct requests never share a cache key; re-runs repeat them exactly."""
    return int(hashlib.sha256(f"{data_seed}:{index}:{role}:{k}".encode()).hexdigest()[:8], 16)


def round_salt(config) -> str:
    """The data seed, tagged with the round after the first: a later round's plan and requests are its own, and
    round 1 (or a build without rounds) keeps the requests, and so the teacher cache, it always had."""
    number = config.round.number
    return str(config.data.seed) if number == 1 else f"{config.data.seed}:round{number}"


def round_role(config, role: str) -> str:
    number = config.round.number
    return role if number == 1 else f"round{number}:{role}"


def plan_item(config, index: int, failures: Sequence[str] = (),
              wordings: Mapping[str, Sequence[str]] | None = None) -> PlanItem:
    """The `index`-th input to write; the same recipe (and the same teacher-listed `wordings` per topic) always
    gives the same plan. A later round with probe failures spends `data.failure_share` of its lists on new inputs
    like each failed one in turn (persona and kind still vary); the other lists follow the plain plan, so every
    topic keeps its share."""
    data = config.data
    per_request = data.inputs_per_request
    # the items of one list share one plan: the teacher writes them in one reply, for the same wishes
    unit = index // per_request
    salt = round_salt(config)
    rng = _unit_rng(salt, per_request, unit)
    pick = lambda options: rng.choice(options) if options else None  # noqa: E731
    share = data.failure_share
    if failures and _imitates_failure(unit, share):
        like = failures[math.floor(unit * share) % len(failures)]
        return PlanItem(index=index, evolve_seed=None, evolution="", topic=None, persona=pick(data.personas),
                        difficulty=pick(data.difficulty_levels), like=like)
    # topics are taken in turn over the units that write fresh inputs, seeds over those that rewrite one: counted
    # over all units, the units a seed rewrite takes would cost their topic its turn (one build's 200 samples held
    # 11 timers against 25 calls)
    kinds = _unit_kinds(salt, per_request, data.evolve_fraction, share if failures else 0.0, unit)
    evolve = kinds[unit] == "evolve"
    rng.random()  # the draw that decided it (kinds), so every later draw is that unit's own
    before = kinds[:unit].count(kinds[unit])
    topic = None if evolve else _in_turn(data.topics, before, f"{salt}:topics")
    return PlanItem(
        index=index,
        evolve_seed=_in_turn(list(range(len(config.seeds))), before, f"{salt}:seeds") if evolve else None,
        evolution=rng.choice(data.evolutions or EVOLUTIONS),
        topic=topic,
        persona=pick(data.personas),
        difficulty=pick(data.difficulty_levels),
        wordings=() if evolve else _wordings_in_turn((wordings or {}).get(topic or "", ()), before,
                                                     max(1, len(data.topics)), per_request, f"{salt}:wordings:{topic}"),
    )


def _unit_rng(salt: str, per_request: int, unit: int) -> random.Random:
    return random.Random(f"{salt}:{unit}" if per_request == 1 else f"{salt}:list{per_request}:{unit}")


def _imitates_failure(unit: int, share: float) -> bool:
    return math.floor((unit + 1) * share) > math.floor(unit * share)


_KINDS: dict[tuple, list[str]] = {}  # (salt, per_request, evolve_fraction, failure share) -> each unit's kind
_KINDS_KEPT = 8  # plans remembered (one per generate round in flight); the oldest is forgotten first


def _unit_kinds(salt: str, per_request: int, evolve_fraction: float, failure_share: float, unit: int) -> list[str]:
    """What units 0..`unit` do ("like" a failure, "evolve" a seed, or "fresh" inputs on a topic), decided by each
    unit's own first draw, as plan_item decides it."""
    key = (salt, per_request, evolve_fraction, failure_share)
    if key not in _KINDS and len(_KINDS) >= _KINDS_KEPT:
        del _KINDS[next(iter(_KINDS))]
    kinds = _KINDS.setdefault(key, [])
    while len(kinds) <= unit:
        k = len(kinds)
        if failure_share and _imitates_failure(k, failure_share):
            kinds.append("like")
        else:
            kinds.append("evolve" if _unit_rng(salt, per_request, k).random() < evolve_fraction else "fresh")
    return kinds


def _wordings_in_turn(options: Sequence[str], unit: int, topics: int, per_request: int, salt: str) -> tuple[str, ...]:
    """The wordings of a list (one per input): the topic's k-th list takes the next `per_request` of its
    wordings, in an order shuffled once per topic, so every wording is used about as often as the others."""
    if not options:
        return ()
    order = list(options)
    random.Random(salt).shuffle(order)
    start = (unit // topics) * per_request
    return tuple(order[(start + j) % len(order)] for j in range(per_request))


def _in_turn(options: Sequence[Any], unit: int, salt: str) -> Any:
    """Every option once per round, in an order shuffled per round: topics stay balanced however few
    inputs are written (drawing at random leaves some topics with a handful of samples)."""
    if not options:
        return None
    order = list(options)
    random.Random(f"{salt}:{unit // len(order)}").shuffle(order)
    return order[unit % len(order)]


def echoes_ask(messages: list[dict[str, str]], task_input: Any) -> bool:
    """True when a written input repeats `ECHO_WORDS` consecutive words of what the input request asked (its
    first user line: "Rewrite this input 4 different ways, each so that you ..."): a small teacher sometimes
    writes the instruction itself as an input ("rewrite this input to 4 different ways, ..."), and its answer
    then teaches the student nothing it will meet."""
    ask = next(m["content"] for m in messages if m["role"] == "user").split("\n", 1)[0]
    grams = _word_grams(ask, ECHO_WORDS)
    return bool(grams) and not grams.isdisjoint(_word_grams(input_text(task_input), ECHO_WORDS))


def _word_grams(text: str, n: int) -> set[tuple[str, ...]]:
    tokens = re.findall(r"[a-z0-9']+", text.lower())
    return {tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)}


def shots(config) -> list:
    """The seeds every prompt shows. Prompts put everything fixed first and the item's own words last:
    a local teacher then re-reads only the tail (its context keeps the shared prefix)."""
    return config.seeds[:MAX_SHOTS]


# -- schemas -------------------------------------------------------------------------------------
def inputs_are_objects(config) -> bool:
    return bool(config.seeds) and all(isinstance(s.input, dict) for s in config.seeds)


def answer_value_schema(config) -> dict[str, Any]:
    if config.output.format == "json":
        return config.output.json_schema or {"type": "object"}
    return {"type": "string", "minLength": 1}


def input_schema(config, with_reference: bool) -> dict[str, Any]:
    value = {"type": "object"} if inputs_are_objects(config) else {"type": "string", "minLength": 1}
    properties: dict[str, Any] = {"input": value}
    if with_reference:
        properties["reference"] = answer_value_schema(config)
    return {"type": "object", "properties": properties, "required": list(properties)}


def inputs_schema(config, count: int, with_reference: bool) -> dict[str, Any]:
    """A reply that holds `count` inputs (each with its reference when asked)."""
    one = input_schema(config, with_reference)
    item = one if with_reference else one["properties"]["input"]
    return {"type": "object", "properties": {"inputs": {"type": "array", "items": item, "minItems": count,
                                                        "maxItems": count}}, "required": ["inputs"]}


def answer_schema(config, task_input: str | dict[str, Any] | None = None) -> dict[str, Any]:
    """The teacher's reply: the answer (with its reasoning first). With `task_input`, the values the recipe says
    are copied from the request (its `grounded` keys) are held to the request's own words."""
    value = answer_value_schema(config)
    if task_input is not None and config.output.format == "json":
        value = copy_schema(value, config.critic.copied_fields, input_text(task_input))
    if not config.data.reasoning:
        return {"type": "object", "properties": {"answer": value}, "required": ["answer"]}
    return {"type": "object", "properties": {"reasoning": {"type": "string"}, "answer": value},
            "required": ["reasoning", "answer"]}


# -- prompts -------------------------------------------------------------------------------------
def _task_block(config) -> str:
    text = f"Task: {config.task.description}"
    if config.task.instructions:
        text += f"\nGuidance: {config.task.instructions}"
    return text


def _format_note(config) -> str:
    fmt = config.output.format
    if fmt == "json":
        schema = config.output.json_schema
        return "The answer is a JSON value" + (f" matching this JSON Schema: {json.dumps(schema)}" if schema else "")
    return {"sql": "The answer is one SQL query, nothing else.",
            "python": "The answer is Python source code, nothing else.",
            "text": "The answer is plain text."}[fmt]


def _input_system(config, reply: str) -> str:
    examples = "\n".join(f"- {input_text(seed.input)}" for seed in shots(config))
    return (f"You write realistic, varied inputs for an assistant that does one task.\n{_task_block(config)}\n"
            f"Example inputs:\n{examples}\n"
            "An input is only what the user would type: never a note, an instruction or an answer. "
            "Keep each input about as long as the examples. "
            f"Reply with JSON only: {reply}")


def _wishes(item: PlanItem) -> list[tuple[str, str]]:
    # labelled values, not a sentence: a small teacher copies a sentence's words ("at join difficulty") into
    # the input it writes
    return [(label, value) for label, value in (("Topic", item.topic), ("Asked by", item.persona),
                                                 ("Kind", item.difficulty)) if value]


def _wording_ask(item: PlanItem) -> str:
    if not item.wordings:
        return ""
    if len(item.wordings) == 1:
        return f"\nAsk for it with the words: {item.wordings[0]}"
    return "\nAsk for it with these words, one input each, in this order:" + "".join(f"\n- {w}" for w in item.wordings)


def input_messages(config, item: PlanItem, with_reference: bool) -> list[dict[str, str]]:
    reply = '{"input": ...' + (', "reference": <a correct answer to it>' if with_reference else "") + "}"
    if item.like is not None:
        user = f"Write one new input like this one: {LIKE_ASK}:\n{item.like}" + "".join(
            f"\n{label}: {value}" for label, value in _wishes(item))
    elif item.evolve_seed is not None:
        user = f"Rewrite this input so that you {item.evolution}:\n{input_text(config.seeds[item.evolve_seed].input)}"
    else:
        user = "Write one new input, different from the examples." + "".join(
            f"\n{label}: {value}" for label, value in _wishes(item)) + _wording_ask(item)
    if with_reference:
        user += f"\nAlso give a correct reference answer. {_format_note(config)}"
    return [{"role": "system", "content": _input_system(config, reply)}, {"role": "user", "content": user}]


def inputs_messages(config, item: PlanItem, count: int, with_reference: bool) -> list[dict[str, str]]:
    """One request for `count` inputs that share the item's wishes (a list item gets its list's plan)."""
    one = '{"input": ..., "reference": <a correct answer to it>}' if with_reference else "..."
    reply = '{"inputs": [' + one + ", " + one + ", ...]}"
    if item.like is not None:
        user = f"Write {count} new inputs like this one: {LIKE_ASK}, and different from each other:\n{item.like}" + \
            "".join(f"\n{label}: {value}" for label, value in _wishes(item))
    elif item.evolve_seed is not None:
        user = (f"Rewrite this input {count} different ways, each so that you {item.evolution}:\n"
                f"{input_text(config.seeds[item.evolve_seed].input)}")
    else:
        user = f"Write {count} new inputs, different from the examples and from each other." + "".join(
            f"\n{label}: {value}" for label, value in _wishes(item)) + _wording_ask(item)
        if config.data.distinct_openings and not item.wordings and not inputs_are_objects(config):
            user += f"\n{OPENINGS_ASK.format(count=count)}"
    if with_reference:
        user += f"\nGive each a correct reference answer. {_format_note(config)}"
    return [{"role": "system", "content": _input_system(config, reply)}, {"role": "user", "content": user}]


def answer_messages(config, item: PlanItem, task_input: str | dict[str, Any]) -> list[dict[str, str]]:
    """System prompt, the seeds as worked examples, then the new input."""
    reasoning = config.data.reasoning
    reply = ('Think step by step in "reasoning", then give the final answer in "answer". '
             'Reply with JSON only: {"reasoning": "...", "answer": ...}') if reasoning else \
        'Reply with JSON only: {"answer": ...}'
    system = f"{config.task.effective_system_prompt}\n{_task_block(config)}\n{_format_note(config)}\n{reply}"
    messages = [{"role": "system", "content": system}]
    for seed in shots(config):
        shot = {"reasoning": seed.reasoning or "", "answer": seed.output} if reasoning else {"answer": seed.output}
        messages.append({"role": "user", "content": input_text(seed.input)})
        messages.append({"role": "assistant", "content": json.dumps(shot, ensure_ascii=False)})
    messages.append({"role": "user", "content": input_text(task_input)})
    return messages


def wordings_messages(config, topic: str | None, count: int) -> list[dict[str, str]]:
    """Ask for `count` words or short phrases users ask for one topic's action with (or the task's): the
    attributes the plan then writes inputs with, so the inputs vary in their wording, not only in their details.
    Words, not whole sentence patterns: asked for varied patterns, a 1.5B teacher drifts off the task (questions
    about the user's favourite song) or repeats one pattern with more placeholders."""
    examples = "\n".join(f"- {input_text(seed.input)}" for seed in shots(config))
    system = ("You study how people word what they ask an assistant that does one task.\n"
              f"{_task_block(config)}\nExample inputs:\n{examples}\n"
              'Reply with JSON only: {"wordings": ["...", "...", ...]}')
    about = f"about: {topic}" if topic else "for this task"
    user = (f"List {count} different words or short phrases (1 to 4 words) a user might type to ask {about}: "
            "the verb or phrase for the action itself, such as synonyms, slang and casual forms; no two alike, "
            "no details.")
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def wordings_schema(count: int) -> dict[str, Any]:
    return {"type": "object", "properties": {"wordings": {"type": "array", "items": {"type": "string", "minLength": 2},
                                                          "minItems": count, "maxItems": count}},
            "required": ["wordings"]}


def parse_wordings(text: str) -> list[str]:
    """The distinct wordings of a reply (case and spacing aside), in the teacher's order."""
    items = _json_object(text).get("wordings")
    if not isinstance(items, list):
        raise ParseError("reply has no 'wordings' list")
    seen: dict[str, str] = {}
    for item in items:
        if isinstance(item, str) and (wording := " ".join(item.split())):
            seen.setdefault(wording.casefold(), wording)
    if not seen:
        raise ParseError("the 'wordings' list is empty")
    return list(seen.values())


# -- parsing -------------------------------------------------------------------------------------
def _json_object(text: str) -> dict[str, Any]:
    text = text.strip()
    if text.startswith("```"):
        text = text.strip("`").removeprefix("json").strip()
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise ParseError(f"reply is not JSON ({err.msg} at char {err.pos}{', truncated?' if err.pos >= len(text) - 1 else ''})") from None
    if not isinstance(value, dict):
        raise ParseError("reply is not a JSON object")
    return value


def parse_input(config, text: str, with_reference: bool) -> tuple[str | dict[str, Any], Any]:
    return _input_entry(config, _json_object(text), with_reference)


def _input_entry(config, value: Any, with_reference: bool) -> tuple[str | dict[str, Any], Any]:
    """(input, reference) from one decoded {"input": ..., "reference": ...} object."""
    if not isinstance(value, dict):
        raise ParseError("reply is not a JSON object")
    task_input = value.get("input")
    wanted = dict if inputs_are_objects(config) else str
    if not isinstance(task_input, wanted) or not task_input or (isinstance(task_input, str) and not task_input.strip()):
        raise ParseError(f"reply has no {'object' if wanted is dict else 'text'} 'input'")
    if isinstance(task_input, str):
        task_input = task_input.strip()
    reference = value.get("reference") if with_reference else None
    if with_reference and reference is None:
        raise ParseError("reply has no 'reference'")
    return task_input, reference


def parse_inputs(config, text: str, count: int, with_reference: bool) -> list[tuple[Any, Any] | ParseError]:
    """Each of the `count` inputs a list reply should hold: (input, reference), or why it is missing."""
    value = _json_object(text)
    items = value.get("inputs")
    if not isinstance(items, list):
        raise ParseError("reply has no 'inputs' list")
    out: list[tuple[Any, Any] | ParseError] = []
    for position in range(count):
        if position >= len(items):
            out.append(ParseError(f"the list holds {len(items)} inputs, not {count}"))
            continue
        item = items[position] if with_reference else {"input": items[position]}
        try:
            out.append(_input_entry(config, item, with_reference))
        except ParseError as err:
            out.append(err)
    return out


def parse_answer(config, text: str) -> Answer:
    value = _json_object(text)
    if "answer" not in value:
        raise ParseError("reply has no 'answer'")
    reasoning = value.get("reasoning") if isinstance(value.get("reasoning"), str) else ""
    return answer_from_value(config, value["answer"], reasoning)


def answer_from_value(config, answer: Any, reasoning: str = "") -> Answer:
    """An answer (the teacher's or a seed's) with the string form the dataset stores: compact JSON, or the
    stripped text."""
    if config.output.format == "json":
        if isinstance(answer, str):  # some models quote the JSON
            try:
                answer = json.loads(answer)
            except json.JSONDecodeError:
                raise ParseError("the answer is not JSON") from None
        output = json.dumps(answer, ensure_ascii=False, separators=(",", ":"))
    else:
        if not isinstance(answer, str) or not answer.strip():
            raise ParseError("the answer is not text")
        answer = output = answer.strip()
    return Answer(answer, output, reasoning.strip())


def vote_key(config, answer: Answer) -> str:
    """The normalized answer self-consistency votes on."""
    if config.output.format == "json":
        return json.dumps(answer.value, sort_keys=True, separators=(",", ":"))
    text = " ".join(answer.output.split())
    return text.rstrip(";").casefold() if config.output.format == "sql" else text
