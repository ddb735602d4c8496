"""Generation on Ray (`kit generate --ray ADDRESS`, `auto` for a local cluster; extra `microkit[distributed]`).

The driver keeps what decides the samples: the plan, the append-only store, the order results are written in
(plan order, as in one process) and the critic's memory (near-duplicates are judged against everything written
before an index). Ray actors do what costs: each `GenerationWorker` holds its own teacher client (an OpenAI-style
endpoint list or a local llama.cpp model) and critic, and makes whole input lists (every index of a list in the
same worker, so a list is asked for once): the teacher's answers, the vote, the critic's review (schema, SQL,
code in its sandbox, the judge). Every worker reads and writes the one request cache through a `CacheServer`
actor pinned to the driver's machine, so nothing cached is paid for twice, whichever worker asks. Workers are
restarted by Ray when they die and their calls retried; the driver's kill is resumed like any run, from the store
and the cache. The recipe folder (eval set, database, tests file) must be readable at the same path on every
machine, e.g. on a shared filesystem.
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict
from pathlib import Path
from typing import Any

from kit.core.errors import UserError
from kit.distill.config import GenerateConfig
from kit.distill.teachers import TeacherRequestFailed, TeacherUsage, make_backend
from kit.distill.teachers.base import TeacherClient
from kit.distill.teachers.cache import RequestCache

FAILED = "failed"  # a worker's result for an index whose teacher request ran out of retries
WORKER_NAME = "microkit-generate-worker"  # actors are named WORKER_NAME-0, -1, ... (ray.get_actor finds them)
CACHE_NAME = "microkit-request-cache"  # the cache server; workers find it by name (names are per driver's job)


def connect(address: str) -> None:
    """Join the Ray cluster at `address` (`auto`: a running local one, else a new local cluster)."""
    try:
        import ray
    except ImportError:
        raise UserError("--ray needs Ray: pip install 'microkit[distributed]'") from None
    if ray.is_initialized():
        return
    try:
        if address == "auto":
            try:
                ray.init(address="auto", log_to_driver=False)
            except ConnectionError:
                ray.init(log_to_driver=False)  # no cluster running: start one on this machine
        else:
            ray.init(address=address, log_to_driver=False)
    except ConnectionError as err:
        raise UserError(f"cannot reach the Ray cluster at {address} ({err}); start it (`ray start --head`) or pass "
                        "--ray auto for a local one") from None


class RemoteCache:
    """The request cache as a worker sees it: the driver's cache, reached through the CacheServer actor."""

    def __init__(self, server):
        self.server = server

    async def get(self, key: str) -> dict[str, Any] | None:
        return await self.server.get.remote(key)

    async def put(self, key: str, value: dict[str, Any], request: dict[str, Any] | None = None) -> None:
        await self.server.put.remote(key, value, request)

    def close(self) -> None:
        pass


class CacheServer:
    """The one request cache (SQLite, in the run's data folder), served to every worker."""

    def __init__(self, path: str):
        self.cache = RequestCache(Path(path))

    def get(self, key: str) -> dict[str, Any] | None:
        return self.cache.get(key)

    def put(self, key: str, value: dict[str, Any], request: dict[str, Any] | None) -> None:
        self.cache.put(key, value, request=request)


class GenerationWorker:
    """Makes the items of whole input lists with its own teacher client and critic."""

    def __init__(self, config_json: str, failures: list[str]):
        import ray

        from kit.distill.items import ItemMaker, task_critic, wants_token_probs

        cache_server = ray.get_actor(CACHE_NAME)

        # the config travels as JSON: small enough for Ray to pass inline, so a restarted worker still has it
        self.config = config = GenerateConfig.model_validate_json(config_json)
        self.teacher = TeacherClient(make_backend(config.teacher, wants_token_probs(config)), RemoteCache(cache_server))
        critic, self.judges = task_critic(config, self.teacher,
                                          lambda judge: TeacherClient(make_backend(judge), RemoteCache(cache_server)))
        self.maker = ItemMaker(config, self.teacher, critic, failures)

    async def check(self) -> None:
        for client in [self.teacher, *self.judges]:
            await client.backend.check()

    async def ask_wordings(self) -> dict[str, list[str]]:
        return await self.maker.ask_wordings()

    def use_wordings(self, wordings: dict[str, list[str]]) -> None:
        self.maker.wordings = wordings

    async def make(self, indices: list[int]) -> list[tuple[int, Any]]:
        """(index, (candidate, rejection)) for each index, or (index, (FAILED, reason)) when its teacher request
        ran out of retries."""
        async def one(index: int) -> tuple[int, Any]:
            try:
                return index, await self.maker.make(index)
            except TeacherRequestFailed as err:
                return index, (FAILED, str(err))
        return list(await asyncio.gather(*(one(i) for i in indices)))

    def usages(self) -> list[dict[str, Any]]:
        """What each of its teacher clients spent."""
        return [asdict(client.usage) for client in [self.teacher, *self.judges]]

    def notes(self) -> list[str]:
        return self.maker.notes + self.teacher.backend.notes()


class WorkersUsage:
    """What the stats read from a teacher client, for one of a worker's clients: its usage, the driver's cache."""

    def __init__(self, usage: TeacherUsage, cache: RequestCache):
        self.usage, self.cache, self.backend = usage, cache, None


class RayWorkers:
    """The worker actors of one generation run (and the cache server), started on the connected cluster."""

    def __init__(self, config: GenerateConfig, cache_path: Path, failures: list[str], workers: int | None):
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        self.cache_server = ray.remote(num_cpus=0)(CacheServer).options(
            name=CACHE_NAME, scheduling_strategy=here).remote(str(cache_path))
        self.cache_view = RequestCache(cache_path)  # the driver's own look at the cache (its counters)
        count = workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
        config_json = config.model_dump_json(by_alias=True)
        worker_class = ray.remote(num_cpus=1, max_restarts=-1, max_task_retries=-1)(GenerationWorker)
        self.actors = [worker_class.options(name=f"{WORKER_NAME}-{number}").remote(config_json, failures)
                       for number in range(count)]

    async def check(self) -> None:
        await asyncio.gather(*(actor.check.remote() for actor in self.actors))

    async def usages(self) -> list[TeacherUsage]:
        """What every teacher client of every worker spent (the stats add them up)."""
        spent = await asyncio.gather(*(actor.usages.remote() for actor in self.actors))
        return [TeacherUsage(**usage) for per_worker in spent for usage in per_worker]

    def close(self) -> None:
        import ray

        for actor in [*self.actors, self.cache_server]:
            ray.kill(actor)
        self.cache_view.close()


async def fill_on_workers(generation, workers: RayWorkers) -> None:
    """Hand whole input lists to the workers, in plan order, each worker a few lists at a time; write each
    result through `generation` (plan order, critic memory, target and budget: as in one process)."""
    config = generation.config
    per_list = config.data.inputs_per_request
    wordings = await workers.actors[0].ask_wordings.remote()
    generation.maker.wordings = wordings
    await asyncio.gather(*(actor.use_wordings.remote(wordings) for actor in workers.actors))
    lists_per_worker = max(1, config.teacher.concurrency // per_list) + 1
    free = [actor for actor in workers.actors for _ in range(lists_per_worker)]
    running: dict[asyncio.Future, tuple[Any, Any]] = {}  # -> (worker, Ray call)
    number = 0

    def more_wanted() -> bool:
        return generation.store.accepted < generation.target and generation._attempts() < generation.budget

    try:
        while True:
            while free and more_wanted():
                indices = [i for i in range(number * per_list, (number + 1) * per_list) if i not in generation.store.done]
                number += 1
                if not indices:
                    continue
                actor = free.pop(0)
                generation._in_flight += len(indices)
                call = actor.make.remote(indices)
                running[asyncio.ensure_future(call)] = (actor, call)
            if not running:
                return
            done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
            for future in done:
                actor, _ = running.pop(future)
                free.append(actor)
                for index, result in future.result():
                    failed = isinstance(result, tuple) and len(result) == 2 and result[0] == FAILED
                    generation.settle(index, TeacherRequestFailed(result[1]) if failed else result)
            if generation.store.accepted >= generation.target:
                return  # lists still running are cached by their workers for a later, larger run
    finally:
        import ray

        for future, (_, call) in running.items():  # lists no longer wanted: their replies so far stay cached
            future.cancel()
            ray.cancel(call)
        generation.write_what_came_back()

