"""Expert.load on bundles and bare GGUFs: manifest hashes, system prompt, schema-constrained run, threads."""

from __future__ import annotations

import subprocess
import sys
import threading

import jsonschema
import numpy as np
import pytest

from runtime import BundleError, Expert, GenerationParams, GenerationStats, OutputError
from runtime.bundle import resolve_bundle
from runtime.chat_template import render_chat
from runtime.expert import parse_json_output
from runtime.sampling import StopStrings, next_token

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


# -- no model needed ---------------------------------------------------------------------------
def test_stop_strings_hold_back_a_possible_stop_and_cut_at_it():
    stops = StopStrings(["</end>"])
    assert stops.feed("hello </e") == "hello "
    assert stops.feed("nd> more") == "" and stops.stopped
    passthrough = StopStrings(["</end>"])
    assert passthrough.feed("a </x") == "a </x" and passthrough.flush() == ""


def test_greedy_and_penalized_sampling_pick_the_expected_tokens():
    logits = np.array([1.0, 3.0, 2.0, -1.0], dtype=np.float32)
    rng = np.random.default_rng(0)
    assert next_token(logits, [], GenerationParams(temperature=0), rng) == 1
    assert next_token(logits, [1], GenerationParams(temperature=0, repeat_penalty=2.0), rng) == 2
    draws = {next_token(logits, [], GenerationParams(temperature=1.0, top_k=1), rng) for _ in range(20)}
    assert draws == {1}
    draws = {next_token(logits, [], GenerationParams(temperature=5.0, top_p=0.6), rng) for _ in range(50)}
    assert draws == {1, 2}  # top_p 0.6 keeps the two likeliest (p 0.34 and 0.28 at T=5), and both come up


def test_params_take_overrides_and_refuse_unknown_names():
    params = GenerationParams().updated(max_tokens=9, stop="x", temperature=None)
    assert (params.max_tokens, params.stop, params.temperature) == (9, ("x",), 0.0)
    with pytest.raises(TypeError, match="max_new_tokens"):
        GenerationParams().updated(max_new_tokens=3)


def test_chat_template_renders_like_transformers():
    text = render_chat(CHATML, [{"role": "user", "content": "hi"}])
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_json_output_is_parsed_and_checked_against_the_schema(person_schema):
    assert parse_json_output('{"name": "Ann", "age": 3}', person_schema) == {"name": "Ann", "age": 3}
    with pytest.raises(OutputError, match="schema"):
        parse_json_output('{"name": "Ann"}', person_schema)
    with pytest.raises(OutputError, match="not JSON"):
        parse_json_output("Ann is 3", person_schema)


def test_paths_that_are_not_models_are_refused_with_a_fix(tmp_path):
    with pytest.raises(BundleError, match="does not exist"):
        resolve_bundle(tmp_path / "missing")
    with pytest.raises(BundleError, match="no manifest.json"):
        resolve_bundle(tmp_path)
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(BundleError, match="not a .gguf"):
        resolve_bundle(tmp_path / "notes.txt")


def test_a_changed_bundle_file_is_refused(tmp_path, write_bundle):
    model = tmp_path / "src" / "model-Q4.gguf"
    model.parent.mkdir()
    model.write_bytes(b"GGUF" + b"\0" * 64)
    bundle = write_bundle(tmp_path / "bundle", [(model, "gguf", "Q4_1")], name="x")
    assert resolve_bundle(bundle).gguf == bundle / "model-Q4.gguf"
    model.write_bytes(b"GGUF" + b"\1" * 64)
    with pytest.raises(BundleError, match="sha256 mismatch"):
        Expert.load(bundle)


# -- the store SmolLM2 GGUF ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def expert(task_bundle):
    with Expert.load(task_bundle, n_ctx=1024) as loaded:
        yield loaded


@pytest.mark.slow
def test_task_expert_run_returns_schema_valid_json(expert, person_schema):
    answer = expert.run("Maria Lopez is 34 years old and lives in Madrid.")
    jsonschema.validate(answer, person_schema)
    assert isinstance(answer["age"], int)


@pytest.mark.slow
def test_bundle_system_prompt_and_defaults_apply(expert):
    prompt = expert.render([{"role": "user", "content": "hi"}])
    assert prompt.startswith("<|im_start|>system\nExtract the person mentioned")
    assert expert.params().max_tokens == 48 and expert.is_task_expert
    own = expert.render([{"role": "system", "content": "Be terse."}, {"role": "user", "content": "hi"}])
    assert "Extract the person" not in own


@pytest.mark.slow
def test_stream_chat_and_complete_agree_under_greedy(expert):
    messages = [{"role": "user", "content": "Name a color."}]
    pieces = list(expert.stream(messages, max_tokens=12))
    assert len(pieces) > 1 and "".join(pieces) == expert.chat(messages, max_tokens=12)
    assert expert.complete("The capital of France is", max_tokens=6).strip()


@pytest.mark.slow
def test_one_slot_reuses_the_cached_prompt_prefix_and_cache_prompt_false_reads_from_scratch(expert):
    """Like llama-server's default `cache_prompt`: the bundle's system prompt and the template head are read
    once; on one slot the answers are the ones a prompt read from its first token gets."""
    people = ["Ana is 41.", "Bob Stone is 63 and lives in Leeds.", "Lena, 17, plays chess."]
    scratch = [expert.run(text, cache_prompt=False) for text in people]
    before = expert.backend.cache_stats()
    cached = [expert.run(text) for text in people]
    after = expert.backend.cache_stats()
    assert cached == scratch
    reused = after["reused_tokens"] - before["reused_tokens"]
    prompts = after["prompt_tokens"] - before["prompt_tokens"]
    assert reused > prompts / 2, (reused, prompts)  # the system prompt is most of each prompt
    expert.run(people[0], cache_prompt=False)
    assert expert.backend.cache_stats()["reused_tokens"] == after["reused_tokens"]


@pytest.mark.slow
def test_threads_share_one_expert_safely(expert):
    messages = [{"role": "user", "content": "Tom is 40."}]
    expected = expert.chat(messages, max_tokens=10)
    answers: list[str] = []

    def ask() -> None:
        answers.append(expert.chat(messages, max_tokens=10))

    threads = [threading.Thread(target=ask) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert answers == [expected] * 4


@pytest.mark.slow
def test_closing_frees_the_model(store_gguf):
    with Expert.load(store_gguf, n_ctx=512) as expert:
        stats = GenerationStats()
        assert "".join(expert.generate("Hello", expert.params(max_tokens=2), stats)).strip()
        assert stats.finish_reason == "length"
    assert expert.backend is None
    with pytest.raises(RuntimeError, match="closed"):
        expert.complete("Hello", max_tokens=2)


@pytest.mark.slow
def test_loading_and_generating_pull_no_torch_or_transformers(task_bundle):
    code = ("import sys, runtime; e = runtime.Expert.load(sys.argv[1], n_ctx=512); "
            "print(e.run('Ann is 30.', max_tokens=24)); e.close(); "
            "heavy = [m for m in ('torch', 'transformers') if m in sys.modules]; print(heavy); sys.exit(1 if heavy else 0)")
    result = subprocess.run([sys.executable, "-c", code, str(task_bundle)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().endswith("[]")
