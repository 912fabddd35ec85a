"""`selfie serve` under load, baseline and ours side by side in one run (toy model, real HTTP, CPU).

1. Micro-batching: 16 concurrent clients each ask /describe for 8 vectors (toy concept states,
   greedy, 24 new tokens), 3 rounds each, against the same 48 requests sent one at a time to a
   server with no batching window (--batch-wait-ms 0). Reports requests/s and p50/p95 latency and
   checks both ways return the same labels; the two servers run side by side and the two ways
   alternate 3 times (medians), so load from other processes hits both alike. Target: >= 2x throughput.
2. Load test: 1,000 requests from 32 concurrent clients over every endpoint, ~15% malformed (bad
   JSON, wrong dimension, NaN, unknown field, bad layer, oversize). Target: zero 5xx, zero lost
   responses, every malformed request a 4xx and every good one a 200.
3. Large vocabulary (in process, no HTTP): the same 16 requests x 8 vectors on a random 8-block
   Llama with Llama-3's 128k vocabulary, baseline mode at 1, 6 and 12 scales, greedy, 2 new
   tokens, one at a time against merged; at 6 scales also merged without the logits bound
   (``--batch-size 1024``: the 768-generation batches of issue #18). Target: merged >= 1x at every
   scale count, labels identical.

Run: python benchmarks/bench_serve.py [--device cuda] [--threads 2] [--only vocab]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import time
from collections import Counter

import httpx
import torch

from selfie_adapters import extract_hidden_states
from selfie_adapters.interpret.describe import BASELINE_SCALES
from selfie_adapters.serve import Service
from selfie_adapters.serve.process import serve_process
from selfie_adapters.testing import make_llama3_tokenizer, make_tiny_llama
from selfie_adapters.toy import load_toy_model

CLIENTS, VECTORS, ROUNDS = 16, 8, 3
SERVER: list[str] = []  # extra `selfie serve` flags (--device, --threads) from the command line
OURS: list[str] = []  # flags only for the micro-batching server (--batch-wait-ms)
DESCRIBE = {"mode": "baseline", "scales": [1.0], "max_new_tokens": 24}
SWEEPS = {1: (1.0,), 6: BASELINE_SCALES, 12: tuple(round(0.5 * 11 ** (i / 11), 2) for i in range(12))}  # 0.5 .. 5.5


def concept_vectors(n: int) -> torch.Tensor:
    model, tok, world = load_toy_model()
    prompts = [f"Tell me about {c.name}." for c in world.concepts[:n]]
    states = extract_hidden_states(model, tok, prompts, 1, chat=True, batch_size=64)[1]
    return states - states.mean(0)


async def timed_post(client: httpx.AsyncClient, path: str, body) -> tuple[float, httpx.Response]:
    t = time.perf_counter()
    r = await (client.post(path, content=body, headers={"content-type": "application/json"}) if isinstance(body, str)
               else client.post(path, json=body))
    return time.perf_counter() - t, r


async def one_at_a_time(url: str, bodies: list[dict]) -> tuple[float, list[float], list]:
    async with httpx.AsyncClient(base_url=url, timeout=300) as client:
        start, latencies, labels = time.perf_counter(), [], []
        for _ in range(ROUNDS):
            for body in bodies:
                dt, r = await timed_post(client, "/describe", body)
                latencies.append(dt)
                labels.append([row["label"] for row in r.json()["rows"]])
        return time.perf_counter() - start, latencies, labels


async def concurrent(url: str, bodies: list[dict]) -> tuple[float, list[float], list]:
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=httpx.Limits(max_connections=64)) as client:
        latencies, labels = [], [None] * (ROUNDS * len(bodies))

        async def worker(i: int) -> None:
            for k in range(ROUNDS):
                dt, r = await timed_post(client, "/describe", bodies[i])
                latencies.append(dt)
                labels[k * len(bodies) + i] = [row["label"] for row in r.json()["rows"]]

        start = time.perf_counter()
        await asyncio.gather(*(worker(i) for i in range(len(bodies))))
        return time.perf_counter() - start, latencies, labels


def report(name: str, runs: list[tuple[float, list[float]]]) -> float:
    """Median requests/s over the runs; latency quantiles over all their requests."""
    rps = statistics.median(len(lat) / wall for wall, lat in runs)
    latencies = [x for _, lat in runs for x in lat]
    p95 = statistics.quantiles(latencies, n=20)[18]
    print(f"  {name:<34} {rps:6.1f} req/s   p50 {statistics.median(latencies) * 1000:6.0f} ms   "
          f"p95 {p95 * 1000:6.0f} ms   (median of {len(runs)} runs of {len(runs[0][1])} requests)")
    return rps


def bench_batching(vectors: torch.Tensor, repeats: int = 3) -> None:
    """Both servers run side by side; the two ways alternate, so machine load hits both alike."""
    bodies = [{"vectors": vectors[i * VECTORS:(i + 1) * VECTORS].tolist(), **DESCRIBE} for i in range(CLIENTS)]
    print(f"micro-batching: {CLIENTS} clients x {VECTORS} vectors x {ROUNDS} rounds on /describe (toy model)")
    with serve_process(["--model", "toy", "--batch-wait-ms", "0", *SERVER]) as base_url, \
            serve_process(["--model", "toy", *SERVER, *OURS]) as url:
        asyncio.run(one_at_a_time(base_url, bodies[:2]))  # warm-up
        asyncio.run(concurrent(url, bodies[:2]))
        base_runs, runs, same = [], [], True
        for _ in range(repeats):
            wall, lat, base_labels = asyncio.run(one_at_a_time(base_url, bodies))
            base_runs.append((wall, lat))
            wall, lat, labels = asyncio.run(concurrent(url, bodies))
            runs.append((wall, lat))
            same &= labels == base_labels
        stats = httpx.get(url + "/info").json()["stats"]
    base = report("one at a time (no batching window)", base_runs)
    ours = report(f"{CLIENTS} concurrent, micro-batched", runs)
    print(f"  throughput {ours / base:.2f}x (target >= 2x); labels {'identical' if same else 'DIFFERENT'}; "
          f"{stats['rows'] / stats['batches']:.1f} vectors per model batch on average")


async def describe_requests(service: Service, requests: list[torch.Tensor], settings, merged: bool):
    """Seconds to describe every request, all queued at once (merged) or each after the last, and the labels."""
    start = time.perf_counter()
    if merged:
        jobs = [service.describe(v, settings, "baseline") for v in requests]
        rows = await asyncio.gather(*(job.collect() for job in jobs))
    else:
        rows = [await service.describe(v, settings, "baseline").collect() for v in requests]
    return time.perf_counter() - start, [[d.label for d in r] for r in rows]


def bench_vocab(repeats: int = 2, new_tokens: int = 2, device: str = "cpu") -> None:
    """In process; per scale count the ways alternate ``repeats`` times (medians), so load hits all alike."""
    model, tok = make_tiny_llama(layers=8, hidden=256).to(device), make_llama3_tokenizer()
    torch.manual_seed(0)
    requests = list(torch.randn(CLIENTS * VECTORS, 256).split(VECTORS))
    ways = {"one at a time": (Service(model, tok, batch_wait_ms=0), False), "merged": (Service(model, tok), True),
            "merged, unbounded": (Service(model, tok, batch_size=1024, max_step_logits=2**62), True)}
    print(f"large vocabulary: {CLIENTS} requests x {VECTORS} vectors, random Llama (8 blocks, d=256, "
          f"{model.config.vocab_size:,} tokens), baseline, greedy, {new_tokens} new tokens, in process, "
          f"{torch.get_num_threads()} thread(s)")
    for service, _ in ways.values():
        service.start()
    try:
        for n, scales in SWEEPS.items():
            settings = ways["merged"][0].settings("baseline", scales, max_new_tokens=new_tokens)
            names = [w for w in ways if n == 6 or w != "merged, unbounded"]  # unbounded: the case only
            times, labels, before = {w: [] for w in names}, {}, {w: Counter(ways[w][0].scheduler.stats) for w in names}
            for _ in range(repeats):
                for w in names:
                    seconds, labels[w] = asyncio.run(describe_requests(ways[w][0], requests, settings, ways[w][1]))
                    times[w].append(seconds)
            cells = []
            for w in names:  # the ratio of each run to the one-at-a-time run just before it: load drifts slowly
                done = ways[w][0].scheduler.stats - before[w]
                ratios = sorted(a / t for a, t in zip(times["one at a time"], times[w]))
                cells.append(f"{w} {statistics.median(times[w]):5.1f} s "
                             f"({done['generations'] / done['forwards']:.0f} gen/forward)"
                             + ("" if w == "one at a time" else
                                f" {statistics.median(ratios):.2f}x ({ratios[0]:.2f}-{ratios[-1]:.2f})"))
            same = all(labels[w] == labels["one at a time"] for w in names)
            print(f"  {n:>2} scales: " + ", ".join(cells) + f"; labels {'identical' if same else 'DIFFERENT'}")
    finally:
        for service, _ in ways.values():
            service.stop()
    print(f"  (x = one at a time / merged: median (range) of {repeats} alternations; target: merged >= 1x at "
          "every scale count)")


def load_requests(vectors: torch.Tensor, n: int, rng: random.Random) -> list[tuple[str, object, bool]]:
    """(path, body, well-formed?) for a mix of endpoints with ~15% malformed requests."""
    v = lambda k: vectors[rng.randrange(len(vectors) - k):][:k].tolist()  # noqa: E731
    good = [("/describe", lambda: {"vectors": v(rng.randint(1, 4)), **DESCRIBE}),
            ("/describe", lambda: {"prompt": "Tell me about Zapees.", "layer": rng.randrange(4), "chat": True,
                                   "mode": "baseline", "scales": [1.0], "max_new_tokens": 12}),
            ("/lens", lambda: {"prompt": "Tell me about Riguth.", "layers": [1, 2], "max_new_tokens": 8}),
            ("/extract", lambda: {"prompts": ["Tell me about Zapees.", "hello"], "layers": [0, 3]}),
            ("/compare", lambda: {"a": {"vectors": v(1)[0]}, "b": {"vectors": v(1)[0]}, **DESCRIBE})]
    nan = '{"vectors": [' + ", ".join(["NaN"] * 128) + "]}"
    bad = [("/describe", lambda: "{not json"), ("/describe", lambda: {"vectors": [[0.5] * 127]}),
           ("/describe", lambda: nan), ("/describe", lambda: {"vectors": v(1), "scale": 2}),
           ("/describe", lambda: {"prompt": "hi", "layer": 9}), ("/lens", lambda: {"prompt": "hi", "layers": [7]}),
           ("/describe", lambda: {"vectors": [[0.5] * 128] * 1025}), ("/extract", lambda: {"prompts": []})]
    out = []
    for _ in range(n):
        path, make = rng.choice(bad) if rng.random() < 0.15 else rng.choice(good)
        out.append((path, make(), (path, make) not in [(p, m) for p, m in bad]))
    return out


async def load_test(url: str, requests: list[tuple[str, object, bool]], clients: int = 32) -> dict:
    counts: Counter = Counter()
    queue = list(enumerate(requests))

    async def worker(client: httpx.AsyncClient) -> None:
        while queue:
            _, (path, body, ok) = queue.pop()
            try:
                _, r = await timed_post(client, path, body)
            except httpx.HTTPError as e:
                counts[f"lost ({type(e).__name__})"] += 1
                continue
            counts[f"{r.status_code // 100}xx"] += 1
            counts["as expected" if (r.status_code == 200) == ok and r.status_code < 500 else "unexpected"] += 1
            if r.status_code >= 400:
                json.loads(r.text)["error"]  # every error is one JSON line with "error"

    async with httpx.AsyncClient(base_url=url, timeout=300, limits=httpx.Limits(max_connections=64)) as client:
        start = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(clients)))
        counts["seconds"] = round(time.perf_counter() - start, 1)
    return dict(counts)


def bench_load(vectors: torch.Tensor) -> None:
    requests = load_requests(vectors, 1000, random.Random(0))
    malformed = sum(not ok for _, _, ok in requests)
    print(f"load test: {len(requests)} requests ({malformed} malformed), 32 concurrent clients, every endpoint")
    with serve_process(["--model", "toy", *SERVER]) as url:
        counts = asyncio.run(load_test(url, requests))
        alive = httpx.get(url + "/info").status_code == 200
    lost = sum(v for k, v in counts.items() if k.startswith("lost"))
    answered = sum(v for k, v in counts.items() if k.endswith("xx"))
    print(f"  {counts}")
    print(f"  answered {answered}/{len(requests)}, lost {lost}, 5xx {counts.get('5xx', 0)}, "
          f"unexpected {counts.get('unexpected', 0)}, server alive after: {alive} (target: zero 5xx, zero lost)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="the server's device (cpu, cuda)")
    parser.add_argument("--threads", type=int, default=1,
                        help="the server's CPU threads for torch (1: the shared 2-core CI machine)")
    parser.add_argument("--batch-wait-ms", help="the micro-batching server's window (default: selfie serve's)")
    parser.add_argument("--only", choices=["batching", "load", "vocab"], help="run one benchmark (default: all)")
    parser.add_argument("--repeats", type=int, default=2, help="alternations per scale count in the vocab benchmark")
    args = parser.parse_args()
    SERVER += ["--device", args.device, "--threads", str(args.threads)]
    OURS += ["--batch-wait-ms", args.batch_wait_ms] if args.batch_wait_ms else []
    if args.only in (None, "batching", "load"):
        print(f"server: {' '.join(SERVER + OURS)}")
        torch.set_num_threads(1)  # the client process leaves the cores to the server
        vecs = concept_vectors(CLIENTS * VECTORS)
        if args.only in (None, "batching"):
            bench_batching(vecs)
        if args.only in (None, "load"):
            bench_load(vecs)
    if args.only in (None, "vocab"):
        torch.set_num_threads(args.threads)  # in process: the model runs here
        bench_vocab(args.repeats, device=args.device)
