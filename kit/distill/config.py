"""Typed configuration of the distillation stage: task, output, seeds, teacher, critic and data.

The recipe nests these sections; `GenerateConfig` is what the generate stage reads.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import Field, field_validator

from kit.core.config import StrictModel

DEFAULT_TEACHER = "qwen2.5-coder-0.5b-instruct"


class TaskConfig(StrictModel):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*$", description="short slug; names the run directory")
    description: str = Field(min_length=10, description="what the expert does, in plain words")
    system_prompt: str | None = Field(None, description="defaults to the description")
    instructions: str = Field("", description="extra guidance for the teacher")

    @property
    def effective_system_prompt(self) -> str:
        return self.system_prompt or self.description


class OutputConfig(StrictModel):
    format: Literal["text", "json", "sql", "python"] = "text"
    json_schema: dict[str, Any] | None = Field(None, alias="schema", description="JSON Schema of the answer")
    schema_file: Path | None = None

    def resolved_schema(self) -> dict[str, Any] | None:
        """The answer's JSON Schema, inline or read from schema_file."""
        if self.json_schema is not None or self.schema_file is None:
            return self.json_schema
        return json.loads(self.schema_file.read_text(encoding="utf-8"))

    @field_validator("json_schema")
    @classmethod
    def _schema_is_valid(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None:
            from jsonschema import Draft202012Validator  # lazy: jsonschema is slow to import
            from jsonschema.exceptions import SchemaError

            try:
                Draft202012Validator.check_schema(value)
            except SchemaError as err:
                raise ValueError(f"not a valid JSON Schema ({err.message})") from None
        return value


class Seed(StrictModel):
    input: str | dict[str, Any]
    output: str | dict[str, Any] | list[Any]
    reasoning: str | None = None


class TeacherConfig(StrictModel):
    backend: Literal["openai", "llama_cpp", "hf"] = "llama_cpp"
    model: str = DEFAULT_TEACHER
    base_url: str | list[str] | None = Field(
        None, description="OpenAI-compatible endpoint, e.g. http://127.0.0.1:8080/v1, or a list of them (several "
                          "vLLM or llama.cpp servers serving the same model): each request goes to the least busy "
                          "endpoint, one that fails is set aside and tried again later, and the request cache stays "
                          "one cache")

    api_key_env: str | None = Field(None, description="name of the environment variable holding the key")
    temperature: float = Field(0.7, ge=0.0, le=2.0)
    answer_temperature: float | None = Field(
        None, ge=0.0, le=2.0, description="temperature for answers (default: `temperature`): inputs want variety, "
                                          "answers accuracy; keep it above 0 when answers_per_input > 1")
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    max_tokens: int = Field(768, ge=16)
    concurrency: int = Field(4, ge=1, le=256)
    timeout_s: float = Field(120.0, gt=0)
    max_retries: int = Field(5, ge=0, le=20)
    json_mode: bool = True
    response_format: Literal["auto", "json_schema", "json_object"] = Field(
        "auto", description="openai backend: how to ask for JSON-Schema output; auto tries the OpenAI form "
                            "(json_schema) and switches to {type: json_object, schema} when the endpoint wants that")
    n_ctx: int = Field(4096, ge=256, description="context length for local teachers")
    n_threads: int | None = Field(None, ge=1)

    @field_validator("base_url")
    @classmethod
    def _some_endpoint(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and not value:
            raise ValueError("the list of endpoints is empty")
        return value

    @property
    def base_urls(self) -> list[str]:
        """The endpoints, as a list (empty when none is set)."""
        if self.base_url is None:
            return []
        return [self.base_url] if isinstance(self.base_url, str) else list(self.base_url)


class JsonSchemaVerifier(StrictModel):
    type: Literal["json_schema"]


class SqlVerifier(StrictModel):
    type: Literal["sql"]
    database: Path
    timeout_s: float = Field(5.0, gt=0)
    compare: Literal["reference", "majority", "none"] = "majority"
    field: str | None = Field(None, description="for json output: the answer's key holding the query")


class PythonVerifier(StrictModel):
    type: Literal["python"]
    tests: str | None = Field(None, description="test code appended to the answer; must raise on failure")
    tests_file: Path | None = None
    timeout_s: float = Field(10.0, gt=0)
    memory_mb: int = Field(512, ge=32)
    field: str | None = Field(None, description="for json output: the answer's key holding the code")


class JudgeVerifier(StrictModel):
    type: Literal["judge"]
    rubric: str = Field(min_length=10)
    threshold: float = Field(7.0, ge=0, le=10)
    teacher: TeacherConfig | None = Field(None, description="judge model; defaults to the teacher")


class DedupVerifier(StrictModel):
    type: Literal["dedup"]
    threshold: float = Field(0.85, gt=0.0, le=1.0, description="Jaccard similarity above which a sample is a duplicate")
    num_perm: int = Field(128, ge=16, le=1024)


class DistinctOutputsVerifier(StrictModel):
    type: Literal["distinct_outputs"]
    max_per_output: int = Field(2, ge=1, description="kept samples that may share one answer (canonical JSON or "
                                                     "normalized text) for inputs alike: rewrites that keep every "
                                                     "detail are cut, different requests with one answer are kept")
    similarity: float = Field(0.3, gt=0.0, le=1.0, description="inputs are alike when they share this share of "
                                                              "their words (Jaccard over word sets)")


class GroundedVerifier(StrictModel):
    type: Literal["grounded"]
    fields: list[str] = Field(min_length=1, description="JSON keys (at any depth) whose string values must appear "
                                                         "in the input as written: names, message texts, queries")
    ignore_case: bool = False


class DecontaminateVerifier(StrictModel):
    type: Literal["decontaminate"]
    rule: Literal["similarity", "coverage"] = Field(
        "similarity", description="similarity: the words of sample and eval item, each weighted by its rarity among "
                                  "the eval items (min_similarity); coverage: the share of an eval item's word "
                                  "n-grams the sample holds (ngram, max_coverage)")
    min_similarity: float = Field(0.7, gt=0.0, le=1.0, description="similarity rule: cut a sample whose words are "
                                  "at least this much like one eval item's (rarity-weighted share of the words of "
                                  "both that they have in common; more than one shared word)")
    ngram: int = Field(4, ge=2, le=64, description="coverage rule: word n-gram length (an eval item shorter than n "
                       "counts whole)")
    max_coverage: float = Field(0.5, gt=0.0, le=1.0, description="coverage rule: cut a sample holding at least this "
                                "share of one eval item's n-grams (and more than one)")
    fields: list[Literal["input", "output"]] = Field(
        default_factory=lambda: ["input"], min_length=1,
        description="what is compared with the same field of the eval set: inputs (the default) and/or outputs. "
                    "Correct answers of a fixed-schema task (SQL, tool calls) share short phrases with any other "
                    "correct answer, so outputs are compared only when asked")


class ConfidentVerifier(StrictModel):
    type: Literal["confident"]
    min_p: float = Field(0.5, gt=0.0, lt=1.0, description="cut a sample whose answer holds a token the teacher gave "
                         "less than this probability (temperature 1, among the tokens its grammar allowed): the "
                         "teacher was torn between answers there. A local llama_cpp teacher reports these; an "
                         "OpenAI-compatible endpoint's `logprobs` (taken before its grammar) are used where it "
                         "returns them; other teachers' answers pass")


class SameKindVerifier(StrictModel):
    """Cut a sample rewritten from a seed whose answer takes another branch of the output schema's top-level
    `oneOf` / `anyOf` (another tool) than the seed's answer: the rewrite drifted off the seed's request."""

    type: Literal["same_kind"]


Verifier = Annotated[
    Union[JsonSchemaVerifier, SqlVerifier, PythonVerifier, JudgeVerifier, GroundedVerifier, DedupVerifier,
          DistinctOutputsVerifier, DecontaminateVerifier, ConfidentVerifier, SameKindVerifier],
    Field(discriminator="type"),
]


def _default_verifiers() -> list:
    return [DedupVerifier(type="dedup"), DecontaminateVerifier(type="decontaminate")]


class CriticConfig(StrictModel):
    verifiers: list[Verifier] = Field(default_factory=_default_verifiers)
    max_attempts_factor: float = Field(4.0, ge=1.0, description="give up after target_samples x this many attempts")

    @property
    def copied_fields(self) -> list[str]:
        """The JSON keys whose values are copied from the request as written (the case-sensitive `grounded`
        checks): teacher, student and runtime decode them as spans of the request (runtime.copy_fields)."""
        fields: dict[str, None] = {}
        for verifier in self.verifiers:
            if verifier.type == "grounded" and not verifier.ignore_case:
                fields.update(dict.fromkeys(verifier.fields))
        return list(fields)


class DataConfig(StrictModel):
    target_samples: int = Field(300, ge=1)
    validation_fraction: float = Field(0.1, ge=0.0, lt=0.5)
    topics: list[str] = Field(default_factory=list)
    personas: list[str] = Field(default_factory=list)
    difficulty_levels: list[str] = Field(default_factory=lambda: ["easy", "medium", "hard"])
    evolve_fraction: float = Field(0.3, ge=0.0, le=1.0, description="share of inputs made by rewriting seeds")
    evolutions: list[str] | None = Field(
        None, min_length=1, description="how a seed may be rewritten; each completes 'Rewrite this input so that you "
                                        "...' (default: generic Evol-Instruct steps: add a constraint, more specific, "
                                        "one more reasoning step, new scenario, casual)")
    inputs_per_request: int = Field(1, ge=1, le=16, description="inputs the teacher writes in one reply, for "
                                    "one topic, persona and kind, as Self-Instruct asks for a list: a list varies "
                                    "more than separate draws, and the prompt is read once per list")
    wordings: int = Field(0, ge=0, le=32, description="before writing inputs, the teacher lists this many words or "
                          "short phrases users ask for each topic's action with (synonyms, slang, casual forms: "
                          "attributes the teacher proposes itself, as in AttrPrompt), and each fresh input is written "
                          "with one of them, in turn: a teacher left alone writes most requests one way ('call Bob', "
                          "'call Sam'), and a student never shown 'ring Dr. Patel' misroutes it. 0: off; costs one "
                          "teacher request per topic (listed in stats.json)")
    distinct_openings: bool = Field(False, description="a fresh list of inputs is asked to open each input with a "
                                    "different word: a small teacher otherwise opens nearly every input of a topic as "
                                    "that topic's seed does ('text X that ...'), and the student meets no other way "
                                    "of asking (text inputs; lists of 2 or more, without `wordings`). Off by default: "
                                    "with the 1.5B teacher it did not pay (README, levers table)")
    answers_per_input: int = Field(1, ge=1, le=16, description=">1 enables self-consistency voting")
    reasoning: bool = Field(True, description="the teacher reasons step by step before each answer (kept in the "
                                              "dataset's `reasoning` column); off: about half the teacher tokens")
    rounds: int = Field(1, ge=1, le=8, description="failure-driven rounds (`kit build`): target_samples is split "
                        "across them; after each round but the last the student answers a probe pool of held-out "
                        "teacher-labelled samples, and the next round's teacher writes new inputs like the ones it "
                        "got wrong; each round trains on everything so far")
    probe_fraction: float = Field(0.25, ge=0.0, lt=0.6, description="share of each round's samples (but the last "
                                  "round's) held out as its probe pool; they join training in the next round")
    failure_share: float = Field(0.5, gt=0.0, le=1.0, description="share of a later round's inputs written like "
                                 "the previous round's failed probes; the rest follow the plain plan (topics in turn)")
    batch_size: int = Field(8, ge=1)
    train_on_seeds: bool = Field(True, description="the seeds join the training split (never validation): they "
                                                   "are the answers a person wrote and checked; seeds that overlap "
                                                   "the eval set are left out")
    value_swaps: int = Field(0, ge=0, le=16, description="JSON answers: new training rows per sample, each with "
                             "the values the answer copies word for word from the request (names, cities, texts, "
                             "levels, states) exchanged for values the same field holds in other samples, so a "
                             "small student learns to copy them instead of memorizing them; no teacher cost")
    derived_values: bool = Field(True, description="JSON answers: a number field the samples show as a request "
                                 "number times a constant factor (5 minutes -> 300 seconds) is trained as the "
                                 "arithmetic (\"5 * 60\"), a 24-hour time field as the request's own time "
                                 "(\"6pm\"); the runtime turns them back (kit.distill.derived_values) and the "
                                 "bundle carries the rules")
    seed: int = 0


class RoundConfig(StrictModel):
    """Which failure-driven round a generate stage makes: its number, the data folders of earlier rounds (their
    samples join this round's dataset and the critic's memory) and the probe failures it writes inputs like."""

    number: int = Field(1, ge=1)
    of: int = Field(1, ge=1)
    earlier: list[Path] = Field(default_factory=list)
    failures_file: Path | None = None

    @property
    def holds_out_probes(self) -> bool:
        return self.number < self.of


class GenerateConfig(StrictModel):
    """What the generate stage reads: the recipe's task, output, seeds, teacher, critic and data sections."""

    task: TaskConfig
    output: OutputConfig = OutputConfig()
    seeds: list[Seed] = Field(min_length=1)
    teacher: TeacherConfig = TeacherConfig()
    critic: CriticConfig = CriticConfig()
    data: DataConfig = DataConfig()
    eval_file: Path | None = None
    round: RoundConfig = RoundConfig()
    ray: str | None = Field(None, description="generate on a Ray cluster: its address, or 'auto' (a running local "
                                              "cluster, else a new one); the samples are those of one process")
    ray_workers: int | None = Field(None, ge=1, description="worker actors on the Ray cluster (default: its CPUs)")
