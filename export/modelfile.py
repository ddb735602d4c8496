"""An Ollama Modelfile for a GGUF: the chat template translated to Go template syntax, stops, parameters.

The Jinja template is not parsed: it is rendered with marker contents, and the role prefixes, the
message suffix, the generation prompt and any default system prompt are read off the rendering. That
covers the per-message templates (ChatML, Llama 3, Gemma, Phi, ...) small chat models use.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from kit.core.errors import UserError

_MARK = "\u2063{}\u2063"  # invisible separator around a marker index: never in a real template


@dataclass(frozen=True)
class TemplateParts:
    prefixes: dict[str, str]  # role -> text before the message content
    suffix: str  # text after every message's content
    generation_prompt: str
    default_system: str | None  # what the template inserts when no system message is given


def _render(tokenizer, roles: list[str], add_generation_prompt: bool) -> str:
    messages = [{"role": role, "content": _MARK.format(i)} for i, role in enumerate(roles)]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def template_parts(tokenizer) -> TemplateParts:
    """Read role prefixes, suffix and generation prompt off renderings of the tokenizer's chat template."""
    roles = ["system", "user", "assistant", "user"]
    text = _render(tokenizer, roles, False)
    pieces, rest = [], text
    for i in range(len(roles)):
        before, sep, rest = rest.partition(_MARK.format(i))
        if not sep:
            raise UserError("the chat template drops message contents; it cannot be translated for Ollama")
        pieces.append(before)
    suffix = rest
    prefixes = {"system": pieces[0]}
    for i, role in ((1, "user"), (2, "assistant")):
        if not pieces[i].startswith(suffix):
            raise UserError("the chat template does not end every message alike; write the Ollama TEMPLATE by hand")
        prefixes[role] = pieces[i][len(suffix):]
    if pieces[3] != suffix + prefixes["user"]:
        raise UserError("the chat template renders repeated turns differently; write the Ollama TEMPLATE by hand")
    with_prompt = _render(tokenizer, roles[:2], True)
    without = _render(tokenizer, roles[:2], False)
    generation_prompt = with_prompt[len(without):] if with_prompt.startswith(without) else ""
    user_only = _render(tokenizer, ["user"], False)
    lead = user_only.split(prefixes["user"] + _MARK.format(0))[0]
    default_system = None
    if lead and lead.startswith(prefixes["system"]) and lead.endswith(suffix):
        default_system = lead[len(prefixes["system"]): len(lead) - len(suffix)] or None
    return TemplateParts(prefixes, suffix, generation_prompt, default_system)


def _go_literal(text: str) -> str:
    if "{{" in text or '"""' in text:
        raise UserError("the chat template contains '{{' or '\"\"\"'; write the Ollama TEMPLATE by hand")
    return text


def go_template(parts: TemplateParts) -> str:
    """The Ollama (Go text/template) equivalent over .Messages, ending in the generation prompt."""
    branches = []
    for keyword, role in (("if", "system"), ("else if", "user"), ("else if", "assistant")):
        branches.append(f'{{{{ {keyword} eq .Role "{role}" }}}}{_go_literal(parts.prefixes[role])}'
                        f"{{{{ .Content }}}}{_go_literal(parts.suffix)}")
    return "{{- range .Messages }}" + "".join(branches) + "{{ end }}{{ end }}" + _go_literal(parts.generation_prompt)


def stop_strings(tokenizer, parts: TemplateParts, extra: list[str]) -> list[str]:
    """EOS, the special tokens that close or open a turn, and the recipe's stops."""
    specials = [t for t in tokenizer.all_special_tokens if t and t != tokenizer.unk_token]
    found = [t for t in specials if t in parts.suffix or t in parts.prefixes["user"]]
    return list(dict.fromkeys([*filter(None, [tokenizer.eos_token]), *found, *extra]))


def modelfile_text(gguf_name: str, tokenizer, system_prompt: str | None, generation,
                   adapter_name: str | None = None) -> str:
    """Modelfile contents: FROM the GGUF (relative to the bundle; with `adapter_name`, the base it applies to and
    an ADAPTER line), TEMPLATE, SYSTEM, PARAMETERs."""
    lines = [f"FROM ./{gguf_name}"] + ([f"ADAPTER ./{adapter_name}"] if adapter_name else [])
    stops = list(generation.stop)
    if tokenizer.chat_template is not None:
        parts = template_parts(tokenizer)
        lines.append(f'TEMPLATE """{go_template(parts)}"""')
        system_prompt = system_prompt or parts.default_system
        stops = stop_strings(tokenizer, parts, stops)
    if system_prompt:
        lines.append(f'SYSTEM """{_go_literal(system_prompt)}"""')
    params = {"temperature": generation.temperature, "top_p": generation.top_p, "top_k": generation.top_k,
              "repeat_penalty": generation.repeat_penalty, "num_predict": generation.max_tokens}
    lines += [f"PARAMETER {key} {value}" for key, value in params.items()]
    lines += [f"PARAMETER stop {json.dumps(stop, ensure_ascii=False)}" for stop in stops]
    return "\n".join(lines) + "\n"
