"""`peftkit serve`'s HTTP API on a real uvicorn server, talked to with a real httpx client."""

from __future__ import annotations

import asyncio
import http.client
import os
import random
import shutil
import subprocess
import sys
import time

import httpx
import pytest

from peftkit.analysis.cost import cost_report
from peftkit.errors import AdapterMismatchError
from peftkit.serving.app import BODY_EXAMPLES, TaskServer, create_app
from tests.serving.conftest import TASKS, LiveServer, assert_same_answer, free_port, random_text


@pytest.fixture(scope="module")
def task_server(model_dir, adapter_dirs):
    return TaskServer.from_paths({name: str(path) for name, path in adapter_dirs.items()}, str(model_dir))


@pytest.fixture(scope="module")
def live(task_server):
    with LiveServer(create_app(task_server, max_batch_size=16, max_wait_ms=5)) as server:
        yield server


def request_for(rng: random.Random, name: str) -> dict:
    pairs = TASKS[name][3]
    if rng.random() < 0.3:  # several rows in one request
        rows = [{"text": random_text(rng), **({"text_pair": random_text(rng)} if pairs else {})} for _ in range(rng.randint(2, 4))]
        return {"task": name, "inputs": rows}
    return {"task": name, "text": random_text(rng), **({"text_pair": random_text(rng)} if pairs else {})}


def expected_answers(references, body: dict) -> list[dict]:
    rows = body.get("inputs") or [{"text": body["text"], "text_pair": body.get("text_pair")}]
    return [references.answer(body["task"], row["text"], row.get("text_pair")) for row in rows]


async def fire(url: str, bodies: list[dict]) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=httpx.Limits(max_connections=100)) as client:
        return await asyncio.gather(*(client.post("/predict", json=body) for body in bodies))


def batch_count(url: str) -> tuple[float, float]:
    """(forwards run, rows run) from /metrics."""
    text = httpx.get(f"{url}/metrics").text
    values = {line.split()[0]: float(line.split()[1]) for line in text.splitlines() if line.startswith("peftkit_batch_rows_")}
    return values["peftkit_batch_rows_count"], values["peftkit_batch_rows_sum"]


def test_hundreds_of_concurrent_requests_over_four_tasks_each_equal_its_own_peft_model(live, references):
    rng = random.Random(0)
    bodies = [request_for(rng, rng.choice(list(TASKS))) for _ in range(300)]
    forwards_before, rows_before = batch_count(live.url)
    responses = asyncio.run(fire(live.url, bodies))
    forwards_after, rows_after = batch_count(live.url)

    for body, response in zip(bodies, responses):
        assert response.status_code == 200, response.text
        answer = response.json()
        assert answer["task"] == body["task"] and answer["kind"] == TASKS[body["task"]][1]
        expected = expected_answers(references, body)
        assert len(answer["predictions"]) == len(expected)
        for got, want in zip(answer["predictions"], expected):
            assert_same_answer(got, want)
    rows = sum(len(body.get("inputs", [None])) for body in bodies)
    assert rows_after - rows_before == rows
    # The rows really were batched: fewer forwards than rows.
    assert forwards_after - forwards_before < rows * 0.75


def test_health_tasks_and_schema(live, adapter_dirs):
    assert httpx.get(f"{live.url}/health").json() == {"status": "ok", "tasks": 4, "queue_depth": 0}
    tasks = {task["name"]: task for task in httpx.get(f"{live.url}/tasks").json()["tasks"]}
    assert set(tasks) == set(TASKS)
    for name, (method, kind, labels, pairs) in TASKS.items():
        assert tasks[name]["method"] == method and tasks[name]["kind"] == kind
        assert tasks[name]["labels"] == labels and tasks[name]["text_pair"] == pairs
        assert tasks[name]["bytes"] == cost_report(adapter_dirs[name])["bytes_per_task"] > (adapter_dirs[name] / "adapter_model.safetensors").stat().st_size
    schema = httpx.get(f"{live.url}/openapi.json").json()["components"]["schemas"]
    assert {"PredictRequest", "PredictResponse", "TaskInfo", "AdapterRequest", "ErrorResponse"} <= set(schema)
    assert httpx.get(f"{live.url}/docs").status_code == 200


def test_entities_come_with_character_offsets_into_the_text_sent(live, references):
    text = "  john   lives in\tlondon  and paris "
    answer = httpx.post(f"{live.url}/predict", json={"task": "ner", "text": text}).json()["predictions"][0]
    assert [word["text"] for word in answer["words"]] == text.split()
    for item in answer["words"] + answer["entities"]:
        assert text[item["start"]:item["end"]] == item["text"]
    assert_same_answer(answer, references.answer("ner", text))


def test_every_bad_input_is_a_json_4xx_naming_problem_and_fix(live, references):
    long_text = " ".join(["movie"] * 80)  # 82 tokens, the tiny model reads 64
    cases = [
        ({"task": "nope", "text": "a movie"}, 404, "unknown_task", "sentiment"),
        ({"task": "sentiment", "text": "   "}, 422, "empty_text", "empty"),
        ({"task": "sentiment", "text": 5}, 422, "invalid_request", "string"),
        ({"task": "sentiment"}, 422, "invalid_request", "either"),
        ({"task": "sentiment", "text": "a", "inputs": [{"text": "b"}]}, 422, "invalid_request", "either"),
        ({"text": "a movie"}, 422, "invalid_request", "task"),
        ({"task": "sentiment", "text": "a", "colour": "red"}, 422, "invalid_request", "colour"),
        ({"task": "sentiment", "text": "a movie", "text_pair": "the plot"}, 422, "unexpected_text_pair", "single texts"),
        ({"task": "topic", "text": "a movie"}, 422, "missing_text_pair", "text_pair"),
        ({"task": "sentiment", "text": long_text}, 422, "text_too_long", "truncate"),
        ({"task": "sentiment", "inputs": [{"text": "good"}, {"text": ""}]}, 422, "empty_text", "inputs[1]"),
        ({"task": "sentiment", "inputs": []}, 422, "invalid_request", "inputs"),
    ]
    for body, status, code, hint in cases:
        response = httpx.post(f"{live.url}/predict", json=body)
        assert response.status_code == status, (body, response.text)
        error = response.json()["error"]
        assert error["code"] == code and hint in error["message"], (body, error)
        assert "Traceback" not in response.text

    broken = httpx.post(f"{live.url}/predict", content=b'{"task": "sentiment", "text": ', headers={"content-type": "application/json"})
    assert broken.status_code == 400 and broken.json()["error"]["code"] == "invalid_json"
    # A JSON body under another Content-Type (curl -d without -H) or none is refused for its header, by
    # name, on both body routes; JSON with a charset is read.
    body = b'{"task": "sentiment", "text": "a movie"}'
    for route, content_type in [("/predict", "application/x-www-form-urlencoded"), ("/predict", "text/plain"),
                                ("/predict", None), ("/adapters", "application/x-www-form-urlencoded")]:
        headers = {"content-type": content_type} if content_type else {}
        wrong_type = httpx.post(f"{live.url}{route}", content=body, headers=headers)
        assert wrong_type.status_code == 415, (route, content_type, wrong_type.text)
        error = wrong_type.json()["error"]
        assert error["code"] == "unsupported_media_type", error
        assert (content_type or "no Content-Type") in error["message"], error
        assert "-H 'Content-Type: application/json'" in error["message"] and BODY_EXAMPLES[route] in error["message"]
    charset = httpx.post(f"{live.url}/predict", content=body, headers={"content-type": "application/json; charset=utf-8"})
    assert charset.status_code == 200, charset.text
    assert 'peftkit_errors_total{code="unsupported_media_type"} 4.0' in httpx.get(f"{live.url}/metrics").text
    missing_route = httpx.get(f"{live.url}/predictions")
    assert missing_route.status_code == 404 and "/predict" in missing_route.json()["error"]["message"]

    # Truncation when asked: the first 64 tokens, and the answer says so.
    truncated = httpx.post(f"{live.url}/predict", json={"task": "sentiment", "text": long_text, "truncate": True})
    assert truncated.status_code == 200
    answer = truncated.json()["predictions"][0]
    assert answer["truncated"] is True
    assert_same_answer(answer, references.answer("sentiment", long_text, truncate=True))

    # The worker survived all of it.
    after = httpx.post(f"{live.url}/predict", json={"task": "sentiment", "text": "a good movie"})
    assert_same_answer(after.json()["predictions"][0], references.answer("sentiment", "a good movie"))


def test_one_bad_row_fails_only_its_own_request(live, references):
    async def run():
        async with httpx.AsyncClient(base_url=live.url, timeout=30) as client:
            bad = {"task": "sentiment", "inputs": [{"text": "good"}, {"text": 3}]}
            good = [{"task": "ner", "text": "john lives in paris"}] * 5
            return await asyncio.gather(*(client.post("/predict", json=body) for body in [*good[:2], bad, *good[2:]]))

    responses = asyncio.run(run())
    assert [response.status_code for response in responses] == [200, 200, 422, 200, 200, 200]
    for response in responses[:2] + responses[3:]:
        assert_same_answer(response.json()["predictions"][0], references.answer("ner", "john lives in paris"))


def test_adapters_load_and_unload_during_traffic(live, references, adapter_dirs, tmp_path):
    copy = tmp_path / "sentiment-copy"
    shutil.copytree(adapter_dirs["sentiment"], copy)
    rng = random.Random(1)
    bodies = [request_for(rng, rng.choice(["sentiment", "topic", "lora_ner"])) for _ in range(120)]

    async def run():
        async with httpx.AsyncClient(base_url=live.url, timeout=60, limits=httpx.Limits(max_connections=50)) as client:
            traffic = [asyncio.ensure_future(client.post("/predict", json=body)) for body in bodies[:60]]
            await asyncio.sleep(0)
            loaded = await client.post("/adapters", json={"name": "sentiment2", "path": str(copy)})
            traffic += [asyncio.ensure_future(client.post("/predict", json=body)) for body in bodies[60:]]
            new_task = await client.post("/predict", json={"task": "sentiment2", "text": "a bad plot"})
            removed = await client.delete("/adapters/sentiment2")
            after = await client.post("/predict", json={"task": "sentiment2", "text": "a bad plot"})
            removed_again = await client.delete("/adapters/sentiment2")
            return loaded, new_task, removed, after, removed_again, await asyncio.gather(*traffic)

    loaded, new_task, removed, after, removed_again, responses = asyncio.run(run())
    assert loaded.status_code == 201 and loaded.json()["name"] == "sentiment2" and loaded.json()["method"] == "pasta"
    assert new_task.status_code == 200
    assert_same_answer(new_task.json()["predictions"][0], references.answer("sentiment", "a bad plot"))
    assert removed.status_code == 204
    assert after.status_code == 404 and after.json()["error"]["code"] == "unknown_task"
    assert removed_again.status_code == 404
    for body, response in zip(bodies, responses):
        assert response.status_code == 200, response.text
        for got, want in zip(response.json()["predictions"], expected_answers(references, body)):
            assert_same_answer(got, want)
    assert {task["name"] for task in httpx.get(f"{live.url}/tasks").json()["tasks"]} == set(TASKS)


def test_a_failing_adapter_load_leaves_the_served_set_unchanged(live, references, adapter_dirs, other_backbone_adapter, tmp_path):
    not_an_adapter = tmp_path / "empty"
    not_an_adapter.mkdir()
    corrupt = tmp_path / "corrupt"
    shutil.copytree(adapter_dirs["lora_ner"], corrupt)
    (corrupt / "adapter_model.safetensors").write_bytes(b"not safetensors")
    weights_file = adapter_dirs["sentiment"] / "adapter_model.safetensors"
    rule = "1 to 64 letters, digits, '_' or '-'"
    cases = [
        ({"name": "x", "path": str(tmp_path / "missing")}, 400, "missing does not exist"),
        ({"name": "x", "path": str(weights_file)}, 400, "is a file, not an adapter directory"),
        ({"name": "x", "path": str(not_an_adapter)}, 400, "holds no adapter_config.json, so it is not an adapter directory"),
        ({"name": "x", "path": str(other_backbone_adapter)}, 400, "another backbone"),
        ({"name": "x", "path": str(corrupt)}, 400, "corrupt"),
        ({"name": "sentiment", "path": str(adapter_dirs["sentiment"])}, 409, "already served"),
        ({"name": "a.b", "path": str(adapter_dirs["sentiment"])}, 422, rule),
        ({"name": "a/b", "path": str(adapter_dirs["sentiment"])}, 422, "e.g. 'a-b'"),
        ({"name": "x"}, 422, 'path: Field required. Send JSON like {"name": "NAME", "path": '),
        ({"name": "x", "path": 3}, 422, '{"name": "NAME", "path": '),
    ]
    before = httpx.get(f"{live.url}/tasks").json()
    for body, status, hint in cases:
        response = httpx.post(f"{live.url}/adapters", json=body)
        assert response.status_code == status, (body, response.text)
        assert hint in response.json()["error"]["message"], response.text
        assert '"task"' not in response.json()["error"]["message"]  # no /predict example for /adapters
    invalid_name = httpx.post(f"{live.url}/adapters", json={"name": "a/b", "path": str(adapter_dirs["sentiment"])})
    assert invalid_name.json()["error"]["code"] == "invalid_task_name"
    broken = httpx.post(f"{live.url}/adapters", content=b'{"name": ', headers={"content-type": "application/json"})
    assert broken.status_code == 400 and '"path"' in broken.json()["error"]["message"]
    assert httpx.get(f"{live.url}/tasks").json() == before
    for name in TASKS:  # every task still answers as its own model
        body = {"task": name, "text": "john works at google", **({"text_pair": "in london"} if TASKS[name][3] else {})}
        answer = httpx.post(f"{live.url}/predict", json=body).json()["predictions"][0]
        assert_same_answer(answer, references.answer(name, body["text"], body.get("text_pair")))


def test_docs_pages_load_only_assets_this_server_serves(live):
    """/docs and /redoc work offline: every script, style sheet and icon they name is local and answers."""
    import re

    for page in ("/docs", "/redoc"):
        response = httpx.get(f"{live.url}{page}")
        assert response.status_code == 200 and "text/html" in response.headers["content-type"]
        assert "http://" not in response.text and "https://" not in response.text  # no CDN, no font service
        urls = re.findall(r"""(?:src|href|spec-url)=["']([^"']+)["']|url: ?["']([^"']+)["']""", response.text)
        urls = [first or second for first, second in urls]
        assert "/openapi.json" in urls, (page, urls)
        assert any(url.endswith(".js") for url in urls), (page, urls)
        for url in urls:
            assert url.startswith("/") and not url.startswith("//"), (page, url)
            assert httpx.get(f"{live.url}{url}").status_code == 200, (page, url)
    assert "/adapters" in httpx.get(f"{live.url}/openapi.json").json()["paths"]


def test_metrics_in_prometheus_text_format(live):
    httpx.post(f"{live.url}/predict", json={"task": "nope", "text": "a"})
    response = httpx.get(f"{live.url}/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    text = response.text
    for name in ("peftkit_requests_total", "peftkit_errors_total", "peftkit_batch_rows_bucket",
                 "peftkit_queue_depth", "peftkit_request_latency_seconds_bucket", "peftkit_predicted_rows_total"):
        assert name in text, name
    assert 'peftkit_errors_total{code="unknown_task"}' in text
    assert 'peftkit_requests_total{route="/predict",status="404"}' in text


def test_a_full_queue_answers_503_with_retry_after_and_a_slow_answer_504(task_server):
    # A long batching wait keeps the first request's rows queued while the others arrive.
    app = create_app(task_server, max_batch_size=64, max_wait_ms=3000, max_queue_size=4, timeout_seconds=2.0)
    with LiveServer(app) as server:
        async def run():
            async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
                first = asyncio.ensure_future(client.post("/predict", json={"task": "sentiment", "inputs": [{"text": "good"}] * 3}))
                while (await client.get("/health")).json()["queue_depth"] < 3:
                    await asyncio.sleep(0.01)
                full = await client.post("/predict", json={"task": "sentiment", "inputs": [{"text": "bad"}] * 2})
                too_many = await client.post("/predict", json={"task": "sentiment", "inputs": [{"text": "bad"}] * 5})
                return full, too_many, await first

        full, too_many, first = asyncio.run(run())
    assert full.status_code == 503 and full.headers["retry-after"] == "1"
    assert full.json()["error"]["code"] == "overloaded" and "Retry-After" in full.json()["error"]["message"]
    assert too_many.status_code == 413 and too_many.json()["error"]["code"] == "too_many_inputs"
    # The first request waited 3 s for its batch to fill, past its 2 s timeout.
    assert first.status_code == 504 and first.json()["error"]["code"] == "timeout"


def test_adapters_that_do_not_share_a_backbone_stop_the_server_at_startup(model_dir, adapter_dirs, other_backbone_adapter):
    with pytest.raises(AdapterMismatchError, match="another backbone"):
        TaskServer.from_paths({"ner": str(adapter_dirs["ner"]), "foreign": str(other_backbone_adapter)}, str(model_dir))


def test_the_serve_command_answers_over_http(model_dir, adapter_dirs, references):
    port = free_port()
    command = [sys.executable, "-m", "peftkit", "serve", "--adapter", f"sentiment={adapter_dirs['sentiment']}",
               "--adapter", f"lora_ner={adapter_dirs['lora_ner']}", "--model", str(model_dir), "--port", str(port),
               "--max-batch-size", "8"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, process.stdout.read()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the server did not come up"
            time.sleep(0.2)
        answer = httpx.post(f"http://127.0.0.1:{port}/predict", json={"task": "lora_ner", "text": "john lives in paris"})
        assert_same_answer(answer.json()["predictions"][0], references.answer("lora_ner", "john lives in paris"))
        assert [task["name"] for task in httpx.get(f"http://127.0.0.1:{port}/tasks").json()["tasks"]] == ["sentiment", "lora_ner"]
        # A connection idle past uvicorn's default keep-alive (5 s, the same as httpx's pool expiry:
        # a client could reuse it just as the server closes it) still answers: UVICORN_OPTIONS.
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        connection.request("GET", "/health")
        assert connection.getresponse().read() and connection.sock is not None
        opened = connection.sock
        time.sleep(6)
        connection.request("GET", "/health")  # on the same socket: http.client reopens only a socket it closed itself
        assert connection.sock is opened and connection.getresponse().status == 200
        connection.close()
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_the_serve_command_refuses_a_malformed_adapter_flag(capsys):
    from peftkit.cli import main

    assert main(["serve", "--adapter", "just-a-path"]) == 2
    assert "NAME=DIR" in capsys.readouterr().err


def test_the_serve_command_refuses_a_task_name_that_cannot_be_served(adapter_dirs, capsys):
    from peftkit.cli import main

    assert main(["serve", "--adapter", f"news/topic={adapter_dirs['topic']}"]) == 2
    error = capsys.readouterr().err
    assert "'news/topic' is not usable" in error and "letters, digits, '_' or '-'" in error and "'news-topic'" in error


def test_the_serve_command_names_a_port_in_use_and_the_flag(model_dir, adapter_dirs, capsys):
    import socket

    from peftkit.cli import main

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--adapter", f"sentiment={adapter_dirs['sentiment']}", "--model", str(model_dir),
                     "--port", str(port)]) == 2
    captured = capsys.readouterr()
    assert f"127.0.0.1:{port}" in captured.err and "--port" in captured.err and "in use" in captured.err
    assert "serving" not in captured.out


def test_the_serve_command_refuses_bad_settings_with_the_flag_to_fix(model_dir, adapter_dirs, capsys):
    from peftkit.cli import main

    base = ["serve", "--adapter", f"sentiment={adapter_dirs['sentiment']}", "--model", str(model_dir)]
    assert main([*base, "--max-batch-size", "0"]) == 2
    assert "--max-batch-size" in capsys.readouterr().err
    assert main([*base, "--timeout", "0"]) == 2
    assert "--timeout" in capsys.readouterr().err
