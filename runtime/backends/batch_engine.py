"""Continuous batching over one llama.cpp context: several requests decode together, the way llama.cpp's
own server runs `--parallel N` slots. The local teacher, the eval stage and the server share this engine.

On a CPU one decode step reads every weight once whatever the number of sequences in the batch, so N
sequences cost little more than one: the 0.5B and 1.5B teachers write about 2x the tokens per second
at 4 sequences. Prompts share their cached prefix across slots (`llama_memory_seq_cp` on a unified KV
cache): a request whose few-shot system prompt any slot has already read only reads its new tail.

One thread owns the llama.cpp context; `submit` (chat messages) and `submit_tokens` (a rendered prompt, with
streaming, stop strings and cancellation: what the server and `Expert` use) hand it a request and return a
future.
"""

from __future__ import annotations

import codecs
import concurrent.futures
import ctypes
import queue
import threading
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, NamedTuple

from runtime.backends.grammar import grammar_for
from runtime.backends.llama_sampling import GrammarLastSampler
from runtime.errors import ContextLengthError
from runtime.params import GenerationParams
from runtime.sampling import StopStrings

Messages = list[dict[str, str]]
PREFIX_WAIT_TOKENS = 64  # a request waits for a slot reading at least this many tokens of its prefix


class Reply(NamedTuple):
    """What a `submit` future gives."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    # with `record_probs` and a schema: (token text, probability at temperature 1 among the grammar's allowed
    # tokens) for each generated token
    token_probs: tuple[tuple[str, float], ...] | None = None


class BatchingUnsupported(Exception):
    """The model carries no chat template to format requests with."""


@dataclass
class _Request:
    tokens: list[int]
    sampler: Any
    max_tokens: int
    future: concurrent.futures.Future
    generated: list[int] = field(default_factory=list)
    stops: StopStrings | None = None  # streamed requests: holds back what may begin a stop string
    events: queue.Queue | None = None  # text pieces as they are decoded, then a `Finished`
    cancelled: bool = False
    text: str = ""  # handed out so far
    decoder: Any = field(default_factory=lambda: codecs.getincrementaldecoder("utf-8")(errors="ignore"))
    adapter: str | None = None  # the LoRA adapter (by name) decoded with; None: the base model alone
    cache_prompt: bool = True  # may start from a cached prefix; False: read from the first token


@dataclass(frozen=True)
class Finished:
    """The last event of a streamed request."""

    reason: str  # "stop" (end of generation or a stop string) | "length" | "cancelled"
    prompt_tokens: int
    completion_tokens: int


class StreamHandle:
    """A request submitted with `submit_tokens(..., stream=True)`: iterate it for text pieces; `finished` holds
    the `Finished` event once the iteration ends; `cancel()` frees its slot at the next decode step."""

    def __init__(self, request: _Request):
        self._request = request
        self.finished: Finished | None = None

    def __iter__(self):
        while self.finished is None:
            item = self._request.events.get()
            if isinstance(item, Finished):
                self.finished = item
            elif isinstance(item, BaseException):
                raise item
            else:
                yield item

    def cancel(self) -> None:
        self._request.cancelled = True


@dataclass
class _Slot:
    seq: int
    cached: list[int] = field(default_factory=list)  # tokens this sequence holds in the KV cache
    cached_adapter: str | None = None  # the adapter those tokens were read with (a prefix is shared only within one)
    request: _Request | None = None
    todo: list[int] = field(default_factory=list)  # tokens still to feed before the next sample


class BatchEngine:
    """`parallel` sequences of up to `n_ctx` tokens each, decoded in shared batches of `n_batch` tokens."""

    def __init__(self, model_path: str, *, parallel: int, n_ctx: int, n_threads: int, n_batch: int = 512,
                 n_gpu_layers: int = 0, require_chat_template: bool = True, reuse_prefix: bool = True):
        import llama_cpp

        self._lib = llama_cpp
        self.llama = llama_cpp.Llama(model_path=model_path, n_ctx=256, n_batch=64, n_threads=n_threads,
                                     n_gpu_layers=n_gpu_layers, verbose=False)
        template = self.llama.metadata.get("tokenizer.chat_template")
        if not template and require_chat_template:
            self.llama.close()
            raise BatchingUnsupported(model_path)
        model = self.llama._model
        eos, bos = model.token_eos(), model.token_bos()
        self.formatter = llama_cpp.llama_chat_format.Jinja2ChatFormatter(
            template=template, eos_token=model.token_get_text(eos) if eos != -1 else "",
            bos_token=model.token_get_text(bos) if bos != -1 else "") if template else None
        self.parallel = parallel
        # False: every prompt is read from its first token, so a greedy answer never depends on the requests
        # before it (a reused prefix changes the batch shapes, and with them the float rounding); a request's
        # own `cache_prompt` False does the same for that request
        self.reuse_prefix = reuse_prefix
        self.vocab = model.vocab
        self.n_ctx, self.n_batch = n_ctx, n_batch
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = n_ctx * parallel
        params.n_batch = params.n_ubatch = n_batch
        params.n_seq_max = parallel
        params.kv_unified = True  # one cache for all slots, so a shared prefix is stored once
        params.n_threads = params.n_threads_batch = n_threads
        params.no_perf = True
        self.ctx = llama_cpp.llama_init_from_model(model.model, params)
        if not self.ctx:
            self.llama.close()
            raise MemoryError(f"llama.cpp could not create a {n_ctx * parallel}-token context for {model_path}")
        self.memory = llama_cpp.llama_get_memory(self.ctx)
        self._sampling_ctx = SimpleNamespace(ctx=self.ctx)  # what the samplers read logits from
        self.batch = llama_cpp.llama_batch_init(n_batch, 0, 1)
        self.slots = [_Slot(seq) for seq in range(parallel)]
        self._queue: queue.Queue[_Request | None] = queue.Queue()
        self._pending: list[_Request] = []
        self._closed = False
        self.adapters: dict[str, Any] = {}  # name -> llama_adapter_lora pointer
        self._applied: str | None = None  # the adapter set on the context now
        self._turn = 0  # which adapter group decodes next, when slots hold requests of several
        self.reused_tokens = 0  # prompt tokens taken from a cached prefix instead of being read again
        self.prompt_tokens = 0  # prompt tokens of every request started (read or reused)
        self.generated_tokens = 0
        self.decoded_tokens = 0  # tokens run through the model (prompt tails and generated tokens)
        self.decode_calls = 0
        self._thread = threading.Thread(target=self._loop, name="teacher-batch", daemon=True)
        self._thread.start()

    # -- called from any thread --------------------------------------------------------------------------

    def submit(self, messages: Messages, schema: dict[str, Any] | None, params: dict[str, Any], *,
               record_probs: bool = False) -> concurrent.futures.Future:
        """Queue one chat request; the future gives a `Reply` (with `record_probs` and a schema, the probability
        of each generated token too)."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        try:
            if self.formatter is None:
                raise BatchingUnsupported("this model carries no chat template")
            prompt = self.formatter(messages=messages)
            tokens = self.llama.tokenize(prompt.prompt.encode("utf-8"), add_bos=not prompt.added_special, special=True)
            max_tokens = int(params.get("max_tokens") or 256)
            self._check_length(tokens, max_tokens)
            sampler = self._sampler(schema, params, record_probs)
        except Exception as err:  # noqa: BLE001 - handed to the caller
            future.set_exception(err)
            return future
        self._queue.put(_Request(tokens, sampler, max_tokens, future))
        return future

    def load_adapter(self, name: str, path: str) -> None:
        """Load a LoRA adapter GGUF (llama.cpp's convert_lora_to_gguf.py) for this engine's model; requests
        that name it decode with it, others with the base alone. Call before submitting requests for it."""
        if name in self.adapters:
            return
        pointer = self._lib.llama_adapter_lora_init(self.llama._model.model, str(path).encode())
        if not pointer:
            raise ValueError(f"llama.cpp cannot load the LoRA adapter {path} for this base model")
        self.adapters[name] = pointer

    def submit_tokens(self, tokens: list[int], params: GenerationParams, adapter: str | None = None) -> StreamHandle:
        """Queue a rendered prompt with the runtime's generation parameters (sampling, JSON schema, stop
        strings, max_tokens) and optionally a loaded LoRA adapter; iterate the handle for its text."""
        if adapter is not None and adapter not in self.adapters:
            raise ValueError(f"no LoRA adapter named {adapter!r} is loaded")
        self._check_length(tokens, 1)
        max_tokens = min(params.max_tokens, self.n_ctx - len(tokens))
        request = _Request(list(tokens), self._params_sampler(params), max_tokens, concurrent.futures.Future(),
                           stops=StopStrings(params.stop), events=queue.Queue(), adapter=adapter,
                           cache_prompt=params.cache_prompt)
        if self._closed:
            request.sampler.close()
            raise RuntimeError("the engine was closed")
        self._queue.put(request)
        return StreamHandle(request)

    def _check_length(self, tokens: list[int], max_tokens: int) -> None:
        if len(tokens) + max_tokens > self.n_ctx:
            raise ContextLengthError(f"the prompt has {len(tokens)} tokens; with max_tokens {max_tokens} it exceeds "
                                     f"the context of {self.n_ctx} tokens per sequence")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._queue.put(None)
        self._thread.join()
        lib = self._lib
        lib.llama_batch_free(self.batch)
        lib.llama_free(self.ctx)
        for pointer in self.adapters.values():
            lib.llama_adapter_lora_free(pointer)
        self.adapters.clear()
        self.llama.close()

    # -- sampling ------------------------------------------------------------------------------------------

    def _sampler(self, schema: dict[str, Any] | None, params: dict[str, Any], record_probs: bool = False):
        """llama-cpp-python's defaults (top-k 40, top-p, min-p 0.05, temperature, seeded draw); greedy at
        temperature 0; a JSON schema becomes a grammar applied grammar-last."""
        lib = self._lib
        chain = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())
        temperature = float(params.get("temperature", 0.8))
        if temperature <= 0:
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_greedy())
        else:
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_top_k(40))
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_top_p(float(params.get("top_p", 0.95)), 1))
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_min_p(0.05, 1))
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_temp(temperature))
            seed = params.get("seed")
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_dist(
                (int(seed) & 0xFFFFFFFF) if seed is not None else lib.LLAMA_DEFAULT_SEED))
        grammar = grammar_for(GenerationParams(json_schema=schema)) if schema is not None else None
        return self._with_grammar(chain, grammar, record_probs)

    def _params_sampler(self, params: GenerationParams):
        """The chain llama-cpp-python's `create_completion` builds for these parameters (penalties, then greedy
        at temperature 0, else top-k, top-p, temperature and a seeded draw), the JSON schema grammar-last."""
        lib = self._lib
        chain = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())
        if params.repeat_penalty != 1.0:
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_penalties(
                lib.llama_vocab_n_tokens(self.vocab), 64, float(params.repeat_penalty), 0.0, 0.0))
        if params.temperature <= 0:
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_greedy())
        else:
            if params.top_k > 0:
                lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_top_k(int(params.top_k)))
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_top_p(float(params.top_p), 1))
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_temp(float(params.temperature)))
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_dist(
                (int(params.seed) & 0xFFFFFFFF) if params.seed is not None else lib.LLAMA_DEFAULT_SEED))
        return self._with_grammar(chain, grammar_for(params))

    def _with_grammar(self, chain, grammar, record_probs: bool = False):
        """The chain as a sampler; with a grammar, applied the way llama.cpp's common sampler does (grammar-last)."""
        if grammar is None:
            return _ChainSampler(self._lib, chain)
        return _OwnedGrammarSampler(self._lib, chain, GrammarLastSampler(
            self.llama._model, SimpleNamespace(sampler=chain), grammar, record_probs=record_probs))

    # -- the decode thread ---------------------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            busy = any(slot.request for slot in self.slots)
            if not self._take_new(block=not busy and not self._pending):
                self._fail_all(RuntimeError("the teacher was closed"))
                return
            self._drop_cancelled()
            self._assign()
            if not any(slot.request for slot in self.slots):
                continue
            try:
                self._step()
            except Exception as err:  # noqa: BLE001 - every waiting request learns of it
                self._fail_all(err)

    def _take_new(self, block: bool) -> bool:
        try:
            item = self._queue.get(block=block)
            while True:
                if item is None:
                    return False
                self._pending.append(item)
                item = self._queue.get_nowait()
        except queue.Empty:
            return True

    def _drop_cancelled(self) -> None:
        """A cancelled request (its client left) frees its slot before the next decode step."""
        for slot in self.slots:
            if slot.request is not None and slot.request.cancelled:
                self._finish(slot, "cancelled")
        for request in [r for r in self._pending if r.cancelled]:
            self._pending.remove(request)
            request.sampler.close()
            self._settle(request, "cancelled")

    def _assign(self) -> None:
        """Free slots take waiting requests; each starts from the longest cached prefix any slot holds.

        A request whose prefix another slot is reading right now waits for that read to finish instead of
        reading the same tokens again: when generation starts, every worker sends the same few-shot prompt
        at once, and N slots would otherwise read it N times."""
        lib = self._lib
        for slot in self.slots:
            if slot.request is not None:
                continue
            found = self._next_ready(slot)
            if found is None:
                return
            request, source, shared = found
            shared = min(shared, len(request.tokens) - 1)  # feed at least one token, for its logits
            self.reused_tokens += shared
            self.prompt_tokens += len(request.tokens)
            if source is slot:
                lib.llama_memory_seq_rm(self.memory, slot.seq, shared, -1)
                slot.cached = slot.cached[:shared]
            else:
                lib.llama_memory_seq_rm(self.memory, slot.seq, -1, -1)
                lib.llama_memory_seq_cp(self.memory, source.seq, slot.seq, 0, shared)
                slot.cached = source.cached[:shared]
            slot.cached_adapter = request.adapter
            slot.request, slot.todo = request, request.tokens[shared:]

    def _next_ready(self, free: _Slot) -> tuple[_Request, _Slot, int] | None:
        """The first waiting request not held back by a read in progress, the slot holding its longest
        cached prefix (the free slot itself on a tie) and that prefix's length; a request that may not use a
        cached prefix (`cache_prompt` False, or an engine without reuse) goes to the free slot from position 0."""
        for position, request in enumerate(self._pending):
            if not (self.reuse_prefix and request.cache_prompt):
                del self._pending[position]
                return request, free, 0
            same = [s for s in self.slots if s.cached_adapter == request.adapter]
            source, shared = free, _common_prefix(free.cached, request.tokens) if free in same else 0
            for other in same:
                if (n := _common_prefix(other.cached, request.tokens)) > shared:
                    source, shared = other, n
            reading = max((_common_prefix(other.request.tokens, request.tokens) for other in self.slots
                           if other.request is not None and other.todo and not other.request.generated
                           and other.request.adapter == request.adapter), default=0)
            if reading - shared >= PREFIX_WAIT_TOKENS:
                continue
            del self._pending[position]
            return request, source, shared
        return None

    def _step(self) -> None:
        """One llama_decode: a token for every generating slot, then prompt chunks in the room left."""
        lib, batch = self._lib, self.batch
        active = sorted((s for s in self.slots if s.request), key=lambda s: len(s.todo))
        groups = sorted({s.request.adapter or "" for s in active})
        if len(groups) > 1 or (groups and (groups[0] or None) != self._applied):
            # a context decodes with one adapter set at a time: the groups take turns, step by step
            self._turn = (self._turn + 1) % len(groups)
            adapter = groups[self._turn] or None
            active = [s for s in active if s.request.adapter == adapter]
            self._apply_adapter(adapter)
        batch.n_tokens = 0
        fed: list[tuple[_Slot, int, int]] = []  # slot, tokens fed, batch index of its logits (-1: none)
        for slot in active:
            room = self.n_batch - batch.n_tokens
            if room <= 0:
                break
            chunk = slot.todo[:room]
            last = len(chunk) == len(slot.todo)
            for i, token in enumerate(chunk):
                j = batch.n_tokens
                batch.token[j] = token
                batch.pos[j] = len(slot.cached) + i
                batch.n_seq_id[j] = 1
                batch.seq_id[j][0] = slot.seq
                batch.logits[j] = 1 if (last and i == len(chunk) - 1) else 0
                batch.n_tokens += 1
            fed.append((slot, len(chunk), batch.n_tokens - 1 if last else -1))
        self.decoded_tokens += batch.n_tokens
        self.decode_calls += 1
        status = lib.llama_decode(self.ctx, batch)
        if status == 1:  # no room in the KV cache: drop idle slots' cached prefixes and try again
            self._forget_idle()
            status = lib.llama_decode(self.ctx, batch)
        if status != 0:
            raise RuntimeError(f"llama_decode failed ({status})")
        for slot, n, index in fed:
            slot.cached.extend(slot.todo[:n])
            slot.todo = slot.todo[n:]
            if index < 0:
                continue
            request = slot.request
            token = request.sampler.sample(self._sampling_ctx, index)
            if lib.llama_vocab_is_eog(self.vocab, token):
                self._finish(slot, "stop")
                continue
            request.generated.append(token)
            self.generated_tokens += 1
            if request.events is not None and self._stream(request, token):
                self._finish(slot, "stop")
            elif len(request.generated) >= request.max_tokens:
                self._finish(slot, "length")
            else:
                slot.todo = [token]

    def _apply_adapter(self, adapter: str | None) -> None:
        if adapter == self._applied:
            return
        lib = self._lib
        if adapter is None:
            lib.llama_set_adapters_lora(self.ctx, None, 0, None)
        else:
            pointers = (lib.llama_adapter_lora_p_ctypes * 1)(self.adapters[adapter])
            scales = (ctypes.c_float * 1)(1.0)
            if lib.llama_set_adapters_lora(self.ctx, pointers, 1, scales) != 0:
                raise RuntimeError(f"llama.cpp could not apply the LoRA adapter {adapter!r}")
        self._applied = adapter

    def _stream(self, request: _Request, token: int) -> bool:
        """Hand out the new text, holding back what may be the start of a stop string; True at a stop string."""
        self._hand_out(request, request.stops.feed(request.decoder.decode(self.llama.detokenize([token]))))
        return request.stops.stopped

    @staticmethod
    def _hand_out(request: _Request, piece: str) -> None:
        if piece:
            request.text += piece
            request.events.put(piece)

    def _finish(self, slot: _Slot, reason: str) -> None:
        request, slot.request, slot.todo = slot.request, None, []
        request.sampler.close()
        self._settle(request, reason)

    def _settle(self, request: _Request, reason: str) -> None:
        if request.events is not None:
            if not request.stops.stopped:
                self._hand_out(request, request.stops.feed(request.decoder.decode(b"", final=True))
                               + request.stops.flush())
            request.events.put(Finished(reason, len(request.tokens), len(request.generated)))
            text = request.text
        else:
            text = self.llama.detokenize(request.generated).decode("utf-8", errors="ignore")
        if not request.future.done():
            request.future.set_result(Reply(text, len(request.tokens), len(request.generated),
                                            self._token_probs(request)))

    def _token_probs(self, request: _Request) -> tuple[tuple[str, float], ...] | None:
        probs = getattr(getattr(request.sampler, "grammar_sampler", None), "token_probs", None)
        if probs is None:
            return None
        pieces = [self.llama.detokenize([token]).decode("utf-8", errors="ignore") for token in request.generated]
        return tuple(zip(pieces, probs))  # a stop token ends the answer without a piece of its own

    def _forget_idle(self) -> None:
        for slot in self.slots:
            if slot.request is None and slot.cached:
                self._lib.llama_memory_seq_rm(self.memory, slot.seq, -1, -1)
                slot.cached = []

    def _fail_all(self, err: Exception) -> None:
        for slot in self.slots:
            if slot.request is not None:
                slot.request.sampler.close()
                _fail(slot.request, err)
                slot.request, slot.todo = None, []
            self._lib.llama_memory_seq_rm(self.memory, slot.seq, -1, -1)
            slot.cached = []
        for request in self._pending:
            request.sampler.close()
            _fail(request, err)
        self._pending.clear()


class _ChainSampler:
    def __init__(self, lib, chain):
        self._lib, self.chain = lib, chain

    def sample(self, ctx, index: int) -> int:
        return self._lib.llama_sampler_sample(self.chain, ctx.ctx, index)  # applies and accepts

    def close(self) -> None:
        if self.chain:
            self._lib.llama_sampler_free(self.chain)
            self.chain = None


class _OwnedGrammarSampler(_ChainSampler):
    def __init__(self, lib, chain, grammar_sampler):
        super().__init__(lib, chain)
        self.grammar_sampler = grammar_sampler

    def sample(self, ctx, index: int) -> int:
        return self.grammar_sampler.sample(ctx, index)

    def close(self) -> None:
        self.grammar_sampler.close()
        super().close()


def _fail(request: _Request, err: Exception) -> None:
    if not request.future.done():
        request.future.set_exception(err)
    if request.events is not None:
        request.events.put(err)


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i
