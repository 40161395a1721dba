"""benchmarks/serving.py's load generator against a real (tiny) server: bounded in requests and
time, every answer counted, latencies that agree with the run's length."""

from __future__ import annotations

import asyncio

import pytest

from peftkit.serving.app import TaskServer, create_app
from tests.benchmarks import load_benchmark
from tests.serving.conftest import LiveServer, adapter_dirs, model_dir, one_torch_thread  # noqa: F401  (fixtures)

serving = load_benchmark("serving", "serving_benchmark")


@pytest.fixture(scope="module")
def live(model_dir, adapter_dirs):  # noqa: F811
    server = TaskServer.from_paths({name: str(adapter_dirs[name]) for name in ("sentiment", "ner")}, str(model_dir))
    with LiveServer(create_app(server, max_batch_size=8, max_wait_ms=2)) as running:
        yield running


def test_closed_loop_stops_at_its_request_bound_and_counts_every_answer(live):
    bodies = [{"task": "sentiment", "text": "a good movie"}, {"task": "ner", "text": "john lives in paris"},
              {"task": "nope", "text": "x"}]  # every third request fails: counted as an error, not timed
    result = asyncio.run(serving.closed_loop(live.url, bodies, clients=4, max_requests=30, max_seconds=60))
    assert result["requests"] + result["errors"] == 30
    assert result["errors"] == 10
    assert 0 < result["p50_seconds"] <= result["p99_seconds"] <= result["seconds"]
    assert result["requests_per_second"] == pytest.approx(result["requests"] / result["seconds"])


def test_closed_loop_stops_at_its_time_bound(live):
    result = asyncio.run(serving.closed_loop(live.url, [{"task": "sentiment", "text": "a good movie"}], clients=2,
                                             max_requests=10**6, max_seconds=0.5))
    assert 0 < result["requests"] < 10**6
    assert result["seconds"] < 10  # the last requests in flight finish, nothing more starts
