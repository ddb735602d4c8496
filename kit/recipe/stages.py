"""A recipe onto each stage's config: the one place that knows which recipe sections each stage reads."""

from __future__ import annotations

from export.config import BundleInfo, ExportStageConfig
from kit.core.run_dir import RunDir
from kit.distill.config import GenerateConfig, OutputConfig, RoundConfig
from kit.evaluate.config import EvaluateConfig, Target
from kit.evaluate.probe import FAILURES, ProbeConfig
from kit.recipe.loader import load_seeds
from kit.recipe.schema import Recipe
from trainers.config import TrainStageConfig


def round_target(total: int, number: int, rounds: int) -> int:
    """Round `number`'s share of `total` samples (the shares add up to the total)."""
    return round(total * number / rounds) - round(total * (number - 1) / rounds)


def generate_config(recipe: Recipe, run: RunDir | None = None, number: int = 1) -> GenerateConfig:
    """The task, output (schema inlined), seeds (with `seeds_file`), teacher, critic and data sections. With a run
    directory and `data.rounds` > 1: round `number`'s share of the samples, the earlier rounds' data and the
    previous round's probe failures; without one, a single pass over the whole budget."""
    output = recipe.output
    if output.schema_file is not None:
        output = OutputConfig(format=output.format, schema=output.resolved_schema())
    data, rounds = recipe.data, recipe.data.rounds if run is not None else 1
    this_round = RoundConfig()
    if rounds > 1:
        data = data.model_copy(update={"target_samples": round_target(data.target_samples, number, rounds)})
        this_round = RoundConfig(number=number, of=rounds,
                                 earlier=[run.round(k, rounds).data for k in range(1, number)],
                                 failures_file=run.round(number - 1, rounds).probe / FAILURES if number > 1 else None)
    return GenerateConfig(task=recipe.task, output=output, seeds=load_seeds(recipe), teacher=recipe.teacher,
                          critic=recipe.critic, data=data, eval_file=recipe.eval.file, round=this_round)


def train_config(recipe: Recipe, run: RunDir | None = None, number: int = 1) -> TrainStageConfig:
    """The student, the system prompt it is trained (and served) with, and the `train:` section; a round after the
    first starts from the previous round's adapter for `train.later_round_epochs`."""
    train, init_adapter = recipe.train, None
    if run is not None and number > 1:
        init_adapter = run.round(number - 1, recipe.data.rounds).adapter
        train = train.model_copy(update={"epochs": train.later_round_epochs or train.epochs})
    return TrainStageConfig(student=recipe.student.model, system_prompt=recipe.student_system_prompt,
                            train=train, init_adapter=init_adapter)


def probe_config(recipe: Recipe, run: RunDir, number: int) -> ProbeConfig:
    """Round `number`'s probe: scored as the eval stage scores, with the earlier rounds' probes for the figure."""
    rounds = recipe.data.rounds
    return ProbeConfig(evaluate=evaluate_config(recipe, include_teacher=False), number=number, of=rounds,
                       earlier=[run.round(k, rounds).probe for k in range(1, number)])


def bundle_info(recipe: Recipe, evals: dict | None = None) -> BundleInfo:
    """The bundle as the recipe describes it (the export stage adds the derived values its dataset carries)."""
    return BundleInfo(name=recipe.task.name, task=recipe.task.description,
                      system_prompt=recipe.student_system_prompt, output_format=recipe.output.format,
                      output_schema=recipe.output.resolved_schema(), eval=evals or {},
                      copy_fields=recipe.critic.copied_fields)


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
