"""Next-token choice for backends that hand us logits (ONNX): numpy only, and stop-string matching on text."""

from __future__ import annotations

import numpy as np

from runtime.params import GenerationParams


def next_token(logits: np.ndarray, history: list[int], params: GenerationParams, rng: np.random.Generator) -> int:
    """Greedy when temperature is 0; else repetition penalty, temperature, top-k, top-p, then a draw."""
    logits = logits.astype(np.float32, copy=True)
    if params.repeat_penalty != 1.0 and history:
        seen = np.unique(np.asarray(history, dtype=np.int64))
        values = logits[seen]
        # The CTRL / transformers rule: shrink positive logits, push negative ones further down.
        logits[seen] = np.where(values > 0, values / params.repeat_penalty, values * params.repeat_penalty)
    if params.temperature <= 0:
        return int(np.argmax(logits))
    logits /= params.temperature
    if 0 < params.top_k < logits.size:
        kth = np.partition(logits, -params.top_k)[-params.top_k]
        logits[logits < kth] = -np.inf
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    if params.top_p < 1.0:
        order = np.argsort(-probs)
        cumulative = np.cumsum(probs[order])
        keep = order[: int(np.searchsorted(cumulative, params.top_p)) + 1]
        mask = np.zeros_like(probs)
        mask[keep] = probs[keep]
        probs = mask / mask.sum()
    return int(rng.choice(probs.size, p=probs))


class StopStrings:
    """Feeds text through, holding back any tail that could still become a stop string."""

    def __init__(self, stops: tuple[str, ...] | list[str]):
        self.stops = [s for s in stops if s]
        self.pending = ""
        self.stopped = False

    def feed(self, piece: str) -> str:
        """Text safe to emit now; sets `stopped` once a stop string appears (the stop itself is dropped)."""
        text = self.pending + piece
        hits = [text.find(s) for s in self.stops if s in text]
        if hits:
            self.stopped, self.pending = True, ""
            return text[: min(hits)]
        hold = max((k for s in self.stops for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
        self.pending = text[len(text) - hold:] if hold else ""
        return text[: len(text) - hold]

    def flush(self) -> str:
        text, self.pending = self.pending, ""
        return text
