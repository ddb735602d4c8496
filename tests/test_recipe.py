"""Recipe validation: defaults for what a newcomer need not choose; every mistake located and explained."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from kit.core.errors import UserError
from kit.recipe.loader import RecipeInvalid, load_recipe

MINIMAL = """\
task:
  name: unit-converter
  description: Convert a quantity between metric and imperial units.
seeds:
  - input: 3 miles in km
    output: "4.83 km"
"""


def write(tmp_path: Path, text: str, name: str = "recipe.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_minimal_recipe_gets_defaults_for_everything_else(tmp_path):
    recipe = load_recipe(write(tmp_path, MINIMAL))
    assert recipe.teacher.backend == "llama_cpp" and recipe.teacher.model == "qwen2.5-coder-0.5b-instruct"
    assert recipe.student.model == "smollm2-135m-instruct"
    assert recipe.train.lora.target_modules == "all-linear"
    assert [v.type for v in recipe.critic.verifiers] == ["dedup", "decontaminate"]
    assert "Q4_K_M" in recipe.export.gguf_types
    assert recipe.task.effective_system_prompt.startswith("Convert")
    assert recipe.student_system_prompt == recipe.task.effective_system_prompt  # the student keeps the task's
    assert recipe.data.reasoning and recipe.teacher.answer_temperature is None


def test_student_system_prompt_can_be_replaced_or_dropped(tmp_path):
    short = load_recipe(write(tmp_path, MINIMAL + "student: {system_prompt: Convert.}\n"))
    bare = load_recipe(write(tmp_path, MINIMAL + "student: {system_prompt: ''}\n"))
    assert short.student_system_prompt == "Convert." and bare.student_system_prompt is None


def test_full_recipe_with_every_section_and_relative_paths(tmp_path):
    db = tmp_path / "shop.db"
    sqlite3.connect(db).execute("create table t (x int)").connection.close()
    (tmp_path / "eval.jsonl").write_text('{"input": "a", "output": "b"}\n')
    recipe = load_recipe(write(tmp_path, """\
        task: {name: shop-sql, description: Answer questions about the shop database in SQLite SQL.}
        output:
          format: json
          schema: {type: object, properties: {sql: {type: string}}, required: [sql]}
        seeds:
          - {input: "how many orders?", output: {sql: "SELECT count(*) FROM orders"}, reasoning: count rows}
        teacher: {backend: openai, base_url: "http://127.0.0.1:8080/v1", api_key_env: MY_KEY, concurrency: 8}
        critic:
          verifiers:
            - {type: json_schema}
            - {type: sql, database: shop.db, compare: majority}
            - {type: judge, rubric: "Is the SQL correct and minimal for the question?", threshold: 6}
            - {type: dedup, threshold: 0.9}
        data: {target_samples: 50, topics: [orders, customers], answers_per_input: 3}
        train: {epochs: 2, lora: {r: 8, alpha: 16}}
        export: {gguf_types: [F16, Q4_K_M], ship: [Q4_K_M], onnx: {quantize: [int8, int4]}}
        eval: {file: eval.jsonl, metrics: [execution_accuracy]}
        """))
    assert recipe.critic.verifiers[1].database == db
    assert recipe.eval.file == tmp_path / "eval.jsonl"
    assert recipe.output.json_schema["required"] == ["sql"]
    assert recipe.data.answers_per_input == 3


def test_three_mistakes_give_three_located_errors(tmp_path):
    path = write(tmp_path, MINIMAL + "teacher:\n  backend: ollama\n  temprature: 0.5\ntrain:\n  epochs: many\n")
    with pytest.raises(RecipeInvalid) as info:
        load_recipe(path)
    problems = {p.path: p for p in info.value.problems}
    assert set(problems) == {"teacher.backend", "teacher.temprature", "train.epochs"}
    assert problems["teacher.backend"].line == 8 and "openai" in problems["teacher.backend"].fix
    assert problems["teacher.temprature"].line == 9 and "did you mean 'temperature'" in problems["teacher.temprature"].fix
    assert problems["train.epochs"].line == 11 and "number" in problems["train.epochs"].fix


def test_unknown_section_is_an_error_not_ignored(tmp_path):
    with pytest.raises(RecipeInvalid) as info:
        load_recipe(write(tmp_path, MINIMAL + "trainer:\n  epochs: 3\n"))
    [problem] = info.value.problems
    assert problem.path == "trainer" and "did you mean 'train'" in problem.fix


def test_verifier_errors_point_into_the_list(tmp_path):
    with pytest.raises(RecipeInvalid) as info:
        load_recipe(write(tmp_path, MINIMAL + "critic:\n  verifiers:\n    - type: dedup\n      treshold: 2\n"
                                          "    - type: regex\n"))
    paths = {p.path: p for p in info.value.problems}
    assert "critic.verifiers[0].treshold" in paths
    assert paths["critic.verifiers[0].treshold"].line == 10
    assert any(p.startswith("critic.verifiers[1]") for p in paths)


def test_missing_files_and_inconsistent_sections_are_reported(tmp_path):
    with pytest.raises(RecipeInvalid) as info:
        load_recipe(write(tmp_path, """\
            task: {name: t, description: Some task that needs data files.}
            critic:
              verifiers:
                - {type: json_schema}
                - {type: sql, database: missing.db}
                - {type: python}
                - {type: grounded, fields: [name]}
            eval: {file: nowhere.jsonl}
            """))
    messages = " | ".join(p.message for p in info.value.problems)
    for expected in ("no seed examples", "needs an output schema", "SQLite database not found",
                     "needs tests", "file not found", "checks keys of a JSON answer"):
        assert expected in messages
    with pytest.raises(RecipeInvalid, match="gguf_types does not make"):
        load_recipe(write(tmp_path, MINIMAL + "export: {gguf_types: [F16], ship: [Q4_K_M]}\n"))
    with pytest.raises(RecipeInvalid, match="data.reasoning: false leaves out"):
        load_recipe(write(tmp_path, MINIMAL + "data: {reasoning: false}\ntrain: {rationales: true}\n"))
    assert load_recipe(write(tmp_path, MINIMAL + "train: {rationales: true}\n")).train.rationales  # reasoning: on


def test_invalid_json_schema_and_bad_yaml_are_explained(tmp_path):
    with pytest.raises(RecipeInvalid, match="not a valid JSON Schema"):
        load_recipe(write(tmp_path, MINIMAL + "output:\n  format: json\n  schema: {type: objekt}\n"))
    with pytest.raises(RecipeInvalid, match="not valid YAML"):
        load_recipe(write(tmp_path, "task: [unclosed\n"))
    with pytest.raises(UserError, match="recipe not found"):
        load_recipe(tmp_path / "absent.yaml")


def test_kit_validate_prints_each_problem_and_exits_non_zero(tmp_path):
    path = write(tmp_path, MINIMAL + "teacher:\n  backend: ollama\n  temprature: 0.5\ndata:\n  target_samples: -3\n")
    result = subprocess.run([sys.executable, "-m", "kit", "validate", str(path)], capture_output=True, text=True)
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.startswith(str(path))]
    assert len(lines) == 3, result.stderr
    assert "Traceback" not in result.stderr
    ok = subprocess.run([sys.executable, "-m", "kit", "validate", str(write(tmp_path, MINIMAL, "ok.yaml"))],
                        capture_output=True, text=True)
    assert ok.returncode == 0 and "ok" in ok.stdout


def test_seeds_file_lines_are_validated_and_located(tmp_path):
    from kit.recipe.loader import load_seeds

    (tmp_path / "seeds.jsonl").write_text('{"input": "a", "output": "b"}\n{"input": "c"}\n')
    recipe = load_recipe(write(tmp_path, MINIMAL + "seeds_file: seeds.jsonl\n"))
    with pytest.raises(RecipeInvalid) as info:
        load_seeds(recipe)
    [problem] = info.value.problems
    assert problem.line == 2 and problem.path == "output"
    (tmp_path / "seeds.jsonl").write_text('{"input": "a", "output": {"x": 1}, "reasoning": "r"}\n')
    assert [s.input for s in load_seeds(recipe)] == ["3 miles in km", "a"]


@pytest.mark.parametrize("template", ["tool-calling", "text-to-sql"])
def test_kit_init_scaffolds_a_recipe_that_validates(tmp_path, template):
    from kit.recipe.loader import load_seeds
    from kit.recipe.scaffold import scaffold

    recipe = load_recipe(scaffold("my-expert", template, tmp_path))
    assert recipe.task.name == "my-expert" and load_seeds(recipe) and recipe.eval.file.is_file()
    with pytest.raises(UserError, match="already exists"):
        scaffold("my-expert", template, tmp_path)


@pytest.mark.parametrize("example", ["tool-calling", "text-to-sql"])
def test_shipped_examples_validate(example):
    from kit.recipe.loader import load_seeds

    root = Path(__file__).resolve().parents[1] / "examples" / example
    recipe = load_recipe(root / "recipe.yaml")
    assert len(load_seeds(recipe)) >= 10
    assert sum(1 for line in recipe.eval.file.read_text().splitlines() if line.strip()) >= 100


@pytest.mark.parametrize("example", ["tool-calling", "text-to-sql"])
def test_the_stronger_student_preset_changes_the_student_and_its_run_folder_only(example):
    root = Path(__file__).resolve().parents[1] / "examples" / example
    plain, strong = load_recipe(root / "recipe.yaml"), load_recipe(root / "recipe.yaml", preset="student-0.5b")
    assert strong.task.name == f"{plain.task.name}-student-0.5b"  # its own run directory
    assert strong.student.model == "qwen2.5-coder-0.5b-instruct" and strong.student.system_prompt == plain.student.system_prompt
    assert strong.train.distill.enabled and strong.train.distill.teacher == "qwen2.5-coder-1.5b-instruct"
    assert strong.train.epochs == plain.train.epochs and strong.data == plain.data and strong.critic == plain.critic


def test_a_preset_file_merges_key_by_key_and_an_unknown_preset_names_the_choices(tmp_path):
    overlay = write(tmp_path, "train:\n  method: full\n  lora: {r: 4}\n", name="mine.yaml")
    recipe = load_recipe(write(tmp_path, MINIMAL + "train: {epochs: 7, lora: {alpha: 8}}\n"), preset=str(overlay))
    assert recipe.task.name == "unit-converter-mine"
    assert recipe.train.method == "full" and recipe.train.epochs == 7
    assert recipe.train.lora.r == 4 and recipe.train.lora.alpha == 8
    full = load_recipe(write(tmp_path, MINIMAL), preset="full-finetune")
    assert full.train.method == "full" and full.train.learning_rate < 1e-4
    with pytest.raises(UserError, match="student-0.5b"):
        load_recipe(write(tmp_path, MINIMAL), preset="no-such-preset")
