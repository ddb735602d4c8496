"""`confident`: a label is kept only where the teacher was sure of every token of its answer.

A teacher asked about a request it cannot place still writes an answer, and a wrong one reads like a right one:
"disable alerts" -> toggle_setting airplane_mode off, "mute notifications" -> flashlight off. The student then
learns those as the answer for anything it cannot place. What gives such a label away is how the teacher wrote
it: at the token that picks the tool or the setting it was torn between several. A local llama_cpp teacher
reports, for each token it writes under the JSON schema, the probability it gave that token (temperature 1,
among the tokens the grammar allowed, kit.distill.teachers); an OpenAI-compatible endpoint is asked for its
`logprobs`, the model's probabilities before the grammar, which are never higher, so the check is stricter there.
A sample whose answer holds a token below `min_p` is cut, and the reason names the token. The check costs no
teacher token. Answers of a teacher that reports no probabilities (a transformers model, an endpoint that refuses
or ignores `logprobs`) pass, and `stats.json` notes it once. Meant for answers
that are choices (a tool, its arguments, copied spans, labels, numbers); free text has unsure tokens everywhere.
"""

from __future__ import annotations

import re

from kit.distill.critic.base import Candidate, CriticContext, Verifier

_ANSWER_KEY = re.compile(r'"answer"\s*:')


def answer_confidence(token_probs: tuple[tuple[str, float], ...] | None) -> tuple[float, str] | None:
    """The least probability among the tokens of a reply's answer value (what follows its `"answer":` key; the
    whole reply when there is none), and that token's text; None without probabilities or tokens."""
    if not token_probs:
        return None
    text, starts = "", []
    for piece, _ in token_probs:
        starts.append(len(text))
        text += piece
    match = _ANSWER_KEY.search(text)
    begin = match.end() if match else 0
    tail = [(p, piece) for (piece, p), start in zip(token_probs, starts) if start + len(piece) > begin and piece.strip()]
    if not tail:
        return None
    p, piece = min(tail)
    return p, piece


class ConfidentCheck(Verifier):
    type = "confident"

    def __init__(self, config, context: CriticContext):
        super().__init__(config, context)
        self._noted = False

    async def check(self, candidate: Candidate) -> str | None:
        answer = candidate.answer
        if answer.least_p is None:  # a label the vote composed has no tokens of its own: the vote checked it
            if not self._noted and candidate.votes <= 1:
                self.notes.append("the teacher reports no token probabilities, so every answer passes "
                                  "(a local llama_cpp teacher reports them, and endpoints that return `logprobs`)")
                self._noted = True
            return None
        if answer.least_p < self.config.min_p:
            token = f" at {answer.least_token.strip()!r}" if answer.least_token else ""
            return f"the teacher was unsure of its answer: p {answer.least_p:.2f}{token} (min_p {self.config.min_p})"
        return None
