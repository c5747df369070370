"""kill -9 a bookie process in the middle of adds: every acknowledged entry must survive.

A child process opens a Bookie (fsync on, small segments so that rolls happen), runs
concurrent writers and prints each acknowledged entry id. The test SIGKILLs it after some
hundreds of acknowledgements, reopens the directory and reads every acknowledged entry back.
Busy: eight writers keep the journal writing. Paced: one writer pausing between adds leaves
the journal idle, so it preallocates, and the kill leaves zeros after the newest data.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import pytest

from bookie.storage import Bookie, BookieStorageConfig

REPOSITORY = Path(__file__).resolve().parents[2]
LEDGER_ID = 1
KEY = b"kill9-key"
ACKS_BEFORE_KILL = 400

CHILD = """
import asyncio, sys, time
from pathlib import Path
from bookie.storage import Bookie, BookieStorageConfig

def payload(entry_id):
    return (b"%d|" % entry_id) * (200 + entry_id % 300)

async def main(data_dir, writers, pause_s):
    config = BookieStorageConfig(data_dir=Path(data_dir), journal_segment_size_bytes=64 * 1024)
    bookie = await Bookie.open(config)
    ids = iter(range(1_000_000))
    deadline = time.monotonic() + 60  # the test kills us long before

    async def writer():
        for entry_id in ids:
            if time.monotonic() > deadline:
                return
            await bookie.add_entry(1, entry_id, entry_id - 1, payload(entry_id), b"kill9-key")
            sys.stdout.write("%d\\n" % entry_id)
            sys.stdout.flush()
            if pause_s:
                await asyncio.sleep(pause_s)

    await asyncio.gather(*(writer() for _ in range(writers)))
    await bookie.close()

asyncio.run(main(sys.argv[1], int(sys.argv[2]), float(sys.argv[3])))
"""


def payload(entry_id: int) -> bytes:
    return (b"%d|" % entry_id) * (200 + entry_id % 300)


@pytest.mark.fault
@pytest.mark.parametrize(("writers", "pause_s"), [(8, 0.0), (1, 0.002)], ids=["busy", "paced"])
async def test_acknowledged_entries_survive_kill_9(
    tmp_path: Path, writers: int, pause_s: float
) -> None:
    data_dir = tmp_path / "bookie"
    environment = dict(os.environ, PYTHONPATH=str(REPOSITORY))
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CHILD,
        str(data_dir),
        str(writers),
        str(pause_s),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=REPOSITORY,
        env=environment,
    )
    assert child.stdout is not None
    acknowledged: list[int] = []
    try:
        async with asyncio.timeout(60):
            while len(acknowledged) < ACKS_BEFORE_KILL:
                line = await child.stdout.readline()
                if not line.endswith(b"\n"):
                    break  # the child ended early; its stderr is reported below
                acknowledged.append(int(line))
    finally:
        os.kill(child.pid, signal.SIGKILL)
        rest, errors = await child.communicate()
    assert len(acknowledged) >= ACKS_BEFORE_KILL, errors.decode(errors="replace")[-2000:]
    assert child.returncode == -signal.SIGKILL
    # Lines printed before the kill are acknowledgements too; a cut-off last line is not.
    acknowledged += [int(line) for line in rest.split(b"\n")[:-1]]

    bookie = await Bookie.open(BookieStorageConfig(data_dir=data_dir))
    try:
        state = await bookie.read_last_add_confirmed(LEDGER_ID)
        assert state.last_entry_id >= max(acknowledged)
        for entry_id in acknowledged:
            (entry,) = await bookie.read_entries(LEDGER_ID, entry_id, entry_id)
            assert entry.payload == payload(entry_id), entry_id
            assert entry.last_add_confirmed == entry_id - 1
        assert bookie.stats.corrupt_records_at_open == 0
        # The reopened bookie takes writes again.
        next_id = state.last_entry_id + 1
        await bookie.add_entry(LEDGER_ID, next_id, next_id - 1, b"after the crash", KEY)
    finally:
        await bookie.close()
