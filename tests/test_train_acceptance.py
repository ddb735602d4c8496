"""Acceptance of the training stage on the model-store student (SmolLM2-135M-Instruct), end to end via `kit train`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest
from test_train import ROOT, kit_command, write_dataset, write_recipe

from kit.core.run_dir import RunDir
from trainers.checkpoints import last_complete_checkpoint

STUDENT = "smollm2-135m-instruct"
STEPS, EVERY = 12, 4


def greedy_answers(model, tokenizer, rows, max_new_tokens: int = 32) -> list[str]:
    import torch

    torch.set_num_threads(1)  # as in the recipe above: the test machine is shared
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

    base_path = ModelStore().pull_hf(STUDENT)
    run = write_dataset(RunDir(tmp_path / "run"), count=300, validation=24)
    # one thread per process: on a shared 2-core machine OpenMP's second thread mostly waits for a core
    recipe = write_recipe(tmp_path / "recipe.yaml", STUDENT, {
        "max_steps": STEPS, "checkpoint_every": EVERY, "batch_size": 8, "learning_rate": 2e-3, "max_seq_len": 128,
        "threads": 1})
    command = kit_command("train", str(recipe), "--run-dir", str(run.root), "--no-progress")

    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while last_complete_checkpoint(run.train / "checkpoints") is None and process.poll() is None:
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "training ended before it could be killed"
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]

    metrics = json.loads((run.train / "metrics.json").read_text())
    assert metrics["resumed_from_step"] >= EVERY and metrics["global_step"] == STEPS
    assert [e["step"] for e in metrics["log_history"] if "loss" in e] == list(range(1, STEPS + 1))
    assert metrics["validation_loss_after"] < metrics["validation_loss_before"]
    assert (run.train / "loss.png").stat().st_size > 1000
    assert json.loads((run.adapter / "base_model.json").read_text())["spec"] == STUDENT

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
