"""A recipe onto each stage's config: the one place that knows which recipe sections each stage reads."""

from __future__ import annotations

from export.config import BundleInfo, ExportStageConfig
from kit.core.run_dir import RunDir
from kit.distill.config import GenerateConfig, OutputConfig
from kit.evaluate.config import EvaluateConfig, Target
from kit.recipe.loader import load_seeds
from kit.recipe.schema import Recipe
from trainers.config import TrainStageConfig


def generate_config(recipe: Recipe) -> GenerateConfig:
    """The task, output (schema inlined), seeds (with `seeds_file`), teacher, critic and data sections."""
    output = recipe.output
    if output.schema_file is not None:
        output = OutputConfig(format=output.format, schema=output.resolved_schema())
    return GenerateConfig(task=recipe.task, output=output, seeds=load_seeds(recipe), teacher=recipe.teacher,
                          critic=recipe.critic, data=recipe.data, eval_file=recipe.eval.file)


def train_config(recipe: Recipe) -> TrainStageConfig:
    """The student, the system prompt it is trained (and served) with, and the `train:` section."""
    return TrainStageConfig(student=recipe.student.model, system_prompt=recipe.student_system_prompt,
                            train=recipe.train)


def bundle_info(recipe: Recipe, evals: dict | None = None) -> BundleInfo:
    return BundleInfo(name=recipe.task.name, task=recipe.task.description,
                      system_prompt=recipe.student_system_prompt, output_format=recipe.output.format,
                      output_schema=recipe.output.resolved_schema(), eval=evals or {})


def export_config(recipe: Recipe, run: RunDir) -> ExportStageConfig:
    """The `export:` section over the run's adapter and dataset, with the bundle described by the recipe."""
    return ExportStageConfig(export=recipe.export, bundle=bundle_info(recipe), base=recipe.student.model,
                             adapter=run.adapter, dataset=run.dataset)


def evaluate_config(recipe: Recipe, include_teacher: bool = True,
                    targets: list[Target] | None = None) -> EvaluateConfig:
    """What scoring needs: task, output, seeds (the teacher's few-shot turns), teacher, critic checks, student."""
    return EvaluateConfig(task=recipe.task, output=recipe.output, seeds=load_seeds(recipe), teacher=recipe.teacher,
                          critic=recipe.critic, student=recipe.student.model,
                          student_system_prompt=recipe.student_system_prompt, onnx_ship=list(recipe.export.onnx.ship),
                          eval=recipe.eval, include_teacher=include_teacher, targets=targets)
