"""What scaling generation out costs and gains on this machine: samples/s with 1 and 2 teacher endpoints (real
llama.cpp servers on loopback, the store's SmolLM2-135M), in one process and on a local Ray cluster with 1 and 2
worker actors; and Ray's own overhead against one process on the same work (every reply already in the cache, so
only the orchestration is timed).

    .venv/bin/python bench/scale_out.py [--samples 24] [--workdir /tmp/microkit-scale-out]

Each configuration generates the same recipe from scratch (its own run folder, an empty cache). Prints a markdown
table; asserts nothing. On a machine with more cores and a GPU, point --endpoints at vLLM servers
(`vllm serve MODEL`) instead of starting llama.cpp ones.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.distill_throughput import start_server  # noqa: E402 - a llama.cpp server on loopback

RECIPE = """\
task: {{name: unit-converter, description: Convert a quantity between metric and imperial units.}}
output:
  format: json
  schema: {{type: object, properties: {{value: {{type: number}}, unit: {{type: string}}}}, required: [value, unit]}}
seeds:
  - {{input: 3 miles in km, output: {{value: 4.83, unit: km}}}}
  - {{input: 10 kg in pounds, output: {{value: 22.05, unit: lb}}}}
teacher: {{backend: openai, base_url: {urls}, model: smollm2, max_tokens: 64, concurrency: {concurrency}, timeout_s: 120}}
critic:
  verifiers: [{{type: json_schema}}, {{type: dedup}}]
data: {{target_samples: {samples}, topics: [cooking, travel, science, sport], reasoning: false, validation_fraction: 0.1}}
"""


def generate(folder: Path, urls: list[str], samples: int, ray_workers: int | None, cache: Path | None = None) -> dict:
    from kit.core.run_dir import RunDir
    from kit.distill.generate import run
    from kit.recipe.loader import load_recipe
    from kit.recipe.stages import generate_config

    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    (folder / "recipe.yaml").write_text(RECIPE.format(urls=json.dumps(urls), concurrency=2 * len(urls),
                                                      samples=samples))
    config = generate_config(load_recipe(folder / "recipe.yaml"))
    if ray_workers:
        config = config.model_copy(update={"ray": "auto", "ray_workers": ray_workers})
    run_dir = RunDir(folder / "run")
    if cache is not None:
        run_dir.data.mkdir(parents=True)
        shutil.copy(cache, run_dir.data / "teacher_cache.sqlite")
    started = time.perf_counter()
    run(config, run_dir)
    seconds = time.perf_counter() - started
    stats = json.loads((run_dir.data / "stats.json").read_text())
    return {"seconds": seconds, "accepted": stats["accepted"], "samples_per_s": stats["accepted"] / seconds,
            "requests": stats["teacher"]["requests"], "cache": run_dir.data / "teacher_cache.sqlite"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=24)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/microkit-scale-out"))
    parser.add_argument("--endpoints", default="", help="comma-separated endpoints to use instead of starting two "
                                                         "llama.cpp servers")
    args = parser.parse_args()
    import ray

    from kit.models.store import ModelStore

    args.workdir.mkdir(parents=True, exist_ok=True)
    servers: list[subprocess.Popen] = []
    if args.endpoints:
        urls = [u.strip() for u in args.endpoints.split(",") if u.strip()]
    else:
        urls = []
        for number in range(2):
            process, url = start_server(ModelStore().pull("smollm2-135m-instruct"), args.workdir / f"server{number}.log",
                                         threads=1)
            servers.append(process)
            urls.append(url)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    rows = []
    try:
        for label, endpoints, workers in [("one process", urls[:1], None), ("one process", urls[:2], None),
                                          ("Ray, 1 worker", urls[:1], 1), ("Ray, 2 workers", urls[:1], 2),
                                          ("Ray, 2 workers", urls[:2], 2)]:
            result = generate(args.workdir / f"{label}-{len(endpoints)}".replace(" ", "_").replace(",", ""),
                              endpoints, args.samples, workers)
            rows.append((label, len(endpoints), result))
            print(f"{label}, {len(endpoints)} endpoint(s): {result['samples_per_s']:.2f} samples/s", flush=True)
        # the orchestration alone: the first run's replies all come from its cache
        cache = rows[0][2]["cache"]
        alone = generate(args.workdir / "cached-alone", urls[:1], args.samples, None, cache)
        on_ray = generate(args.workdir / "cached-ray", urls[:1], args.samples, 1, cache)
    finally:
        ray.shutdown()
        for process in servers:
            process.terminate()
            process.wait(timeout=10)
    print(f"\n{args.samples} samples each, {len(servers) or len(urls)} endpoint(s) available\n")
    print("| engine | endpoints | samples/s | seconds | teacher requests |")
    print("| --- | --- | --- | --- | --- |")
    for label, count, result in rows:
        print(f"| {label} | {count} | {result['samples_per_s']:.2f} | {result['seconds']:.1f} | {result['requests']} |")
    print(f"\nRay overhead on the same work (every reply cached): one process {alone['seconds']:.2f} s, Ray with one "
          f"worker {on_ray['seconds']:.2f} s ({on_ray['seconds'] - alone['seconds']:+.2f} s for "
          f"{args.samples} samples)")


if __name__ == "__main__":
    main()
