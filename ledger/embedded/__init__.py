"""The embedded engine: TigerBeetle's state machine in-process, with a durable journal."""

from ledger.embedded.engine import EmbeddedClientAsync, EmbeddedClientSync, EmbeddedEngine
from ledger.embedded.journal import DataDirectoryLocked, JournalClosed, JournalCorrupt

__all__ = [
    "DataDirectoryLocked",
    "EmbeddedClientAsync",
    "EmbeddedClientSync",
    "EmbeddedEngine",
    "JournalClosed",
    "JournalCorrupt",
]
