"""Grammar-constrained sampling at nearly the speed of free sampling, for llama-cpp-python.

llama-cpp-python applies a grammar to every token of the vocabulary at every step, which makes
JSON-constrained decoding several times slower than free decoding. llama.cpp's own sampler
(common/sampling.cpp) does it the other way round: sample freely, check the one chosen token against
the grammar, and only when it is rejected apply the grammar to the whole vocabulary and sample again.
`Llama` here is llama-cpp-python's `Llama` with that order; output is still always grammar-valid.
"""

from __future__ import annotations

import ctypes
import math
from typing import Any


def lazy_grammar_llama_class():
    """`llama_cpp.Llama` with grammar-last sampling (imported lazily: llama_cpp is an optional extra)."""
    global _LLAMA
    if _LLAMA is None:
        import llama_cpp

        class Llama(llama_cpp.Llama):
            def _init_sampler(self, *args: Any, grammar=None, **kwargs: Any):
                chain = super()._init_sampler(*args, grammar=None, **kwargs)
                if grammar is None:
                    return chain
                return GrammarLastSampler(self._model, chain, grammar)

        _LLAMA = Llama
    return _LLAMA


_LLAMA = None
PROB_TOP_K = 16  # tokens a recorded probability is normalized over (beyond them the mass is negligible)


class GrammarLastSampler:
    """A sampler chain plus a grammar, used the way llama.cpp's common sampler uses them."""

    def __init__(self, model, chain, grammar, record_probs: bool = False):
        import llama_cpp
        import numpy as np

        self._lib = llama_cpp
        self.chain = chain  # llama-cpp-python's sampler chain, built without the grammar
        self.grammar = llama_cpp.llama_sampler_init_grammar(
            model.vocab, grammar._grammar.encode("utf-8"), grammar._root.encode("utf-8"))
        if not self.grammar:
            raise ValueError("llama.cpp could not parse the grammar")
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(model.vocab)
        self._data = (llama_cpp.llama_token_data * self.n_vocab)()
        self._view = np.ctypeslib.as_array(self._data)
        self._ids = np.arange(self.n_vocab, dtype=np.int32)
        self._array = llama_cpp.llama_token_data_array(data=self._data, size=self.n_vocab, selected=-1, sorted=False)
        self._one = llama_cpp.llama_token_data(id=0, logit=0.0, p=0.0)
        self._one_array = llama_cpp.llama_token_data_array(data=ctypes.pointer(self._one), size=1, selected=-1,
                                                           sorted=False)
        self.resampled = 0  # tokens the grammar had to correct (for tests and curiosity)
        # with `record_probs`: for each sampled token, its probability at temperature 1 among the tokens the
        # grammar allows (those of the model's top PROB_TOP_K; all of them when the grammar had to step in)
        self.token_probs: list[float] | None = [] if record_probs else None

    def _candidates(self, ctx, idx: int):
        import numpy as np

        logits = self._lib.llama_get_logits_ith(ctx.ctx, idx)
        self._view["id"] = self._ids
        self._view["logit"] = np.ctypeslib.as_array(logits, shape=(self.n_vocab,))
        self._view["p"] = 0.0
        self._array.data = ctypes.cast(self._data, type(self._array.data))
        self._array.size, self._array.selected, self._array.sorted = self.n_vocab, -1, False
        return self._array

    def _allowed(self, token: int) -> bool:
        self._one.id, self._one.logit, self._one.p = token, 1.0, 0.0
        self._one_array.size, self._one_array.selected, self._one_array.sorted = 1, -1, False
        self._lib.llama_sampler_apply(self.grammar, ctypes.byref(self._one_array))
        return not math.isinf(self._one.logit)

    def sample(self, ctx, idx: int = -1) -> int:
        lib = self._lib
        candidates = self._candidates(ctx, idx)
        top = self._top_logits() if self.token_probs is not None else None
        lib.llama_sampler_apply(self.chain.sampler, ctypes.byref(candidates))
        token = candidates.data[candidates.selected].id
        if not self._allowed(token):
            self.resampled += 1
            candidates = self._candidates(ctx, idx)
            lib.llama_sampler_apply(self.grammar, ctypes.byref(candidates))
            masked = self._view["logit"].copy() if top is not None else None  # disallowed tokens at -inf
            lib.llama_sampler_apply(self.chain.sampler, ctypes.byref(candidates))
            token = candidates.data[candidates.selected].id
            if masked is not None:
                self.token_probs.append(_softmax_at(masked, token))
        elif top is not None:
            self.token_probs.append(self._allowed_prob(token, *top))
        lib.llama_sampler_accept(self.grammar, token)
        lib.llama_sampler_accept(self.chain.sampler, token)
        return token

    def _top_logits(self):
        """The ids and logits of the PROB_TOP_K most likely tokens (read before the chain reorders them)."""
        import numpy as np

        logits = self._view["logit"]
        ids = np.argpartition(logits, -PROB_TOP_K)[-PROB_TOP_K:]
        return ids, logits[ids].astype(np.float64)

    def _allowed_prob(self, token: int, ids, logits) -> float:
        """The sampled token's softmax probability over those of `ids` the grammar allows (the token itself
        included), at temperature 1; call before the grammar accepts the token."""
        import numpy as np

        if not any(int(i) == token for i in ids):  # drawn from outside the top k: it held little mass
            return 0.0
        keep = np.array([int(i) == token or self._allowed(int(i)) for i in ids])
        return _softmax_at(logits[keep], [int(i) for i in ids[keep]].index(token))

    def close(self) -> None:
        if self.grammar:
            self._lib.llama_sampler_free(self.grammar)
            self.grammar = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


def _softmax_at(logits, index: int) -> float:
    """softmax(logits)[index], for float logits where -inf marks a token that may not be drawn."""
    import numpy as np

    logits = np.asarray(logits, dtype=np.float64)
    weights = np.exp(logits - logits.max())
    return float(weights[index] / weights.sum())
