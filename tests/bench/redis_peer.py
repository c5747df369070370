"""Redis Streams with ``appendfsync always`` measured beside Strata in ``make bench``.

Issue 15's target: the standalone's end-to-end p99 at 5,000 msg/s at or below that of Redis
with ``appendfsync always`` (an fsync before every reply, one per event-loop pass: the fastest
fsync-durable peer measured on this machine, ``../shared/reference/peers-perf.md``), measured
in the same run. The workload is ``strata perf``'s: a producer paced at a fixed rate in ~1 ms
slices, pipelining ``XADD`` on one connection (every message is sent when due, replies come
back in order) and timing send → reply; a consumer in another process reading with
``XREADGROUP COUNT 500 BLOCK`` and acknowledging each batch with ``XACK``, timing send →
receive from the send time (``time.time_ns()``) in the payload's first 8 bytes.

``redis_always(tmp)`` starts ``redis-server`` (Debian's package, which ``make bench`` installs
through ``tools/bench/install-deps.sh``) on a free loopback port and stops it by its PID;
``run(port, size, rate, messages)`` returns ``{"produce": {...}, "consume": {...}}`` with the
keys of ``strata perf``'s JSON. ``python -m tests.bench.redis_peer produce|consume`` are the two
client processes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import socket
import struct
import subprocess
import sys
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.harness import free_port

STREAM = b"bench"
GROUP = b"bench"
START_TIMEOUT_S = 10.0
RUN_TIMEOUT_S = 300.0
IDLE_TIMEOUT_S = 10.0
READ_COUNT = 500
_TIMESTAMP = struct.Struct(">Q")


def command(*parts: bytes) -> bytes:
    """One command in RESP, the Redis protocol."""
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        out.append(b"$%d\r\n%s\r\n" % (len(part), part))
    return b"".join(out)


def _call(port: int, *parts: bytes) -> bytes:
    """Send one command and return its raw reply line (enough for PING and XGROUP)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(command(*parts))
        return sock.recv(4096)


@contextlib.contextmanager
def redis_always(tmp: Path) -> Iterator[int]:
    """A ``redis-server`` with AOF ``appendfsync always`` in ``tmp``; yields its port."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is missing: `make bench` installs it")
    tmp.mkdir(parents=True, exist_ok=True)
    port = free_port()
    process = subprocess.Popen(
        [
            binary,
            "--bind", "127.0.0.1",
            "--port", str(port),
            "--dir", str(tmp),
            "--appendonly", "yes",
            "--appendfsync", "always",
            "--save", "",
            "--daemonize", "no",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                if _call(port, b"PING").startswith(b"+PONG"):
                    break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start on port {port}")
            time.sleep(0.05)
        yield port
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _summary(latencies_us: list[int], messages: int, seconds: float, size: int) -> dict[str, Any]:
    ordered = sorted(latencies_us)

    def ms(fraction: float) -> float:
        if not ordered:
            return 0.0
        return round(ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] / 1000, 3)

    return {
        "messages": messages,
        "seconds": round(seconds, 3),
        "msg_per_s": round(messages / seconds, 1) if seconds else 0.0,
        "mb_per_s": round(messages * size / seconds / 1e6, 3) if seconds else 0.0,
        "p50_ms": ms(0.50),
        "p99_ms": ms(0.99),
        "p999_ms": ms(0.999),
        "max_ms": round(ordered[-1] / 1000, 3) if ordered else 0.0,
    }


async def produce(port: int, size: int, rate: int, messages: int) -> dict[str, Any]:
    """Pipelined XADDs paced at ``rate`` in ~1 ms slices; publish latency send → reply."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    # Per message in flight: its send time and its scheduled time (time.time_ns()).
    sent_ns: deque[tuple[int, int]] = deque()
    latencies_us: list[int] = []
    delays_us: list[int] = []  # how late each send was against its schedule
    from_schedule_us: list[int] = []
    filler = b"x" * max(0, size - _TIMESTAMP.size)

    async def read_replies() -> None:
        buffer = b""
        while len(latencies_us) < messages:
            data = await reader.read(65536)
            if not data:
                raise RuntimeError("redis closed the connection")
            buffer += data
            while True:
                end = buffer.find(b"\r\n")
                if end < 0:
                    break
                if buffer[:1] == b"-":
                    raise RuntimeError(f"XADD failed: {buffer[:end].decode()}")
                length = int(buffer[1:end])  # a bulk string: the new entry's id
                if len(buffer) < end + 2 + length + 2:
                    break
                buffer = buffer[end + 2 + length + 2 :]
                now_ns = time.time_ns()
                sent, scheduled = sent_ns.popleft()
                latencies_us.append((now_ns - sent) // 1000)
                from_schedule_us.append((now_ns - scheduled) // 1000)

    replies = asyncio.create_task(read_replies())
    started = time.monotonic()
    first_ns = time.time_ns()
    sent = 0
    while sent < messages:
        due = min(messages, int((time.monotonic() - started) * rate) + 1)
        while sent < due:
            now_ns = time.time_ns()
            scheduled_ns = first_ns + sent * 1_000_000_000 // rate
            delays_us.append(max(0, now_ns - scheduled_ns) // 1000)
            sent_ns.append((now_ns, min(now_ns, scheduled_ns)))
            writer.write(command(b"XADD", STREAM, b"*", b"d", _TIMESTAMP.pack(now_ns) + filler))
            sent += 1
        await writer.drain()
        next_due = started + sent / rate
        await asyncio.sleep(max(0.0, next_due - time.monotonic()))
        if replies.done():
            replies.result()  # raises what failed
    await asyncio.wait_for(replies, RUN_TIMEOUT_S)
    seconds = (time.time_ns() - first_ns) / 1e9
    writer.close()
    result = _summary(latencies_us, messages, seconds, size)
    # The keys strata perf adds for a paced run.
    delays, late = (
        _summary(delays_us, messages, seconds, size),
        _summary(from_schedule_us, messages, seconds, size),
    )
    for name in ("p50", "p99", "max"):
        result[f"publish_delay_{name}_ms"] = delays[f"{name}_ms"]
    for name in ("p50", "p99", "p999"):
        result[f"from_schedule_{name}_ms"] = late[f"{name}_ms"]
    return result


def consume(port: int, messages: int) -> dict[str, Any]:
    """XREADGROUP in batches of ``READ_COUNT``, XACK per batch; latency send → receive."""
    import redis  # the dev extra's client: parses XREADGROUP's nested replies

    client = redis.Redis(host="127.0.0.1", port=port)
    latencies_us: list[int] = []
    received = 0
    size = 0
    first_ns: int | None = None
    last_ns = 0
    idle_since = time.monotonic()
    while received < messages:
        # [[stream, [(id, {field: value}), ...]]] (redis-py's types do not say so).
        reply: Any = client.xreadgroup(
            GROUP.decode(), "c", {STREAM.decode(): ">"}, count=READ_COUNT, block=1000
        )
        if not reply:
            if time.monotonic() - idle_since > IDLE_TIMEOUT_S:
                break
            continue
        idle_since = time.monotonic()
        now_ns = time.time_ns()
        ids = []
        for _stream, entries in reply:
            for entry_id, fields in entries:
                data = fields[b"d"]
                sent_ns = _TIMESTAMP.unpack_from(data)[0]
                if first_ns is None:
                    first_ns = sent_ns
                latencies_us.append((now_ns - sent_ns) // 1000)
                size = len(data)
                ids.append(entry_id)
        client.xack(STREAM.decode(), GROUP.decode(), *ids)
        received += len(ids)
        last_ns = now_ns
    seconds = (last_ns - first_ns) / 1e9 if first_ns is not None else 0.0
    return _summary(latencies_us, received, seconds, size)


def _client(kind: str, port: int, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.bench.redis_peer", kind, "--port", str(port), *args],
        stdout=subprocess.PIPE,
        text=True,
    )


def _result(process: subprocess.Popen[str]) -> dict[str, Any]:
    out, _ = process.communicate(timeout=RUN_TIMEOUT_S)
    if process.returncode != 0:
        raise RuntimeError(f"redis bench client exited with {process.returncode}")
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def run(port: int, size: int, rate: int, messages: int) -> dict[str, Any]:
    """One producer and one consumer process on a fresh consumer group at the stream's end."""
    _call(port, b"DEL", STREAM)
    reply = _call(port, b"XGROUP", b"CREATE", STREAM, GROUP, b"$", b"MKSTREAM")
    if not reply.startswith(b"+OK"):
        raise RuntimeError(f"XGROUP CREATE failed: {reply!r}")
    consumer = _client("consume", port, "--messages", str(messages))
    producer = _client(
        "produce", port, "--size", str(size), "--rate", str(rate), "--messages", str(messages)
    )
    return {"produce": _result(producer), "consume": _result(consumer)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("kind", choices=("produce", "consume"))
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--messages", type=int, required=True)
    parser.add_argument("--size", type=int, default=100)
    parser.add_argument("--rate", type=int, default=5000)
    args = parser.parse_args()
    if args.kind == "produce":
        result = asyncio.run(produce(args.port, args.size, args.rate, args.messages))
    else:
        result = consume(args.port, args.messages)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
