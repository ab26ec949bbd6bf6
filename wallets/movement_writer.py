"""The movement writer process: `python -m wallets.movement_writer`, started by a
`MovementSink(..., separate_process=True)` (the server's), writes the batches it is handed to
Postgres.

Its stdin carries frames of [u64 little-endian length][payload]: a payload is a marshal of one
batch's rows as plain tuples (`encode`); an empty frame, or the end of stdin, ends it. For each
batch it answers one frame on stdout: b"K" and the number of new rows, or b"E" and why it
failed (the sink then sends the batch again: rows are keyed by operation id, so nothing is
written twice). Where to connect comes in the environment (`TARGET_ENV`, JSON), never on the
command line. Its log goes to stderr, which it shares with the server.
"""

from __future__ import annotations

import asyncio
import json
import logging
import marshal
import os
import signal
import sys
from collections.abc import Sequence
from typing import IO, Any

import psycopg

from ledger.repositories.movements import MovementKind, NewMovement, insert_movements

TARGET_ENV = "CREDIT_LEDGER_MOVEMENT_TARGET"

_logger = logging.getLogger("wallets.movement_writer")


def encode(batch: Sequence[NewMovement]) -> bytes:
    return marshal.dumps(
        [
            (
                m.operation_id,
                m.kind.value,
                m.wallet_id,
                m.resource_id,
                m.credit_type_id,
                m.amount,
                m.effective_at_ns,
                m.dimensions,
            )
            for m in batch
        ]
    )


def decode(payload: bytes) -> list[NewMovement]:
    return [
        NewMovement(
            operation_id=op,
            kind=MovementKind(kind),
            wallet_id=wallet,
            resource_id=resource,
            credit_type_id=credit_type,
            amount=amount,
            effective_at_ns=at_ns,
            dimensions=dimensions,
        )
        for op, kind, wallet, resource, credit_type, amount, at_ns, dimensions in marshal.loads(
            payload
        )
    ]


def send_frame(stream: IO[bytes], payload: bytes) -> None:
    stream.write(len(payload).to_bytes(8, "little") + payload)
    stream.flush()


def read_frame(stream: IO[bytes]) -> bytes | None:
    """The next frame's payload, or None at the end of the stream."""
    head = stream.read(8)
    if len(head) < 8:
        return None
    length = int.from_bytes(head, "little")
    payload = stream.read(length)
    if len(payload) < length:
        return None
    return payload


async def serve(target: dict[str, Any], stdin: IO[bytes], stdout: IO[bytes]) -> None:
    conn: psycopg.AsyncConnection[tuple[object, ...]] | None = None
    try:
        while True:
            payload = read_frame(stdin)  # blocking: this process has nothing else to do
            if not payload:
                return
            try:
                if conn is None or conn.closed:
                    conn = await psycopg.AsyncConnection.connect(
                        target["conninfo"], **target["kwargs"]
                    )
                inserted = await insert_movements(conn, decode(payload))
                answer = b"K" + inserted.to_bytes(8, "little")
            except psycopg.Error as error:
                _logger.warning("writing movements failed: %s", error)
                if conn is not None:
                    await conn.close()
                conn = None
                answer = b"E" + str(error).encode()[:2000]
            send_frame(stdout, answer)
    finally:
        if conn is not None:
            await conn.close()


def main() -> None:
    # A Ctrl-C reaches the whole process group: the server stops first, then ends this process
    # by closing its stdin (as the engine process does, ledger.embedded.process).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s - movement writer - %(message)s")
    target = json.loads(os.environ[TARGET_ENV])
    asyncio.run(serve(target, sys.stdin.buffer, sys.stdout.buffer))


if __name__ == "__main__":
    main()
