"""The tiny fixture model is a real, usable causal LM with a real BPE tokenizer and chat template."""

from transformers import AutoModelForCausalLM, AutoTokenizer


def test_tiny_llama_tokenizes_round_trip_and_generates(tiny_llama):
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    text = "set a timer for 12 minutes"
    ids = tokenizer(text)["input_ids"]
    assert len(ids) < len(text)  # merges were learned, not just bytes
    assert tokenizer.decode(ids) == text
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                           return_tensors="pt")
    out = model.generate(prompt, max_new_tokens=5, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert out.shape[1] > prompt.shape[1]
    assert tokenizer.decode(prompt[0]).endswith("<|im_start|>assistant\n")
