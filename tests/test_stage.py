"""The one stage contract (kit.core.stage): a stage runs unless its manifest says it is up to date for exactly
this config and these inputs, with every output it lists still there."""

from __future__ import annotations

from pathlib import Path

import pytest

from kit.core.files import fingerprint
from kit.core.run_dir import RunDir
from kit.core.stage import StageManifest, StagePlan, read_stage_manifest, run_stage, write_stage_manifest


class CountingStage:
    """A real stage in miniature: copies its input file into its folder, counting how often it worked."""

    name = "copy"

    def __init__(self, source: Path):
        self.source = source
        self.made = 0

    def folder(self, run_dir: RunDir) -> Path:
        return run_dir.root / "copy"

    def plan(self, config: dict, run_dir: RunDir) -> StagePlan:
        return StagePlan(config, {"source": fingerprint(self.source)})

    def make(self, config: dict, run_dir: RunDir, plan: StagePlan, note: str = "") -> StageManifest:
        self.made += 1
        folder = self.folder(run_dir)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "copy.txt").write_text(self.source.read_text() * config["times"])
        manifest = plan.manifest(self.name, outputs={"copy": "copy.txt"}, figures={"note": note})
        write_stage_manifest(folder, manifest)
        return manifest


@pytest.fixture
def stage(tmp_path: Path) -> CountingStage:
    source = tmp_path / "source.txt"
    source.write_text("hello ")
    return CountingStage(source)


def test_a_stage_with_the_same_config_and_inputs_is_not_run_again(stage, tmp_path):
    run = RunDir(tmp_path / "run")
    first = run_stage(stage, {"times": 2}, run)
    again = run_stage(stage, {"times": 2}, run)
    assert stage.made == 1 and again.key == first.key
    assert (stage.folder(run) / "copy.txt").read_text() == "hello hello "


def test_a_changed_config_or_input_reruns_the_stage(stage, tmp_path):
    run = RunDir(tmp_path / "run")
    run_stage(stage, {"times": 2}, run)
    run_stage(stage, {"times": 3}, run)
    assert stage.made == 2
    stage.source.write_text("bye ")
    run_stage(stage, {"times": 3}, run)
    assert stage.made == 3 and (stage.folder(run) / "copy.txt").read_text() == "bye bye bye "


def test_a_missing_output_reruns_the_stage(stage, tmp_path):
    run = RunDir(tmp_path / "run")
    run_stage(stage, {"times": 1}, run)
    (stage.folder(run) / "copy.txt").unlink()
    run_stage(stage, {"times": 1}, run)
    assert stage.made == 2 and (stage.folder(run) / "copy.txt").is_file()


def test_force_reruns_and_options_reach_the_work_but_not_the_key(stage, tmp_path):
    run = RunDir(tmp_path / "run")
    first = run_stage(stage, {"times": 1}, run, note="a")
    forced = run_stage(stage, {"times": 1}, run, force=True, note="b")
    assert stage.made == 2 and forced.key == first.key
    assert read_stage_manifest(stage.folder(run)).figures == {"note": "b"}


def test_a_killed_stage_that_wrote_no_manifest_runs_again(stage, tmp_path):
    run = RunDir(tmp_path / "run")
    stage.folder(run).mkdir(parents=True)
    (stage.folder(run) / "copy.txt").write_text("half")  # output of a run killed before its manifest
    run_stage(stage, {"times": 1}, run)
    assert stage.made == 1 and (stage.folder(run) / "copy.txt").read_text() == "hello "


def test_kit_build_is_a_loop_over_the_stages_each_with_its_own_config(tmp_path):
    """The example's two failure-driven rounds: generate, train and probe per round (the first in rounds/1/, the
    last in the run's own folders), then export and eval of the last round's student."""
    from export.config import ExportStageConfig
    from kit.distill.config import GenerateConfig
    from kit.evaluate.config import EvaluateConfig
    from kit.evaluate.probe import ProbeConfig
    from kit.pipeline import build_steps
    from kit.recipe.loader import load_recipe
    from trainers.config import TrainStageConfig

    example = load_recipe(Path(__file__).resolve().parents[1] / "examples" / "tool-calling" / "recipe.yaml")
    assert example.data.rounds == 1  # the example makes one pass
    run = RunDir(tmp_path / "run")
    one_pass = build_steps(example, run, eval_teacher=False, threads=2)
    assert [(s.stage.name, s.stage.folder(s.run or run)) for s in one_pass] == [
        ("generate", run.data), ("train", run.train), ("export", run.export), ("eval", run.eval)]
    # the example's teacher decodes in the build's process, so training gets a fresh one; an endpoint does not
    assert [s.fresh_process for s in one_pass] == [False, True, False, False]
    remote = example.model_copy(update={"teacher": example.teacher.model_copy(update={"backend": "openai"})})
    assert not any(s.fresh_process for s in build_steps(remote, run, eval_teacher=False, threads=2))
    recipe = example.model_copy(update={"data": example.data.model_copy(update={"rounds": 2}),
                                        "train": example.train.model_copy(update={"later_round_epochs": 3})})
    first = run.round(1, 2)
    steps = build_steps(recipe, run, eval_teacher=False, threads=2)
    assert [(s.stage.name, s.stage.folder(s.run or run)) for s in steps] == [
        ("generate", first.data), ("train", first.train), ("probe", first.probe),
        ("generate", run.data), ("train", run.train), ("probe", run.probe), ("export", run.export), ("eval", run.eval)]
    generate1, train1, probe1, generate, train, _, export, evaluate = (s.config for s in steps)
    assert isinstance(generate, GenerateConfig) and generate.round.earlier == [first.data]
    assert generate1.data.target_samples + generate.data.target_samples == recipe.data.target_samples
    assert generate.round.failures_file == first.probe / "failures.jsonl"
    assert isinstance(train, TrainStageConfig) and train.student == recipe.student.model
    assert train1.init_adapter is None and train.init_adapter == first.adapter
    assert train.train.epochs == recipe.train.later_round_epochs and train1.train.epochs == recipe.train.epochs
    assert train.system_prompt == recipe.student_system_prompt
    assert isinstance(probe1, ProbeConfig) and (probe1.number, probe1.of) == (1, 2)
    assert isinstance(export, ExportStageConfig) and (export.adapter, export.dataset) == (run.adapter, run.dataset)
    assert isinstance(evaluate, EvaluateConfig) and not evaluate.include_teacher
    assert steps[-1].options == {"threads": 2}
