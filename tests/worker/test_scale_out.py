"""Three ``agentflux worker`` processes over one stream and one Postgres purgatory; one is
SIGKILLed mid-run; another is drained with SIGTERM. Nothing is lost (issue 14)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from agentflux import open_purgatory
from servers import postgres_schema_url

from .test_worker import fill, pending, read_sink, redis_asyncio, resolve_as_they_appear

TESTS = Path(__file__).resolve().parent.parent


def start_worker(redis_url: str, names: dict[str, str], store: str, consumer: str, log: Any) -> subprocess.Popen[Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTFLUX_")} | {"PYTHONUNBUFFERED": "1"}
    command = [
        sys.executable, "-m", "agentflux", "worker", "--agent", "worker.agents:Doubler",
        "--source", redis_url, "--stream", names["stream"], "--group", names["group"], "--consumer", consumer,
        "--sink", names["sink"], "--store", store, "--concurrency", "16", "--batch", "64",
        "--claim-idle", "1", "--claim-lease", "1", "--max-deliveries", "3", "--agent-id", "doubler",
    ]  # fmt: skip
    return subprocess.Popen(command, cwd=TESTS, env=env, stdout=log, stderr=subprocess.STDOUT)


@pytest.mark.timeout(240)
async def test_three_workers_one_killed_lose_nothing(redis_url: str, names: dict[str, str], tmp_path: Path) -> None:
    store = postgres_schema_url()
    total, poison = 10_000, {1234, 5678, 9001}
    async with open_purgatory(store) as purgatory:
        await purgatory.list_pending()  # creates the schema before three processes race to
    logs = [(tmp_path / f"w{n}.log").open("w") for n in range(3)]
    workers = [start_worker(redis_url, names, store, f"w{n}", logs[n]) for n in range(3)]
    client = redis_asyncio.Redis.from_url(redis_url, decode_responses=True)
    resolved: list[str] = []
    try:
        ids = await fill(redis_url, names["stream"], total, poison=poison)
        async with open_purgatory(store) as purgatory:
            resolver = asyncio.ensure_future(resolve_as_they_appear(purgatory, resolved))
            try:
                async with asyncio.timeout(120):
                    while await client.xlen(names["sink"]) < 3_000:  # noqa: ASYNC110 - polled as a client would
                        await asyncio.sleep(0.05)
                workers[0].send_signal(signal.SIGKILL)  # mid-run: entries in flight, tokens half-done
                workers[0].wait(10)
                async with asyncio.timeout(150):
                    while True:
                        rows = await read_sink(redis_url, names["sink"])
                        done = {row["source_id"] for row in rows}
                        dead = await client.xlen(f"{names['stream']}:dead")
                        if len(done) >= total - len(poison) and dead >= len(poison):
                            break
                        await asyncio.sleep(0.2)
            finally:
                resolver.cancel()
                await asyncio.gather(resolver, return_exceptions=True)
            for live in workers[1:]:
                live.send_signal(signal.SIGTERM)
            assert [live.wait(30) for live in workers[1:]] == [0, 0]
            tokens = {token.id: token for token in [await purgatory.get(t) for t in resolved]}
        rows = await read_sink(redis_url, names["sink"])
        by_source: dict[str, list[dict[str, Any]]] = {}
        for row in rows:
            by_source.setdefault(row["source_id"], []).append(row)
        expected = {entry_id for n, entry_id in enumerate(ids) if n not in poison}
        assert set(by_source) == expected  # every input has an output, after deduplication by id
        assert all(len({r["doubled"] for r in outs}) == 1 for outs in by_source.values())
        parked_inputs = {entry_id for n, entry_id in enumerate(ids) if n % 10 == 0 and n not in poison}
        approved = {row["source_id"] for row in rows if row.get("approved") == "yes"}
        assert approved == parked_inputs
        resumed_tokens = [row["token"] for row in rows if "token" in row]
        assert sorted(resumed_tokens) == sorted(tokens)  # every token resumed exactly once
        assert all(token.status.value == "resolved" for token in tokens.values())
        assert await pending(redis_url, names["stream"], names["group"]) == 0
        dead = await client.xrange(f"{names['stream']}:dead")
        assert sorted(f["source_id"] for _, f in dead) == sorted(ids[n] for n in poison)
        duplicates = len(rows) - len(by_source)
        print(f"kill test: {len(rows)} outputs for {len(by_source)} inputs ({duplicates} duplicates), "
              f"{len(tokens)} tokens resumed once each, {len(dead)} dead-lettered")  # fmt: skip
    finally:
        await client.aclose()
        for process in workers:
            if process.poll() is None:
                process.kill()
                process.wait(10)
        for log in logs:
            log.close()


@pytest.mark.timeout(120)
async def test_sigterm_drains_every_entry_read_is_acknowledged_with_its_outcome(
    redis_url: str, names: dict[str, str], tmp_path: Path
) -> None:
    store = postgres_schema_url()
    ids = await fill(redis_url, names["stream"], 3_000)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTFLUX_")} | {"PYTHONUNBUFFERED": "1"}
    command = [
        sys.executable, "-m", "agentflux", "worker", "--agent", "worker.agents:SlowDoubler",
        "--source", redis_url, "--stream", names["stream"], "--group", names["group"], "--consumer", "solo",
        "--sink", names["sink"], "--store", store, "--concurrency", "32", "--batch", "64",
    ]  # fmt: skip
    client = redis_asyncio.Redis.from_url(redis_url, decode_responses=True)
    with (tmp_path / "solo.log").open("w") as log:
        process = spawn(command, env, log)
        try:
            async with asyncio.timeout(60):
                while await client.xlen(names["sink"]) < 300:  # noqa: ASYNC110 - polled as a client would
                    await asyncio.sleep(0.02)
            process.send_signal(signal.SIGTERM)
            assert process.wait(30) == 0
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(10)
    try:
        assert await pending(redis_url, names["stream"], names["group"]) == 0  # everything read was acked
        groups = await client.xinfo_groups(names["stream"])
        last = groups[0]["last-delivered-id"]
        read = [entry_id for entry_id in ids if _key(entry_id) <= _key(last)]
        assert 300 <= len(read) < len(ids)  # it stopped reading: the rest waits for the next worker
        written = {row["source_id"] for row in await read_sink(redis_url, names["sink"])}
        async with open_purgatory(store) as purgatory:
            parked = {t.original_event["id"] for t in await purgatory.list_pending()}
        assert written | parked == set(read)  # each entry read has its outcome: output or token
        assert not written & parked
        log_text = (tmp_path / "solo.log").read_text()
        assert "stopped:" in log_text, log_text
        assert "Traceback" not in log_text, log_text
    finally:
        await client.aclose()


def spawn(command: list[str], env: dict[str, str], log: Any) -> subprocess.Popen[Any]:
    return subprocess.Popen(command, cwd=TESTS, env=env, stdout=log, stderr=subprocess.STDOUT)


def _key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq)


@pytest.mark.timeout(60)
def test_a_worker_serves_its_metrics_and_refuses_a_bad_agent(redis_url: str, names: dict[str, str]) -> None:
    import socket
    import time
    import urllib.request

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTFLUX_")}
    base = [
        sys.executable, "-m", "agentflux", "worker", "--source", redis_url, "--stream", names["stream"],
        "--group", names["group"], "--sink", names["sink"], "--store", "memory://",
    ]  # fmt: skip
    bad = subprocess.run([*base, "--agent", "worker.agents:Nope"], cwd=TESTS, env=env, capture_output=True, text=True)
    assert bad.returncode == 1
    assert bad.stderr.strip() == "agentflux: error: worker.agents has no attribute 'Nope'"
    process = subprocess.Popen(
        [*base, "--agent", "worker.agents:Identity", "--metrics-port", str(port)],
        cwd=TESTS, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
                    body = response.read().decode()
                break
            except OSError:
                assert process.poll() is None, process.communicate()
                assert time.monotonic() < deadline
                time.sleep(0.05)
        assert "agentflux_" in body
        assert "worker.agents:Identity" in body  # the worker's flux, by its id
        process.send_signal(signal.SIGTERM)
        assert process.wait(20) == 0
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate()
