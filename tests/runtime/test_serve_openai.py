"""`dualpath serve` as a user runs it: a real cluster behind HTTP, driven by the official
`openai` client. A second turn reuses KV from the store and answers exactly like a cold
server started with `--no-kv-store`."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from openai import OpenAI

pytestmark = pytest.mark.timeout(300)

SYSTEM = "You are a terse assistant. " * 12  # > one 64-token block of chat prefix


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[object]:
    procs: list[subprocess.Popen[str]] = []

    def start(*extra: str) -> OpenAI:
        cmd = [sys.executable, "-m", "dualpath", "serve", "--model", "tiny", "--port", "0",
               "--store-path", str(tmp_path / f"store{len(procs)}"), *extra]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
        procs.append(proc)
        deadline = time.monotonic() + 240
        assert proc.stdout is not None
        for line in proc.stdout:
            m = re.search(r"listening on (http://\S+)", line)
            if m:
                return OpenAI(base_url=m.group(1) + "/v1", api_key="unused", max_retries=0)
            if time.monotonic() > deadline:
                break
        raise AssertionError(f"server did not start (exit {proc.poll()})")

    yield start
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)


def _conversation(client: OpenAI) -> list[tuple[str, int]]:
    """Two chat turns and two completions; (text, cached_tokens) of each."""
    out = []
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "hi"}]
    for turn in range(2):
        r = client.chat.completions.create(model="tiny", messages=messages,  # type: ignore[arg-type]
                                           max_tokens=12, temperature=0)
        text = r.choices[0].message.content or ""
        assert r.usage is not None and r.usage.prompt_tokens_details is not None
        out.append((text, r.usage.prompt_tokens_details.cached_tokens or 0))
        messages += [{"role": "assistant", "content": text},
                     {"role": "user", "content": f"and {turn}?"}]
    prompt = SYSTEM + "Once upon a time"
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model="tiny", prompt=prompt, max_tokens=10, temperature=0, stream=True) if c.choices)
    whole = client.completions.create(model="tiny", prompt=prompt, max_tokens=10, temperature=0)
    assert whole.choices[0].text == streamed
    out.append((streamed, 0))
    return out


def test_openai_client_against_a_real_cluster(serve) -> None:  # type: ignore[no-untyped-def]
    warm = _conversation(serve())
    cold = _conversation(serve("--no-kv-store"))
    assert [t for t, _ in warm] == [t for t, _ in cold]
    assert warm[0][1] == 0 and warm[1][1] > 0  # turn 2 loaded turn 1's KV from the store
    assert all(c == 0 for _, c in cold)
