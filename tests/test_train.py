"""The training stage on the tiny random Llama (data, loss masking, figures, resume, distillation, accelerate),
and on the model-store student end to end through `kit train`."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kit.core.errors import UserError
from kit.core.run_dir import RunDir
from trainers.checkpoints import last_complete_checkpoint
from trainers.config import DistillSettings, TrainConfig

ROOT = Path(__file__).resolve().parents[1]
SYSTEM = "Map the request to a JSON tool call."
CITIES = ["paris", "london", "tokyo", "rome", "berlin", "madrid", "oslo", "cairo"]
CONTACTS = ["mom", "dad", "alice", "bob", "sam", "max"]


def tool_call_rows(count: int, seed: int = 0) -> list[dict]:
    """A learnable task in the distill stage's row format: a short request -> a JSON tool call."""
    rng = random.Random(seed)
    rows = []
    for i in range(count):
        kind = rng.randrange(3)
        if kind == 0:
            minutes = rng.randint(1, 60)
            request, answer = f"set a timer for {minutes} minutes", {"tool": "timer", "minutes": minutes}
        elif kind == 1:
            city, day = rng.choice(CITIES), rng.choice(["today", "tomorrow"])
            request, answer = f"weather in {city} {day}", {"tool": "weather", "city": city, "day": day}
        else:
            contact = rng.choice(CONTACTS)
            request, answer = f"call {contact}", {"tool": "call", "contact": contact}
        output = json.dumps(answer)
        rows.append({"id": f"row-{i}", "input": request, "output": output, "reasoning": "",
                     "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": request},
                                  {"role": "assistant", "content": output}]})
    return rows


def write_dataset(run_dir: RunDir, count: int = 300, validation: int = 40) -> RunDir:
    rows = tool_call_rows(count)
    return save_splits(run_dir, rows[validation:], rows[:validation])


def save_splits(run_dir: RunDir, train: list[dict], validation: list[dict]) -> RunDir:
    from datasets import Dataset, DatasetDict

    DatasetDict(train=Dataset.from_list(train), validation=Dataset.from_list(validation)).save_to_disk(str(run_dir.dataset))
    return run_dir


def answered_with(row: dict, answer: str) -> dict:
    """The same request with another answer."""
    return {**row, "output": answer, "messages": [*row["messages"][:-1], {"role": "assistant", "content": answer}]}


def write_recipe(path: Path, student: str, train: dict) -> Path:
    import yaml

    recipe = {"task": {"name": "tool-calls", "description": "Map a request to a JSON tool call."},
              "seeds": [{"input": "call mom", "output": {"tool": "call", "contact": "mom"}}],
              "student": {"model": student}, "train": train}
    path.write_text(yaml.safe_dump(recipe))
    return path


def kit_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "kit", *args]


def kill_after_first_checkpoint(command: list[str], checkpoints: Path) -> None:
    """Start `kit train`, and kill -9 it as soon as its first checkpoint is complete."""
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while last_complete_checkpoint(checkpoints) is None and process.poll() is None:
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "training ended before it could be killed"


def fast_config(**overrides) -> TrainConfig:
    # one thread: the tiny model's ops are too small to split, and the test machine is shared
    values = dict(threads=1, max_steps=24, batch_size=8, learning_rate=3e-3, checkpoint_every=8, max_seq_len=128,
                  lora={"r": 8, "alpha": 16, "dropout": 0.0})
    return TrainConfig.model_validate(values | overrides)


@pytest.fixture(scope="module")
def dataset_run(tmp_path_factory) -> RunDir:
    return write_dataset(RunDir(tmp_path_factory.mktemp("train-data")))


def fresh_run(dataset_run: RunDir, tmp_path: Path) -> RunDir:
    run = RunDir(tmp_path / "run")
    shutil.copytree(dataset_run.dataset, run.dataset)
    return run


@pytest.fixture(scope="module")
def tiny_teacher(tiny_llama, tmp_path_factory) -> Path:
    """A larger random Llama that shares the tiny student's tokenizer."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    torch.manual_seed(1)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=96, intermediate_size=192, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)
    out = tmp_path_factory.mktemp("tiny-teacher")
    LlamaForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


# -- data ----------------------------------------------------------------------------------------------------
def test_loss_covers_the_assistant_answer_and_its_end_of_turn_only(tiny_llama):
    from trainers.data import tokenize_conversation
    from trainers.model import load_tokenizer

    tokenizer = load_tokenizer(str(tiny_llama))
    row = tool_call_rows(1)[0]
    encoded = tokenize_conversation(tokenizer, row["messages"], max_len=512)
    trained = [t for t, label in zip(encoded["input_ids"], encoded["labels"]) if label != -100]
    assert tokenizer.decode(trained) == row["output"] + "<|im_end|>\n"
    prompt = [t for t, label in zip(encoded["input_ids"], encoded["labels"]) if label == -100]
    assert tokenizer.decode(prompt).endswith("<|im_start|>assistant\n")


def test_the_student_prompt_replaces_or_drops_the_datasets_system_message(tiny_llama):
    from datasets import Dataset, DatasetDict

    from trainers.data import tokenized_splits
    from trainers.model import load_tokenizer

    tokenizer = load_tokenizer(str(tiny_llama))
    rows = Dataset.from_list(tool_call_rows(2))
    data = DatasetDict({"train": rows, "validation": rows})
    system = rows[0]["messages"][0]["content"]
    kept = tokenizer.decode(tokenized_splits(tokenizer, data, 512)["train"][0]["input_ids"])
    short = tokenizer.decode(tokenized_splits(tokenizer, data, 512, "Route it.")["train"][0]["input_ids"])
    bare = tokenizer.decode(tokenized_splits(tokenizer, data, 512, None)["train"][0]["input_ids"])
    assert system in kept and system not in short and "Route it." in short
    assert system not in bare and "Route it." not in bare and rows[0]["output"] in bare


def test_rationales_train_the_teachers_reasoning_as_a_second_task_on_the_training_split_only(tiny_llama):
    from datasets import Dataset, DatasetDict

    from trainers.data import RATIONALE_ASK, tokenized_splits
    from trainers.model import load_tokenizer

    tokenizer = load_tokenizer(str(tiny_llama))
    rows = tool_call_rows(3)
    rows[0]["reasoning"] = "A countdown is a timer; the request gives the minutes."
    data = DatasetDict({"train": Dataset.from_list(rows), "validation": Dataset.from_list(rows)})
    plain = tokenized_splits(tokenizer, data, 512, None)
    split = tokenized_splits(tokenizer, data, 512, None, rationales=True)
    assert len(split["train"]) == 4 and len(split["validation"]) == len(plain["validation"]) == 3
    assert split["train"][:3] == plain["train"][:3]  # the answer task's rows are untouched
    explained = split["train"][3]
    trained = tokenizer.decode([t for t in explained["labels"] if t != -100])
    prompt = tokenizer.decode([t for t, label in zip(explained["input_ids"], explained["labels"]) if label == -100])
    assert rows[0]["reasoning"] in trained and rows[0]["output"] not in trained
    assert rows[0]["input"] in prompt and RATIONALE_ASK in prompt
    # asked for without any reasoning in the data: one message naming the fix
    bare = DatasetDict({"train": Dataset.from_list(tool_call_rows(2)), "validation": Dataset.from_list(tool_call_rows(2))})
    with pytest.raises(UserError, match="data.reasoning: true"):
        tokenized_splits(tokenizer, bare, 512, None, rationales=True)


def test_missing_dataset_names_the_generate_command(tmp_path, tiny_llama):
    from trainers.sft import train

    with pytest.raises(UserError, match="kit generate"):
        train(fast_config(), str(tiny_llama), RunDir(tmp_path / "empty"))


def test_qlora_without_cuda_or_bitsandbytes_is_refused(dataset_run, tmp_path, tiny_llama):
    from trainers.sft import train

    with pytest.raises(UserError, match="qlora"):
        train(fast_config(method="qlora"), str(tiny_llama), fresh_run(dataset_run, tmp_path))


def test_padding_free_batches_give_the_same_loss_as_padded_ones(dataset_run, tiny_llama, tmp_path):
    """Packed rows keep examples apart (position ids -> block-diagonal attention), so the loss is unchanged."""
    import torch
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from kit.core.dataset import load_dataset_dict
    from kit.models.base_model import resolve_base
    from trainers.sft import TrainPaths, build_trainer

    trainer, _ = build_trainer(fast_config(), resolve_base(str(tiny_llama)), None, load_dataset_dict(dataset_run.dataset),
                               TrainPaths(tmp_path), "cpu", show_progress=False)
    examples = [trainer.train_dataset[i] for i in range(6)]
    pad_id = trainer.processing_class.pad_token_id
    padded = DataCollatorForLanguageModeling(pad_token_id=pad_id)(examples)
    flat = DataCollatorForLanguageModeling(pad_token_id=pad_id, padding_free=True)(examples)
    assert flat["input_ids"].shape[0] == 1 and "attention_mask" not in flat
    trainer.model.eval()
    with torch.no_grad():
        loss_padded = trainer.compute_loss(trainer.model, padded)
        loss_flat = trainer.compute_loss(trainer.model, flat)
    assert loss_flat.item() == pytest.approx(loss_padded.item(), rel=1e-4)


def test_a_prompt_shared_by_the_batch_runs_once_with_the_same_loss_and_gradients(dataset_run, tiny_llama, tmp_path):
    """The shared system prompt is sent once (prefix_ids [1, P]) and the loss and LoRA gradients equal padded rows'."""
    import torch
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from kit.core.dataset import load_dataset_dict
    from kit.models.base_model import resolve_base
    from trainers.batching import PREFIX_IDS, shared_prefix_length
    from trainers.sft import TrainPaths, build_trainer

    trainer, _ = build_trainer(fast_config(), resolve_base(str(tiny_llama)), None, load_dataset_dict(dataset_run.dataset),
                               TrainPaths(tmp_path), "cpu", show_progress=False)
    examples = [trainer.train_dataset[i] for i in range(6)]
    shared = trainer.data_collator(examples)
    prefix = shared[PREFIX_IDS].shape[1]
    first_trained = min(next(i for i, lab in enumerate(e["labels"]) if lab != -100) for e in examples)
    assert 16 <= prefix < first_trained  # the system prompt and template head, never an answer token
    assert shared["input_ids"].shape[0] == 6 and shared["attention_mask"].shape[1] == prefix + shared["input_ids"].shape[1]
    assert shared["attention_mask"].sum() == sum(len(e["input_ids"]) for e in examples)  # tokens/s counts real tokens
    padded = DataCollatorForLanguageModeling(pad_token_id=trainer.processing_class.pad_token_id)(examples)
    trainer.model.train()  # LoRA dropout is 0 in fast_config, so train mode is deterministic

    def loss_and_grads(batch):
        trainer.model.zero_grad()
        loss = trainer.compute_loss(trainer.model, batch)
        loss.backward()
        return loss.item(), {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.requires_grad}

    loss_shared, grads_shared = loss_and_grads(shared)
    loss_padded, grads_padded = loss_and_grads(padded)
    assert loss_shared == pytest.approx(loss_padded, rel=1e-4)
    for name, grad in grads_padded.items():
        assert torch.allclose(grads_shared[name], grad, rtol=1e-3, atol=1e-6), name
    # rows that share nothing fall back to trl's padding-free batches
    assert shared_prefix_length([[1, 2, 3], [4, 5, 6]], [[-100, -100, 3], [-100, -100, 6]]) == 0
    assert shared_prefix_length([[1, 2, 3, 4], [1, 2, 5, 6]], [[-100, -100, -100, 4], [-100, -100, -100, 6]]) == 2
    assert shared_prefix_length([[1, 2, 3, 4], [1, 2, 3, 5]], [[-100, -100, 3, 4], [-100, -100, -100, 5]]) == 1


def test_kd_loss_is_zero_only_when_the_student_matches_the_teacher():
    import torch

    from trainers.trainer import kd_loss_sum

    torch.manual_seed(0)
    logits = torch.randn(5, 50)
    top = (logits / 2.0).log_softmax(-1).topk(50, dim=-1)
    assert kd_loss_sum(logits, top.indices, top.values, 2.0).item() == pytest.approx(0.0, abs=1e-5)
    assert kd_loss_sum(torch.randn(5, 50), top.indices, top.values, 2.0).item() > 0.01
    # a student matching the whole teacher distribution still misses the teacher's renormalized top-k one:
    # KL = -log(top-k mass) per position, times T^2
    few = (logits / 2.0).log_softmax(-1).topk(8, dim=-1)
    missing = -few.values.exp().sum(-1).log().sum().item() * 2.0 ** 2
    assert missing > 0.1 and kd_loss_sum(logits, few.indices, few.values, 2.0).item() == pytest.approx(missing, rel=1e-4)


# -- the stage -----------------------------------------------------------------------------------------------
def test_training_lowers_validation_loss_and_writes_figures(dataset_run, tiny_llama, tmp_path):
    from kit.core.stage import read_stage_manifest
    from trainers.sft import train

    run = fresh_run(dataset_run, tmp_path)
    manifest = train(fast_config(), str(tiny_llama), run, show_progress=False)
    metrics = json.loads((run.train / "metrics.json").read_text())
    assert metrics["validation_loss_after"] < metrics["validation_loss_before"]
    assert metrics["global_step"] == 24 and metrics["train_tokens_per_s"] > 0 and metrics["peak_rss_mb"] > 0
    assert (run.train / "loss.png").stat().st_size > 1000
    assert (run.adapter / "adapter_model.safetensors").is_file()
    base = json.loads((run.adapter / "base_model.json").read_text())
    assert base["path"] == str(tiny_llama) and len(base["sha256"]) == 64
    assert read_stage_manifest(run.train).key == manifest.key
    assert manifest.figures["validation_loss_after"] == metrics["validation_loss_after"]
    # the same command again finds the stage up to date and does not train
    stamp = (run.adapter / "adapter_model.safetensors").stat().st_mtime_ns
    assert train(fast_config(), str(tiny_llama), run, show_progress=False).key == manifest.key
    assert (run.adapter / "adapter_model.safetensors").stat().st_mtime_ns == stamp


def test_bf16_training_keeps_the_adapter_in_fp32_over_a_bf16_base(dataset_run, tiny_llama, tmp_path):
    """precision bf16 on CPU: the frozen base is held in bf16, the LoRA weights train (and are saved) in fp32."""
    from safetensors.torch import load_file
    import torch

    from kit.core.dataset import load_dataset_dict
    from kit.models.base_model import resolve_base
    from trainers.sft import TrainPaths, build_trainer, train

    trainer, _ = build_trainer(fast_config(precision="bf16"), resolve_base(str(tiny_llama)), None,
                               load_dataset_dict(dataset_run.dataset), TrainPaths(tmp_path / "t"), "cpu",
                               show_progress=False)
    dtypes = {n: p.dtype for n, p in trainer.model.named_parameters()}
    assert {d for n, d in dtypes.items() if "lora_" in n} == {torch.float32}
    assert {d for n, d in dtypes.items() if "lora_" not in n} == {torch.bfloat16}
    assert trainer.args.bf16
    run = fresh_run(dataset_run, tmp_path)
    train(fast_config(precision="bf16"), str(tiny_llama), run, show_progress=False)
    metrics = json.loads((run.train / "metrics.json").read_text())
    assert metrics["precision"] == "bf16" and metrics["validation_loss_after"] < metrics["validation_loss_before"]
    assert {t.dtype for t in load_file(run.adapter / "adapter_model.safetensors").values()} == {torch.float32}


def test_precision_auto_is_bf16_on_cuda_and_fp32_on_cpu():
    from trainers.model import resolve_precision

    assert resolve_precision(fast_config(), "cuda") == "bf16" and resolve_precision(fast_config(), "cpu") == "fp32"
    assert resolve_precision(fast_config(precision="bf16"), "cpu") == "bf16"
    assert resolve_precision(fast_config(precision="fp32"), "cuda") == "fp32"


def test_full_fine_tuning_trains_every_weight_and_merges_as_the_trained_model(dataset_run, tiny_llama, tmp_path):
    """train.method: full saves the whole model; export's merge takes it as it is, with the base's tokenizer;
    a later round starts from it."""
    import torch
    from safetensors.torch import load_file

    from export.merge import adapter_base, merge_adapter
    from kit.models.base_model import is_full_model, resolve_base
    from trainers.config import TrainStageConfig
    from trainers.sft import run as run_train

    run = fresh_run(dataset_run, tmp_path)
    config = fast_config(method="full", learning_rate=1e-3, max_steps=8)
    run_train(TrainStageConfig(student=str(tiny_llama), train=config, replace_system_prompt=False), run,
              show_progress=False)
    metrics = json.loads((run.train / "metrics.json").read_text())
    assert metrics["method"] == "full" and metrics["validation_loss_after"] < metrics["validation_loss_before"]
    assert is_full_model(run.adapter) and not (run.adapter / "adapter_config.json").exists()
    assert adapter_base(run.adapter) == str(tiny_llama)
    trained = load_file(run.adapter / "model.safetensors")
    base = load_file(Path(tiny_llama) / "model.safetensors")
    changed = [name for name in base if not torch.equal(base[name], trained[name])]
    assert len(changed) > len(base) // 2  # not an adapter: the layers' own weights moved
    merged = merge_adapter(resolve_base(str(tiny_llama)), run.adapter, tmp_path / "merged")
    merged_weights = load_file(merged / "model.safetensors")
    assert all(torch.equal(merged_weights[name], trained[name]) for name in trained if name in merged_weights)
    # a second round starts from the first round's whole model
    second = fresh_run(dataset_run, tmp_path / "round-2")
    run_train(TrainStageConfig(student=str(tiny_llama), train=config, replace_system_prompt=False,
                               init_adapter=run.adapter), second, show_progress=False)
    again = json.loads((second.train / "metrics.json").read_text())
    assert again["validation_loss_before"] == pytest.approx(metrics["validation_loss_after"], rel=1e-3)


def fitted_to(rows: list[dict], base: Path, out: Path, steps: int = 60) -> Path:
    """`base` fully fine-tuned on the answers of `rows` (the train stage's own loss masking), saved to `out`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainers.data import tokenize_conversation

    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    encoded = [tokenize_conversation(tokenizer, row["messages"], max_len=128) for row in rows]
    width = max(len(e["input_ids"]) for e in encoded)
    ids = torch.tensor([e["input_ids"] + [tokenizer.pad_token_id] * (width - len(e["input_ids"])) for e in encoded])
    labels = torch.tensor([e["labels"] + [-100] * (width - len(e["labels"])) for e in encoded])
    mask = (torch.arange(width)[None] < torch.tensor([len(e["input_ids"]) for e in encoded])[:, None]).long()
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def test_early_stopping_ends_training_when_validation_stops_improving(tiny_llama, tmp_path):
    from trainers.sft import train

    # the student starts out knowing the validation answers; the train split asks the same requests (and more)
    # but answers each with letters the validation split never uses, so fitting it only makes validation
    # worse: patience 1 stops at the first epoch that does not improve
    rows = tool_call_rows(300)
    validation = rows[:40]
    run = save_splits(RunDir(tmp_path / "run"), [answered_with(row, "X" * 16) for row in rows], validation)
    student = fitted_to(validation, tiny_llama, tmp_path / "student")
    config = fast_config(max_steps=None, epochs=6, batch_size=64, early_stopping_patience=1, keep="best")
    train(config, str(student), run, show_progress=False)
    metrics = json.loads((run.train / "metrics.json").read_text())
    assert metrics["stopped_early"] and len(metrics["validation_loss_by_epoch"]) < 6
    # the adapter kept is the one with the lowest validation loss seen, not the last epoch's
    losses = [metrics["validation_loss_before"]] + [e["loss"] for e in metrics["validation_loss_by_epoch"]]
    assert metrics["validation_loss_after"] == min(losses)
    assert metrics["best_step"] < metrics["global_step"]


def test_resume_after_kill_loses_nothing(dataset_run, tiny_llama, tmp_path):
    """kill -9 after the first checkpoint; the same command resumes there and ends as an uninterrupted run does."""
    steps, every = 120, 10
    train = {"threads": 1, "max_steps": steps, "checkpoint_every": every, "batch_size": 4, "learning_rate": 3e-3, "max_seq_len": 128}
    recipe = write_recipe(tmp_path / "recipe.yaml", str(tiny_llama), train)
    killed, whole = fresh_run(dataset_run, tmp_path / "killed"), fresh_run(dataset_run, tmp_path / "whole")
    command = kit_command("train", str(recipe), "--run-dir", str(killed.root), "--no-progress")
    kill_after_first_checkpoint(command, killed.train / "checkpoints")
    assert not (killed.train / "manifest.json").exists()

    subprocess.run(command, cwd=ROOT, check=True, capture_output=True)
    subprocess.run(kit_command("train", str(recipe), "--run-dir", str(whole.root), "--no-progress"),
                   cwd=ROOT, check=True, capture_output=True)
    resumed = json.loads((killed.train / "metrics.json").read_text())
    reference = json.loads((whole.train / "metrics.json").read_text())
    assert resumed["resumed_from_step"] in range(every, steps, every)  # a checkpoint before the end
    logged = [e["step"] for e in resumed["log_history"] if "loss" in e]
    assert logged == list(range(1, steps + 1))  # every step once: no gap, no repeat
    losses = {e["step"]: e["loss"] for e in resumed["log_history"] if "loss" in e}
    expected = {e["step"]: e["loss"] for e in reference["log_history"] if "loss" in e}
    after = [s for s in expected if s > resumed["resumed_from_step"]]
    assert [losses[s] for s in after] == pytest.approx([expected[s] for s in after], rel=1e-3)
    assert resumed["validation_loss_after"] == pytest.approx(reference["validation_loss_after"], rel=1e-3)


def test_a_run_killed_after_an_epochs_last_step_resumes_to_the_uninterrupted_weights_bit_for_bit(
        dataset_run, tiny_llama, tmp_path):
    """The checkpoint of an epoch's last step is written after that epoch's validation: resumed from it, the run
    keeps that validation loss and draws the same dropout as an uninterrupted one, so it ends with the same bits."""
    from safetensors.numpy import load_file

    train = {"threads": 1, "epochs": 3, "batch_size": 4, "learning_rate": 3e-3, "max_seq_len": 128,
             "early_stopping_patience": 0, "lora": {"r": 8, "alpha": 16, "dropout": 0.1}}
    whole = fresh_run(dataset_run, tmp_path / "whole")
    recipe = write_recipe(tmp_path / "whole.yaml", str(tiny_llama), train | {"checkpoint_every": 1000})
    subprocess.run(kit_command("train", str(recipe), "--run-dir", str(whole.root), "--no-progress"),
                   cwd=ROOT, check=True, capture_output=True)
    reference = json.loads((whole.train / "metrics.json").read_text())
    per_epoch = reference["validation_loss_by_epoch"][0]["step"]

    killed = fresh_run(dataset_run, tmp_path / "killed")
    recipe = write_recipe(tmp_path / "killed.yaml", str(tiny_llama), train | {"checkpoint_every": per_epoch})
    command = kit_command("train", str(recipe), "--run-dir", str(killed.root), "--no-progress")
    kill_after_first_checkpoint(command, killed.train / "checkpoints")
    subprocess.run(command, cwd=ROOT, check=True, capture_output=True)
    resumed = json.loads((killed.train / "metrics.json").read_text())
    assert resumed["resumed_from_step"] in (per_epoch, 2 * per_epoch)  # an epoch's last step
    assert resumed["validation_loss_by_epoch"] == reference["validation_loss_by_epoch"]
    ours = load_file(killed.train / "adapter" / "adapter_model.safetensors")
    theirs = load_file(whole.train / "adapter" / "adapter_model.safetensors")
    assert ours.keys() == theirs.keys() and all((ours[k] == theirs[k]).all() for k in ours)


# -- distillation --------------------------------------------------------------------------------------------
def test_distillation_caches_teacher_topk_once_and_trains(dataset_run, tiny_llama, tiny_teacher, tmp_path):
    from trainers.sft import train

    run = fresh_run(dataset_run, tmp_path)
    config = fast_config(distill=DistillSettings(enabled=True, teacher=str(tiny_teacher), alpha=0.5, top_k=8))
    manifest = train(config, str(tiny_llama), run, show_progress=False)
    caches = list((run.train / "teacher_topk").iterdir())
    assert len(caches) == 1 and (caches[0] / "dataset_info.json").is_file()
    metrics = json.loads((run.train / "metrics.json").read_text())
    assert metrics["distill"] and metrics["validation_loss_after"] < metrics["validation_loss_before"]
    assert "teacher" in manifest.inputs
    # a new run on the same data and teacher reads the cache instead of running the teacher again
    stamp = caches[0].stat().st_mtime_ns
    shutil.rmtree(run.train / "checkpoints")
    (run.train / "manifest.json").unlink()
    train(config.model_copy(update={"max_steps": 4}), str(tiny_llama), run, show_progress=False)
    assert [p.stat().st_mtime_ns for p in (run.train / "teacher_topk").iterdir()] == [stamp]


def test_teacher_topk_in_shared_prefix_batches_equals_one_row_at_a_time(dataset_run, tiny_llama, tiny_teacher):
    """The teacher pass batches rows and runs their shared prompt once; the cached top-k is what each row alone gives."""
    import torch

    from kit.core.dataset import load_dataset_dict
    from kit.models.base_model import resolve_base
    from trainers.data import tokenized_splits
    from trainers.distill import _teacher_topk
    from trainers.model import load_teacher, load_tokenizer

    rows = tokenized_splits(load_tokenizer(str(tiny_llama)), load_dataset_dict(dataset_run.dataset), 128)["train"]
    rows = rows.select(range(11))  # a last batch shorter than the others
    settings = DistillSettings(enabled=True, teacher=str(tiny_teacher), top_k=4)
    batched = _teacher_topk(rows, resolve_base(str(tiny_teacher)), settings, "cpu", batch_size=8)
    teacher = load_teacher(str(tiny_teacher), "cpu")
    for i, (ids, labels) in enumerate(zip(rows["input_ids"], rows["labels"])):
        trained = (torch.tensor(labels[1:]) != -100).nonzero().squeeze(-1)
        with torch.no_grad():
            logits = teacher(input_ids=torch.tensor([ids])).logits[0, trained].float()
        alone = (logits / settings.temperature).log_softmax(-1).topk(4, dim=-1)
        assert batched["teacher_ids"][i] == alone.indices.tolist()
        assert torch.allclose(torch.tensor(batched["teacher_logprobs"][i]), alone.values, atol=1e-4)


def test_distillation_refuses_a_teacher_with_another_tokenizer(dataset_run, tiny_llama, tmp_path):
    from transformers import AutoTokenizer

    from trainers.sft import train

    other = tmp_path / "other-teacher"
    shutil.copytree(tiny_llama, other)
    tokenizer = AutoTokenizer.from_pretrained(other)
    tokenizer.add_tokens(["<|tool|>"])
    tokenizer.save_pretrained(other)
    config = fast_config(distill=DistillSettings(enabled=True, teacher=str(other)))
    with pytest.raises(UserError, match="tokenizer"):
        train(config, str(tiny_llama), fresh_run(dataset_run, tmp_path))


# -- beyond one process --------------------------------------------------------------------------------------
def test_accelerate_launch_trains_with_two_cpu_processes(dataset_run, tiny_llama, tmp_path):
    """Two DDP processes (gloo) on a CPU-only machine through `accelerate launch` (torchrun underneath).

    `accelerate launch --cpu --num_processes 2` starts a single process unless an MPI hostfile is configured
    (accelerate 1.15's simple launcher); `--multi_gpu` is the launcher that starts N processes, and with no GPU
    they train on the CPU over gloo.
    """
    run = fresh_run(dataset_run, tmp_path)
    recipe = write_recipe(tmp_path / "recipe.yaml", str(tiny_llama), {"threads": 1, "max_steps": 6, "batch_size": 4,
                                                                      "checkpoint_every": 3, "max_seq_len": 128})
    accelerate = Path(sys.executable).with_name("accelerate")
    command = [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "kit",
               "train", str(recipe), "--run-dir", str(run.root), "--no-progress"]
    cpu_only = os.environ | {"CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=cpu_only)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((run.train / "metrics.json").read_text())
    assert metrics["processes"] == 2 and metrics["threads_per_process"] == 1  # the recipe's train.threads
    assert metrics["global_step"] == 6 and (run.adapter / "adapter_model.safetensors").is_file()


def test_two_machines_rendezvous_over_loopback_and_train_together(dataset_run, tiny_llama, free_port, tmp_path):
    """`accelerate launch --num_machines 2` started once per machine (here twice on one, over loopback): the two
    rendezvous at the first machine's address, train as one DDP group of 2 over gloo, and the first writes the
    adapter into the run directory both see."""
    run = fresh_run(dataset_run, tmp_path)
    recipe = write_recipe(tmp_path / "recipe.yaml", str(tiny_llama), {"threads": 1, "max_steps": 6, "batch_size": 4,
                                                                      "checkpoint_every": 3, "max_seq_len": 128})
    accelerate = Path(sys.executable).with_name("accelerate")
    port = free_port()

    def machine(rank: int) -> subprocess.Popen:
        command = [str(accelerate), "launch", "--multi_gpu", "--num_machines", "2", "--machine_rank", str(rank),
                   "--num_processes", "2", "--main_process_ip", "127.0.0.1", "--main_process_port", str(port),
                   "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "kit",
                   "train", str(recipe), "--run-dir", str(run.root), "--no-progress"]
        env = os.environ | {"CUDA_VISIBLE_DEVICES": "", "GLOO_SOCKET_IFNAME": "lo"}
        return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env=env)

    machines = [machine(0), machine(1)]
    outputs = [m.communicate(timeout=600)[0] for m in machines]
    assert [m.returncode for m in machines] == [0, 0], "\n".join(o[-3000:] for o in outputs)
    metrics = json.loads((run.train / "metrics.json").read_text())
    assert metrics["processes"] == 2 and metrics["machines"] == 2 and metrics["threads_per_process"] == 1
    assert metrics["global_step"] == 6 and (run.adapter / "adapter_model.safetensors").is_file()


def test_kit_train_into_a_log_prints_progress_lines_not_redraws(dataset_run, tiny_llama, tmp_path):
    """stderr is a pipe here, as in CI or `kit build > build.log`: whole lines, and datasets' own bars stay off."""
    train = {"threads": 1, "max_steps": 24, "checkpoint_every": 50, "batch_size": 8, "learning_rate": 3e-3,
             "max_seq_len": 128}
    recipe = write_recipe(tmp_path / "recipe.yaml", str(tiny_llama), train)
    run = fresh_run(dataset_run, tmp_path)
    done = subprocess.run(kit_command("train", str(recipe), "--run-dir", str(run.root)), cwd=ROOT,
                          capture_output=True, text=True, check=True)
    log = done.stderr + done.stdout
    assert "\r" not in log
    assert any(line.startswith("train: 100%") for line in log.splitlines())
    assert "tokenizing train" not in log and "Saving the dataset" not in log
    assert len(log) < 8000  # a few lines, not a redraw per step


def test_a_bad_flag_is_a_one_line_error(tmp_path, tiny_llama):
    recipe = write_recipe(tmp_path / "recipe.yaml", str(tiny_llama), {"max_steps": 2})
    done = subprocess.run(kit_command("train", str(recipe), "--device", "tpu", "--run-dir", str(tmp_path / "run")),
                          cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 1 and "device" in done.stderr and "Traceback" not in done.stderr


# -- the model-store student (SmolLM2-135M-Instruct), end to end via `kit train` -------------------------------
STORE_STUDENT = "smollm2-135m-instruct"
STORE_STEPS, STORE_EVERY = 12, 4


def greedy_answers(model, tokenizer, rows, max_new_tokens: int = 32) -> list[str]:
    import torch

    torch.set_num_threads(1)  # as the recipe's train.threads: the test machine is shared
    end_of_turn = tokenizer.convert_tokens_to_ids("<|im_end|>")
    answers = []
    for row in rows:
        prompt = tokenizer.apply_chat_template(row["messages"][:-1], add_generation_prompt=True, return_tensors="pt",
                                               return_dict=True)
        with torch.no_grad():
            out = model.generate(**prompt, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=end_of_turn,
                                 pad_token_id=end_of_turn)
        answers.append(tokenizer.decode(out[0, prompt["input_ids"].shape[1]:], skip_special_tokens=True).strip())
    return answers


@pytest.mark.slow
def test_kit_train_on_the_store_student_learns_survives_kill_and_changes_answers(tmp_path):
    from datasets import load_from_disk
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kit.models.store import ModelStore

    base_path = ModelStore().pull_hf(STORE_STUDENT)
    run = write_dataset(RunDir(tmp_path / "run"), count=300, validation=24)
    # one thread per process: on a shared 2-core machine OpenMP's second thread mostly waits for a core
    recipe = write_recipe(tmp_path / "recipe.yaml", STORE_STUDENT, {
        "max_steps": STORE_STEPS, "checkpoint_every": STORE_EVERY, "batch_size": 8, "learning_rate": 2e-3,
        "max_seq_len": 128, "threads": 1})
    command = kit_command("train", str(recipe), "--run-dir", str(run.root), "--no-progress")
    kill_after_first_checkpoint(command, run.train / "checkpoints")
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]

    metrics = json.loads((run.train / "metrics.json").read_text())
    assert metrics["resumed_from_step"] in range(STORE_EVERY, STORE_STEPS, STORE_EVERY)
    assert metrics["global_step"] == STORE_STEPS
    assert [e["step"] for e in metrics["log_history"] if "loss" in e] == list(range(1, STORE_STEPS + 1))
    assert metrics["validation_loss_after"] < metrics["validation_loss_before"]
    assert (run.train / "loss.png").stat().st_size > 1000
    assert json.loads((run.adapter / "base_model.json").read_text())["spec"] == STORE_STUDENT

    held_out = list(load_from_disk(str(run.dataset))["validation"].select(range(6)))
    tokenizer = AutoTokenizer.from_pretrained(base_path)
    model = AutoModelForCausalLM.from_pretrained(base_path).eval()
    before = greedy_answers(model, tokenizer, held_out)
    adapted = PeftModel.from_pretrained(model, str(run.adapter)).eval()
    after = greedy_answers(adapted, tokenizer, held_out)
    changed = sum(a != b for a, b in zip(before, after))
    right_before = sum(a == r["output"] for a, r in zip(before, held_out))
    right_after = sum(a == r["output"] for a, r in zip(after, held_out))
    print(f"val loss {metrics['validation_loss_before']:.3f} -> {metrics['validation_loss_after']:.3f}; "
          f"answers changed {changed}/6; exact {right_before}/6 -> {right_after}/6")
    assert changed >= 4
    assert right_after > right_before
