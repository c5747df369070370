"""The ``strata`` command: produce, consume, admin and perf, plus the server roles.

Every option also reads ``STRATA_<OPTION_NAME>`` (``--service-url`` → ``STRATA_SERVICE_URL``)
through ``strata.options.add_option``; the flag wins. ``--service-url`` defaults to
``localhost:6650`` and may list several brokers (``host:port,host:port``).

``strata standalone``, ``strata broker`` and ``strata bookie`` are not client commands: they
are handed, arguments and all, to the server package (see ``_run_server_role``), so the
client commands never import broker or bookie code.

Exit codes: 0 success, 1 an operation failed (one ``error: ...`` line on stderr, no
traceback), 2 bad usage, 130 interrupted where the interruption loses work.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import itertools
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from types import FrameType

from strata.client import (
    Client,
    ConsumerDeadLetterPolicy,
    ConsumerType,
    InitialPosition,
    MessageId,
    Result,
    StrataException,
    Timeout,
)
from strata.naming import InvalidNameError
from strata.options import add_option, add_tls_options, client_tls
from strata.perf import Pacer, add_perf_parsers
from strata.tokens_cli import (
    TokensCommandError,
    add_credential_options,
    add_tokens_parser,
    client_authentication,
)

DEFAULT_SERVICE_URL = "localhost:6650"
# strata consume takes (and prints) at most this many messages at a time.
CONSUME_CHUNK_MESSAGES = 1000

# Server roles and the module whose ``main(argv: list[str]) -> int`` runs each.
SERVER_ROLES: dict[str, str] = {
    "standalone": "broker.standalone",
    "broker": "broker.__main__",
    "bookie": "bookie.__main__",
    "initialize-cluster": "broker.initialize",
}


def _run_server_role(role: str, argv: list[str]) -> int:
    """Run a server role. This is the one place the CLI reaches a server package.

    The import is lazy and by name so that ``strata produce`` and ``import strata`` never
    load broker or bookie code (and the import rules of ``STYLE.md`` hold).
    """
    module_name = SERVER_ROLES[role]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and module_name.startswith(exc.name):
            print(f"error: 'strata {role}' is not available in this installation", file=sys.stderr)
            return 2
        raise
    role_main: Callable[[list[str]], int] | None = getattr(module, "main", None)
    if role_main is None:
        print(f"error: {module_name} has no main(argv)", file=sys.stderr)
        return 2
    return role_main(argv)


# ------------------------------------------------------------------------ the parser


def _common_client_options(
    parser: argparse.ArgumentParser, environ: Mapping[str, str] | None
) -> None:
    add_option(
        parser,
        "--service-url",
        default=DEFAULT_SERVICE_URL,
        help="broker addresses: host:port[,host:port...], optionally after grpc://, "
        "pulsar://, or grpcs:// / pulsar+ssl:// for TLS; any broker of a cluster will do, "
        "the next is tried if one is down",
        environ=environ,
    )
    add_option(
        parser,
        "--operation-timeout-seconds",
        type=float,
        default=30.0,
        help="limit for connecting, creating producers and consumers, and admin calls",
        environ=environ,
    )
    add_credential_options(parser, environ)
    add_tls_options(parser, environ)


def build_parser(environ: Mapping[str, str] | None = None) -> argparse.ArgumentParser:
    """The parser of every client command; ``environ`` stands in for ``os.environ`` in tests."""
    parser = argparse.ArgumentParser(
        prog="strata",
        description="Strata, a Pulsar-style messaging system: client commands and server roles.",
        epilog="Server roles: 'strata standalone|broker|bookie --help'. Every option also "
        "reads STRATA_<OPTION_NAME> from the environment.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    common = argparse.ArgumentParser(add_help=False)
    _common_client_options(common, environ)

    for role in SERVER_ROLES:
        commands.add_parser(role, help=f"run the {role} server (see 'strata {role} --help')")

    produce = commands.add_parser(
        "produce",
        parents=[common],
        help="publish messages",
        description="Publish MESSAGE COUNT times, or each line of stdin as one message. "
        "Exits 0 only once every message has a receipt.",
    )
    produce.add_argument("topic", metavar="TOPIC")
    add_option(
        produce, "-m", "--message", help="the message text (else: lines of stdin)", environ=environ
    )
    add_option(
        produce,
        "--file",
        help="send this file's bytes as one message (chunked when over the broker's limit)",
        environ=environ,
    )
    add_option(
        produce,
        "-n",
        "--count",
        type=int,
        default=1,
        help="how many times to send --message",
        environ=environ,
    )
    add_option(produce, "--key", help="partition key of every message", environ=environ)
    add_option(
        produce,
        "--rate",
        type=float,
        default=0.0,
        help="messages per second, 0 = as fast as possible",
        environ=environ,
    )
    add_option(
        produce,
        "--disable-batching",
        action="store_true",
        default=False,
        help="send each message as its own batch",
        environ=environ,
    )
    add_option(
        produce,
        "--deliver-after-ms",
        type=int,
        default=0,
        help="delayed delivery: Shared subscriptions get each message this much later "
        "(each is sent and receipted on its own)",
        environ=environ,
    )
    add_option(
        produce,
        "--producer-name",
        help="a stable producer name: messages are numbered in input order (with "
        "deduplication on, re-running the same command on the same input stores each once)",
        environ=environ,
    )
    add_option(
        produce,
        "--initial-sequence-id",
        type=int,
        default=None,
        help="sequence id of the first message (default 0; needs --producer-name)",
        environ=environ,
    )
    produce.set_defaults(handler=_produce)

    consume = commands.add_parser(
        "consume",
        parents=[common],
        help="receive, print and acknowledge messages",
        description="Print each message as one line (UTF-8, undecodable bytes replaced) and "
        "acknowledge it. Before exiting, the acknowledgements are made durable, so nothing "
        "printed is redelivered. Ctrl-C stops cleanly.",
    )
    consume.add_argument("topic", metavar="TOPIC")
    add_option(
        consume,
        "-s",
        "--subscription",
        required=False,
        help="subscription name (required)",
        environ=environ,
    )
    add_option(
        consume,
        "-t",
        "--type",
        choices=["exclusive", "shared", "failover", "key_shared"],
        default="exclusive",
        help="subscription type",
        environ=environ,
    )
    add_option(
        consume,
        "--ack-timeout-ms",
        type=int,
        default=0,
        help="redeliver what is not acknowledged within this long (0 = off; at least 1000)",
        environ=environ,
    )
    add_option(
        consume,
        "--max-redeliveries",
        type=int,
        default=0,
        help="after this many redeliveries a message goes to the dead-letter topic (0 = off)",
        environ=environ,
    )
    add_option(
        consume,
        "--dead-letter-topic",
        default="",
        help="the dead-letter topic (default TOPIC-SUBSCRIPTION-DLQ)",
        environ=environ,
    )
    add_option(
        consume,
        "--consumer-name",
        default="",
        help="this consumer's name (Failover chooses the active consumer by name)",
        environ=environ,
    )
    add_option(
        consume,
        "-n",
        "--count",
        type=int,
        default=1,
        help="stop after this many messages, 0 = no limit",
        environ=environ,
    )
    add_option(
        consume,
        "--initial-position",
        choices=["earliest", "latest"],
        default="latest",
        help="where a new subscription starts",
        environ=environ,
    )
    add_option(
        consume,
        "--timeout-seconds",
        type=float,
        default=0.0,
        help="stop after this long without a message, 0 = wait forever",
        environ=environ,
    )
    consume.set_defaults(handler=_consume)

    read = commands.add_parser(
        "read",
        parents=[common],
        help="print messages from a position, leaving no subscription behind",
        description="Print each message as one line with a reader (a non-durable "
        "subscription): nothing is acknowledged and nothing is left behind.",
    )
    read.add_argument("topic", metavar="TOPIC")
    add_option(
        read,
        "--start-message-id",
        default="earliest",
        help="earliest, latest, or LEDGER:ENTRY[:BATCH_INDEX] (read from the message after it)",
        environ=environ,
    )
    add_option(
        read,
        "-n",
        "--count",
        type=int,
        default=0,
        help="stop after this many messages, 0 = no limit",
        environ=environ,
    )
    add_option(
        read,
        "--timeout-seconds",
        type=float,
        default=1.0,
        help="stop after this long without a message, 0 = wait forever",
        environ=environ,
    )
    read.set_defaults(handler=_read)

    from strata.admin_cli import add_admin_parser

    add_admin_parser(commands, common, environ)
    add_perf_parsers(commands, common, environ)
    add_tokens_parser(commands, environ)
    return parser


# ----------------------------------------------------------------------- produce


def _lines(stream: Iterable[bytes]) -> Iterator[bytes]:
    for line in stream:
        if line.endswith(b"\n"):
            line = line[:-1]
            if line.endswith(b"\r"):
                line = line[:-1]
        yield line


def _produce(args: argparse.Namespace) -> int:
    if args.file is not None:
        if args.message is not None:
            raise _UsageError("give --message or --file, not both")
        try:
            payloads: Iterable[bytes] = itertools.repeat(Path(args.file).read_bytes(), args.count)
        except OSError as exc:
            raise _UsageError(f"--file {args.file}: {exc.strerror}") from None
    elif args.message is not None:
        if args.count < 0:
            raise _UsageError("--count must not be negative")
        payloads = itertools.repeat(args.message.encode(), args.count)
    else:
        payloads = _lines(sys.stdin.buffer)
    if args.rate < 0:
        raise _UsageError("--rate must not be negative")
    if args.deliver_after_ms < 0:
        raise _UsageError("--deliver-after-ms must not be negative")
    delay = datetime.timedelta(milliseconds=args.deliver_after_ms)
    if args.initial_sequence_id is not None and args.producer_name is None:
        raise _UsageError("--initial-sequence-id needs --producer-name")
    first_sequence_id = args.initial_sequence_id or 0
    if not 0 <= first_sequence_id < 1 << 63:
        raise _UsageError("--initial-sequence-id must be within 0..2^63-1")
    # With a producer name, message i of the input gets sequence id first + i.
    numbered = args.producer_name is not None
    failures: list[Result] = []
    duplicates = 0

    def on_receipt(result: Result, message_id: MessageId | None) -> None:
        nonlocal duplicates
        if result is not Result.Ok:
            failures.append(result)
        elif message_id is not None and message_id.ledger_id() == -1:
            duplicates += 1  # stored by an earlier run (deduplication)

    started = time.monotonic()
    sent = 0
    with Client(
        args.service_url,
        operation_timeout_seconds=args.operation_timeout_seconds,
        authentication=client_authentication(args),
        **client_tls(args),
    ) as client:
        producer = client.create_producer(
            args.topic,
            producer_name=args.producer_name,
            batching_enabled=not args.disable_batching,
            chunking_enabled=args.file is not None,
            block_if_queue_full=True,
        )
        pacer = Pacer(args.rate) if args.rate else None
        iterator = iter(payloads)
        while True:
            allowed = pacer.wait_sync() if pacer is not None else 1000
            chunk = list(itertools.islice(iterator, allowed))
            for index, payload in enumerate(chunk, sent):
                sequence_id = first_sequence_id + index if numbered else None
                if delay:
                    message_id = producer.send(
                        payload,
                        partition_key=args.key,
                        deliver_after=delay,
                        sequence_id=sequence_id,
                    )
                    on_receipt(Result.Ok, message_id)
                else:
                    producer.send_async(
                        payload, on_receipt, partition_key=args.key, sequence_id=sequence_id
                    )
            sent += len(chunk)
            if pacer is not None:
                pacer.sent(len(chunk))
            if len(chunk) < allowed:
                break
        producer.flush()
        topic = producer.topic()
    if failures:
        print(
            f"error: {len(failures)} of {sent} messages failed ({failures[0].value})",
            file=sys.stderr,
        )
        return 1
    elapsed_s = time.monotonic() - started
    stored_before = f" ({duplicates} stored before, not again)" if duplicates else ""
    print(
        f"produced {sent} messages to {topic} in {elapsed_s:.2f} s{stored_before}",
        file=sys.stderr,
    )
    return 0


# ----------------------------------------------------------------------- consume


def parse_message_id(text: str) -> MessageId:
    """``earliest``, ``latest`` or ``LEDGER:ENTRY[:BATCH_INDEX]``."""
    if text == "earliest":
        return MessageId.earliest
    if text == "latest":
        return MessageId.latest
    parts = text.split(":")
    if len(parts) not in (2, 3) or not all(p.isdigit() for p in parts[:2]):
        raise _UsageError(
            f"--start-message-id must be earliest, latest or LEDGER:ENTRY[:BATCH_INDEX], "
            f"got {text[:50]!r}"
        )
    batch_index = int(parts[2]) if len(parts) == 3 and parts[2].lstrip("-").isdigit() else -1
    return MessageId(int(parts[0]), int(parts[1]), batch_index)


def _read(args: argparse.Namespace) -> int:
    if args.count < 0 or args.timeout_seconds < 0:
        raise _UsageError("--count and --timeout-seconds must not be negative")
    start = parse_message_id(args.start_message_id)
    timeout_ms = int(args.timeout_seconds * 1000) or None
    read = 0
    with Client(
        args.service_url,
        operation_timeout_seconds=args.operation_timeout_seconds,
        authentication=client_authentication(args),
        **client_tls(args),
    ) as client:
        reader = client.create_reader(args.topic, start)
        try:
            while args.count == 0 or read < args.count:
                try:
                    message = reader.read_next(timeout_millis=timeout_ms)
                except Timeout:
                    break
                print(message.data().decode("utf-8", errors="replace"), flush=True)
                read += 1
        except KeyboardInterrupt:
            pass
        reader.close()
    print(f"read {read} messages from {args.topic}", file=sys.stderr)
    return 0


def _consume(args: argparse.Namespace) -> int:
    if not args.subscription:
        raise _UsageError("consume needs a subscription: -s/--subscription NAME")
    if args.count < 0 or args.timeout_seconds < 0:
        raise _UsageError("--count and --timeout-seconds must not be negative")
    consumer_type = {
        "exclusive": ConsumerType.Exclusive,
        "shared": ConsumerType.Shared,
        "failover": ConsumerType.Failover,
        "key_shared": ConsumerType.KeyShared,
    }[args.type]
    position = (
        InitialPosition.Earliest if args.initial_position == "earliest" else InitialPosition.Latest
    )
    timeout_ms = int(args.timeout_seconds * 1000) or None
    out = sys.stdout
    received = 0
    started = time.monotonic()
    with Client(
        args.service_url,
        operation_timeout_seconds=args.operation_timeout_seconds,
        authentication=client_authentication(args),
        **client_tls(args),
    ) as client:
        consumer = client.subscribe(
            args.topic,
            args.subscription,
            consumer_type=consumer_type,
            initial_position=position,
            consumer_name=args.consumer_name or None,
            unacked_messages_timeout_ms=args.ack_timeout_ms or None,
            dead_letter_policy=(
                ConsumerDeadLetterPolicy(
                    args.max_redeliveries, dead_letter_topic=args.dead_letter_topic or None
                )
                if args.max_redeliveries
                else None
            ),
        )
        try:
            while args.count == 0 or received < args.count:
                wanted = CONSUME_CHUNK_MESSAGES
                if args.count:
                    wanted = min(wanted, args.count - received)
                try:
                    messages = consumer.receive_many(wanted, timeout_millis=timeout_ms)
                except Timeout:
                    break
                # One write and flush per chunk: a syscall per line would cost more than
                # the rest of the consumer together.
                out.write(
                    "".join(m.data().decode("utf-8", errors="replace") + "\n" for m in messages)
                )
                out.flush()
                for message in messages:
                    consumer.acknowledge(message)
                received += len(messages)
        except KeyboardInterrupt:
            pass  # stop cleanly: what was printed is acknowledged below
        # Durable before exit: a broker crash after this never redelivers what was printed.
        consumer.flush_acknowledgements(wait_durable=True)
        topic = consumer.topic()
    elapsed_s = time.monotonic() - started
    print(f"consumed {received} messages from {topic} in {elapsed_s:.2f} s", file=sys.stderr)
    return 0


# -------------------------------------------------------------------------- main


class _UsageError(Exception):
    """A bad combination of options, found after parsing."""


def _raise_keyboard_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``strata`` command with ``argv`` (default ``sys.argv[1:]``); return the exit code."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments and arguments[0] in SERVER_ROLES:
        return _run_server_role(arguments[0], arguments[1:])
    parser = build_parser()
    args = parser.parse_args(arguments)
    handler: Callable[[argparse.Namespace], int] | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # SIGTERM stops a command the way Ctrl-C does, so that consume flushes its acks.
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    try:
        return handler(args)
    except _UsageError as exc:
        parser.error(str(exc))
    except TokensCommandError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except StrataException as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except InvalidNameError as exc:
        print(f"error: INVALID_ARGUMENT: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader of stdout went away (`strata consume ... | head`): not an error. Point
        # stdout at /dev/null so that the interpreter's final flush does not fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return 1  # unreachable: parser.error exits
