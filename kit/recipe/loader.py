"""Load a recipe YAML; report every problem with its file, line, YAML path and the fix."""

from __future__ import annotations

import difflib
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from kit.core.errors import UserError
from kit.distill.config import Seed
from kit.recipe.presets import apply_preset
from kit.recipe.schema import Recipe


@dataclass(frozen=True)
class RecipeProblem:
    path: str  # YAML path, e.g. "teacher.backend" or "seeds[2].output"
    line: int | None
    message: str
    fix: str

    def render(self, source: str) -> str:
        where = f"{source}:{self.line}" if self.line else source
        return f"{where}: {self.path or '<root>'}: {self.message} -> {self.fix}"


class RecipeInvalid(UserError):
    def __init__(self, source: str, problems: list[RecipeProblem]):
        self.source = source
        self.problems = problems
        super().__init__("\n".join(p.render(source) for p in problems))


def load_recipe(path: str | Path, preset: str | None = None) -> Recipe:
    """Parse and validate a recipe, with `preset` (kit.recipe.presets) merged in first; relative paths in it
    are resolved against its folder."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"recipe not found: {path} (create one with `kit init NAME` or check the path)")
    text = path.read_text(encoding="utf-8")
    try:
        data = yaml.safe_load(text)
        root = yaml.compose(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = mark.line + 1 if mark else None
        problem = RecipeProblem("", line, f"not valid YAML ({getattr(err, 'problem', err)})", "fix the YAML syntax there")
        raise RecipeInvalid(str(path), [problem]) from None
    if not isinstance(data, dict):
        problem = RecipeProblem("", 1, "a recipe is a mapping of sections", "start with `task:` (see `kit init`)")
        raise RecipeInvalid(str(path), [problem])
    if preset:
        data = apply_preset(data, preset)
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as err:
        raise RecipeInvalid(str(path), [_problem(e, root) for e in err.errors()]) from None
    recipe = _resolve_paths(recipe, path.parent.resolve())
    problems = _semantic_problems(recipe, root)
    if problems:
        raise RecipeInvalid(str(path), problems)
    return recipe


# -- pydantic errors -> located problems ------------------------------------------------------------
def _problem(error: dict[str, Any], root: yaml.Node | None) -> RecipeProblem:
    keys, model = _yaml_keys(error["loc"])
    line = _line_of(root, keys)
    kind = error["type"]
    ctx = error.get("ctx") or {}
    dotted = _dotted(keys)
    if kind == "extra_forbidden":
        allowed = sorted(_field_names(model)) if model else []
        close = difflib.get_close_matches(str(keys[-1]), allowed, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        return RecipeProblem(dotted, line, f"unknown key '{keys[-1]}'", f"{hint}remove it or use one of: {', '.join(allowed)}")
    if kind == "missing":
        return RecipeProblem(dotted, line, "required key is missing", f"add `{keys[-1]}:` here")
    if kind == "literal_error":
        return RecipeProblem(dotted, line, error["msg"], f"use one of {ctx.get('expected', '')}")
    if kind == "union_tag_invalid":
        return RecipeProblem(dotted, line, f"unknown type {ctx.get('tag')}", f"use type: one of {ctx.get('expected_tags')}")
    if kind == "union_tag_not_found":
        return RecipeProblem(dotted, line, "a `type:` is required", f"add type: one of the known verifiers")
    if kind == "value_error":
        return RecipeProblem(dotted, line, error["msg"].removeprefix("Value error, "), "correct the value")
    return RecipeProblem(dotted, line, error["msg"], _fix_for(kind, ctx))


def _fix_for(kind: str, ctx: dict[str, Any]) -> str:
    fixes = {
        "int_parsing": "write a whole number, e.g. 8",
        "int_type": "write a whole number, e.g. 8",
        "int_from_float": "write a whole number, e.g. 8",
        "float_parsing": "write a number, e.g. 0.7",
        "float_type": "write a number, e.g. 0.7",
        "bool_parsing": "write true or false",
        "bool_type": "write true or false",
        "string_type": "write text (quote it if YAML reads it as something else)",
        "list_type": "write a list (`- item` lines)",
        "dict_type": "write a mapping (`key: value` lines)",
        "model_type": "write a mapping (`key: value` lines)",
        "string_pattern_mismatch": f"match the pattern {ctx.get('pattern')} (lowercase letters, digits, '-', '_', '.')",
        "string_too_short": f"write at least {ctx.get('min_length')} characters",
        "too_short": f"give at least {ctx.get('min_length')} item(s)",
    }
    for bound, word in (("gt", "greater than"), ("ge", "at least"), ("lt", "less than"), ("le", "at most")):
        if bound in ctx:
            return f"use a value {word} {ctx[bound]}"
    return fixes.get(kind, "correct the value")


def _yaml_keys(loc: tuple) -> tuple[list[Any], type[BaseModel] | None]:
    """Turn a pydantic location into YAML keys (dropping union tags); also the model owning the last key."""
    keys: list[Any] = []
    annotation: Any = Recipe
    owner: type[BaseModel] | None = Recipe
    for part in loc:
        model = _as_model(annotation, part)
        if isinstance(part, int):
            keys.append(part)
            annotation = _item_type(annotation)
            continue
        if model is None:
            members = _models_in(annotation)
            tagged = [m for m in members if _tag_of(m) == part]
            if tagged:  # a discriminated-union tag is not a YAML key
                annotation = tagged[0]
                continue
            keys.append(part)
            annotation = None
            continue
        owner = model
        keys.append(part)
        field = model.model_fields.get(part) or next(
            (f for f in model.model_fields.values() if f.alias == part), None)
        annotation = field.annotation if field else None
    return keys, owner


def _as_model(annotation: Any, part: Any) -> type[BaseModel] | None:
    for model in _models_in(annotation):
        if isinstance(part, str) and (part in model.model_fields or any(f.alias == part for f in model.model_fields.values())):
            return model
    models = _models_in(annotation)
    return models[0] if len(models) == 1 and isinstance(part, str) and _tag_of(models[0]) != part else None


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found: list[type[BaseModel]] = []
    for arg in typing.get_args(annotation):
        found.extend(_models_in(arg))
    return found


def _item_type(annotation: Any) -> Any:
    for arg in typing.get_args(annotation):
        if typing.get_origin(arg) is list or typing.get_args(arg):
            inner = _item_type(arg)
            if inner is not None:
                return inner
    if typing.get_origin(annotation) is list:
        return typing.get_args(annotation)[0]
    return None


def _tag_of(model: type[BaseModel]) -> str | None:
    field = model.model_fields.get("type")
    args = typing.get_args(field.annotation) if field else ()
    return args[0] if len(args) == 1 else None


def _field_names(model: type[BaseModel]) -> list[str]:
    return [f.alias or name for name, f in model.model_fields.items()]


def _dotted(keys: list[Any]) -> str:
    out = ""
    for key in keys:
        out += f"[{key}]" if isinstance(key, int) else (f".{key}" if out else str(key))
    return out


def _line_of(root: yaml.Node | None, keys: list[Any]) -> int | None:
    node, line = root, (root.start_mark.line + 1 if root else None)
    for key in keys:
        if isinstance(node, yaml.MappingNode):
            match = next(((k, v) for k, v in node.value if k.value == str(key)), None)
            if match is None:
                return line
            line, node = match[0].start_mark.line + 1, match[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            node = node.value[key]
            line = node.start_mark.line + 1
        else:
            return line
    return line


# -- checks that need the whole recipe or the file system -------------------------------------------
def _resolve_paths(recipe: Recipe, base: Path) -> Recipe:
    def fix(p: Path | None) -> Path | None:
        return p if p is None or p.is_absolute() else (base / p)

    recipe.seeds_file = fix(recipe.seeds_file)
    recipe.output.schema_file = fix(recipe.output.schema_file)
    recipe.eval.file = fix(recipe.eval.file)
    for verifier in recipe.critic.verifiers:
        for attr in ("database", "tests_file"):
            if getattr(verifier, attr, None) is not None:
                setattr(verifier, attr, fix(getattr(verifier, attr)))
    return recipe


def _semantic_problems(recipe: Recipe, root: yaml.Node | None) -> list[RecipeProblem]:
    problems: list[RecipeProblem] = []

    def add(keys: list[Any], message: str, fix: str) -> None:
        problems.append(RecipeProblem(_dotted(keys), _line_of(root, keys), message, fix))

    for keys, file in (
        (["seeds_file"], recipe.seeds_file),
        (["output", "schema_file"], recipe.output.schema_file),
        (["eval", "file"], recipe.eval.file),
    ):
        if file is not None and not file.is_file():
            add(keys, f"file not found: {file}", "fix the path (relative paths start at the recipe's folder)")
    if recipe.output.json_schema is not None and recipe.output.schema_file is not None:
        add(["output"], "both `schema` and `schema_file` are given", "keep one of them")
    if not recipe.seeds and recipe.seeds_file is None:
        add(["seeds"], "no seed examples", "add a few `seeds:` (input, output) or a `seeds_file:`")
    has_schema = recipe.output.json_schema is not None or recipe.output.schema_file is not None
    for i, verifier in enumerate(recipe.critic.verifiers):
        keys = ["critic", "verifiers", i]
        if verifier.type == "json_schema" and not has_schema:
            add(keys, "the json_schema verifier needs an output schema", "add `output.schema` (or `schema_file`)")
        if verifier.type == "grounded" and recipe.output.format != "json":
            add(keys, "the grounded verifier checks keys of a JSON answer", "use it with `output.format: json`")
        if verifier.type == "sql" and not verifier.database.is_file():
            add(keys + ["database"], f"SQLite database not found: {verifier.database}", "fix the path to the .db/.sqlite file")
        if verifier.type == "python":
            if verifier.tests is None and verifier.tests_file is None:
                add(keys, "the python verifier needs tests", "add `tests:` (code that raises on failure) or `tests_file:`")
            elif verifier.tests_file is not None and not verifier.tests_file.is_file():
                add(keys + ["tests_file"], f"file not found: {verifier.tests_file}", "fix the path")
    if recipe.teacher.backend == "openai" and recipe.teacher.base_url is None and recipe.teacher.api_key_env is None:
        add(["teacher"], "the openai backend needs an endpoint", "set `base_url:` (and `api_key_env:` if it needs a key)")
    if recipe.train.rationales and not recipe.data.reasoning:
        add(["train", "rationales"], "train.rationales trains the teacher's reasoning, which data.reasoning: false "
            "leaves out", "set `data.reasoning: true` (the teacher writes its reasoning) or `train.rationales: false`")
    distill = recipe.train.distill
    if distill.enabled and not distill.teacher and recipe.teacher.backend != "hf":
        add(["train", "distill"], "logit distillation needs a local HF teacher", "set `train.distill.teacher:` or use teacher.backend: hf")
    return problems


def load_seeds(recipe: Recipe) -> list[Seed]:
    """The recipe's inline seeds followed by those of its seeds_file (JSONL), each validated."""
    seeds = list(recipe.seeds)
    if recipe.seeds_file is None:
        return seeds
    problems: list[RecipeProblem] = []
    for number, line in enumerate(recipe.seeds_file.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            seeds.append(Seed.model_validate_json(line))
        except ValidationError as err:
            first = err.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "<line>"
            problems.append(RecipeProblem(where, number, first["msg"], "each line is {\"input\": ..., \"output\": ...}"))
    if problems:
        raise RecipeInvalid(str(recipe.seeds_file), problems)
    return seeds
