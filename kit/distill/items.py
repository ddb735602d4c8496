"""What one plan index costs: its input (an entry of a list the teacher writes for several indices), the
teacher's answers, the self-consistency vote and the critic's review. A single process and each Ray worker
(kit.distill.distributed) make items the same way; what is kept, and in which order, is decided by whoever
writes the store (kit.distill.generate)."""

from __future__ import annotations

import asyncio
from typing import Any, Callable

from kit.core.errors import UserError
from kit.distill.config import GenerateConfig, TeacherConfig
from kit.distill.critic import Candidate, Critic, Rejection, build_critic
from kit.distill.critic.base import input_text
from kit.distill.critic.confident import answer_confidence
from kit.distill.prompts import (
    ParseError,
    answer_messages,
    answer_schema,
    echoes_ask,
    input_messages,
    input_schema,
    inputs_messages,
    inputs_schema,
    parse_answer,
    parse_input,
    parse_inputs,
    parse_wordings,
    plan_item,
    request_seed,
    round_role,
    vote_key,
    wordings_messages,
    wordings_schema,
)
from kit.distill.teachers import TeacherClient, TeacherRequestFailed
from kit.distill.vote import vote


class TargetReached(Exception):
    pass


def wants_token_probs(config: GenerateConfig) -> bool:
    """Whether the teacher should report how sure it was of each answer token (a `confident` check reads them)."""
    return any(v.type == "confident" for v in config.critic.verifiers)


def task_critic(config: GenerateConfig, teacher: TeacherClient | None,
                new_client: Callable[[TeacherConfig], TeacherClient] | None) -> tuple[Critic, list[TeacherClient]]:
    """The recipe's critic, and the clients made for judges that name a teacher of their own (`new_client`);
    other judges use the task's `teacher`. Without `new_client` no client is made (a critic that only remembers
    and rechecks, as the Ray driver's)."""
    judges: list[TeacherClient] = []

    def judge_client(verifier) -> TeacherClient | None:
        if verifier.teacher is None or new_client is None:
            return teacher
        judges.append(new_client(verifier.teacher))
        return judges[-1]

    critic = build_critic(config.critic.verifiers, schema=config.output.json_schema, eval_file=config.eval_file,
                          seed_inputs=[input_text(s.input) for s in config.seeds], judge_client=judge_client,
                          task_description=config.task.description, seed_outputs=[s.output for s in config.seeds])
    return critic, judges


class ItemMaker:
    """Makes plan items with one teacher client and one critic. `target_reached` says whether to stop before
    paying for another request (the store's writer knows; a Ray worker never stops on its own)."""

    def __init__(self, config: GenerateConfig, teacher: TeacherClient, critic: Critic, failures: list[str],
                 target_reached: Callable[[], bool] = lambda: False):
        self.config = config
        self.teacher = teacher
        self.critic = critic
        self.failures = failures
        self.wordings: dict[str, list[str]] = {}  # topic ("" for none) -> ways users word it (data.wordings)
        self.notes: list[str] = []
        self.target_reached = target_reached
        self.with_reference = any(v.type == "sql" and v.compare == "reference" for v in config.critic.verifiers)
        self.votes_on_results = any(v.type == "sql" and v.compare == "majority" for v in config.critic.verifiers)
        self._input_lists: dict[int, asyncio.Future] = {}  # list number -> the teacher's reply, shared by its items

    def cancel(self) -> None:
        for task in self._input_lists.values():
            task.cancel()

    async def ask_wordings(self) -> dict[str, list[str]]:
        """`data.wordings` ways users word each topic, one teacher request per topic (cached like every request,
        so a rerun plans the same inputs). A reply that does not parse leaves its topic without wordings."""
        config, teacher = self.config, self.teacher
        count = config.data.wordings
        if count == 0:
            return {}
        topics = config.data.topics or [""]

        async def one(number: int, topic: str) -> list[str]:
            reply = await teacher.complete(wordings_messages(config, topic or None, count), wordings_schema(count),
                                           teacher.sampling(request_seed(config.data.seed, number,
                                                                         round_role(config, "wordings")),
                                                            max_tokens=max(config.teacher.max_tokens, 32 * count)))
            try:
                return parse_wordings(reply.text)
            except ParseError as err:
                self.notes.append(f"wordings: none for topic {topic or '(all)'!r}: {err}")
                return []

        try:
            lists = await asyncio.gather(*(one(n, t) for n, t in enumerate(topics)))
        except TeacherRequestFailed as err:
            raise UserError(f"the teacher failed while listing wordings ({err}); check it, then run again") from None
        self.wordings = {topic: wordings for topic, wordings in zip(topics, lists) if wordings}
        return self.wordings

    async def make(self, index: int) -> tuple[Candidate | dict[str, Any], Rejection | None]:
        config, teacher = self.config, self.teacher
        item = plan_item(config, index, self.failures, self.wordings)
        try:
            task_input, reference = await self._input(index, item)
        except ParseError as err:
            raw = getattr(err, "raw", "")
            return {"input": None, "origin": item.origin, "raw": raw[:500]}, Rejection("parse", f"input: {err}")
        # a near-duplicate of a kept sample, or a copy of an eval item, is cut before its answer is paid for
        if (rejection := await self.critic.review_input(Candidate(index, task_input, [], origin=item.origin))):
            return {"input": task_input, "origin": item.origin}, rejection
        self._stop_if_done()
        n = config.data.answers_per_input
        messages = answer_messages(config, item, task_input)
        answer_params = {} if config.teacher.answer_temperature is None else \
            {"temperature": config.teacher.answer_temperature}
        replies = await asyncio.gather(*(teacher.complete(messages, answer_schema(config, task_input), teacher.sampling(
            request_seed(config.data.seed, index, round_role(config, "answer"), k), **answer_params))
            for k in range(n)))
        answers, problems = [], []
        for r in replies:
            try:
                answer = parse_answer(config, r.text)
            except ParseError as err:
                problems.append(str(err))
                continue
            if (confidence := answer_confidence(r.token_probs)) is not None:
                answer.least_p, answer.least_token = confidence
            answers.append(answer)
        if not answers:
            return ({"input": task_input, "origin": item.origin, "raw": replies[0].text[:500]},
                    Rejection("parse", f"answer: {problems[0]}"))
        candidate = Candidate(index, task_input, answers, origin=item.origin, reference=reference,
                              seed=item.evolve_seed)
        if n > 1 and (rejection := self._vote(candidate, n)) is not None:
            return candidate, rejection
        self._stop_if_done()
        return candidate, await self.critic.review(candidate)

    async def _input(self, index: int, item) -> tuple[Any, Any]:
        """The input written for plan item `index` (and its reference answer, when the critic compares with
        one). With `data.inputs_per_request` > 1 the teacher writes consecutive items as one list, and each
        item's worker takes its entry from the shared reply."""
        config, teacher = self.config, self.teacher
        count = config.data.inputs_per_request
        if count == 1:
            messages = input_messages(config, item, self.with_reference)
            reply = await teacher.complete(messages, input_schema(config, self.with_reference),
                                           teacher.sampling(request_seed(config.data.seed, index,
                                                                            round_role(config, "input"))))
            try:
                entry = parse_input(config, reply.text, self.with_reference)
            except ParseError as err:
                err.raw = reply.text
                raise
            entry = _unless_echo(entry, messages, reply.text)
            if isinstance(entry, ParseError):
                raise entry
            return entry
        number = index // count
        task = self._input_lists.get(number)
        if task is None:
            task = self._input_lists[number] = asyncio.ensure_future(self._input_list(number, count))
        entries = await asyncio.shield(task)
        entry = entries[index - number * count]
        if isinstance(entry, ParseError):
            raise entry
        return entry

    async def _input_list(self, number: int, count: int) -> list[tuple[Any, Any] | ParseError]:
        config, teacher = self.config, self.teacher
        first = number * count
        item = plan_item(config, first, self.failures, self.wordings)
        messages = inputs_messages(config, item, count, self.with_reference)
        reply = await teacher.complete(messages, inputs_schema(config, count, self.with_reference),
                                       teacher.sampling(request_seed(config.data.seed, first,
                                                                         round_role(config, f"inputs{count}")),
                                                        max_tokens=config.teacher.max_tokens * count))
        try:
            entries = parse_inputs(config, reply.text, count, self.with_reference)
        except ParseError as err:
            entries = [err] * count
        for entry in entries:
            if isinstance(entry, ParseError):
                entry.raw = reply.text
        return [entry if isinstance(entry, ParseError) else _unless_echo(entry, messages, reply.text)
                for entry in entries]

    def _stop_if_done(self) -> None:
        """Before paying for another request: is the target already met? (Replies already paid for are
        cached, so a later run with a larger target uses them.)"""
        if self.target_reached():
            raise TargetReached

    def _vote(self, candidate: Candidate, n: int) -> Rejection | None:
        """Self-consistency (kit.distill.vote): JSON field by field, text whole; a label needs a strict majority of
        all N (unless a sql verifier votes on result sets instead)."""
        result, chosen = vote(candidate.answers, self.config.output.format, lambda a: vote_key(self.config, a))
        if result.answer is not None and chosen is None:  # a label composed of each field's majority
            candidate.label = result.answer
        candidate.chosen, candidate.votes = chosen or 0, result.votes
        if result.reason and not self.votes_on_results:
            return Rejection("self_consistency", result.reason)
        return None


def _unless_echo(entry: tuple[Any, Any], messages: list[dict[str, str]], raw: str) -> tuple[Any, Any] | ParseError:
    """The parsed input, or a parse error when it repeats the request's own instruction (prompts.echoes_ask)."""
    if echoes_ask(messages, entry[0]):
        err = ParseError("the input repeats the request's instruction")
        err.raw = raw
        return err
    return entry
