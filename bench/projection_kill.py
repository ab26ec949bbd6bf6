"""SIGKILL of the server process, or of its engine or projection feed process alone, in a loop
under mixed load; then the projection in Postgres against what the service acknowledged (issue
10, "Dimensions are never lost"). Not a test: `tests/api/test_projection_kill.py` runs the same
loop at a small scale.

    python -m bench.projection_kill                   # 12 kills, 6 workers, 3 s of load each
    python -m bench.projection_kill --kills 24 --workers 8 --load-s 5 --keep
    python -m bench.projection_kill --late-settles 0  # no settle after a reservation's timeout

`credit-ledger serve` runs on a data directory of its own (embedded engine and Postgres). Worker
threads send single debits, batches of debits, reservations (settled in part, in full, for
nothing or for more than they hold under a random overage policy; released; or left to time out
after 1 s, and some of those settled after it), and usage refunds, each with an idempotency key
of its own and random dimensions (a few names; values repeated, new each time, empty, long,
non-ASCII; up to 16). A call that fails with a transport error or a 503 is sent again, same key
and body, until it is acknowledged: so what the engine applied is what was acknowledged. A
settle refused with 402 is counted, and its reservation resolved again later. Meanwhile, in
turn: the server process is killed (kill -9; its engine and feed processes end with it) and
started again on the same data directory and port; only the engine process is killed (the
server replaces it); only the projection feed process is killed (the server starts another).

Once the load has stopped and the projection has caught up (its state in Postgres is complete
through the last acknowledgement and every due timeout), every acknowledged operation must be in
`ledger_entries` with exactly its amounts, the wallet that spent and the dimensions it was sent
with, and nothing else may be there: no spend entry of an operation that was not acknowledged,
no entry twice. The usage rollups must add up per dimension set, and the engine (the wallets'
`consumed`) must agree. Exit status 0 when all of that holds.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TextIO

import httpx
import psycopg

CLI: Final = str(Path(sys.executable).parent / "credit-ledger")
CODE: Final = "kill"  # the credit type
READY_S_MAX: Final = 60.0  # a service that takes longer to come back is a failure
CALL_S_MAX: Final = 90.0  # how long one operation may take to be acknowledged, retries included
CONVERGE_S_MAX: Final = 60.0  # how long the projection may take to catch up, once idle
LOOK_AGAIN_S: Final = 3.0  # how long a comparison that differs is tried again, once caught up
RETRY_PAUSE_S: Final = 0.05
SHORT_TIMEOUT_S: Final = 1  # reservations left to time out
LONG_TIMEOUT_S: Final = 600  # reservations settled or released (outlives any restart)
BATCH_ITEMS: Final = (2, 20)
LATE_SETTLES: Final = 0.3  # of the reservations left to time out, settled after it (default)
LATE_S: Final = 0.5  # how long after the timeout

# Dimensions: a few names; values drawn from small sets (repeated), made up (new each time), and
# the edges of what a caller may send (limits: 16 names, names of 64 characters, values of 256).
FEATURES: Final = ("chat", "embed", "search", "rerank", "vision")
MODELS: Final = ("gpt-x", "claude-y", "llama-z", "mistral-w")
EDGE_DIMENSIONS: Final[tuple[dict[str, str], ...]] = (
    {"n" * 64: "v" * 256},
    {f"d{i:02}": f"value {i}" for i in range(16)},
    {"feature": "", "model": "ünïcødé ✓ 模型"},
    {"path": "a/b c\"d'e\\f", "emoji": "🙂"},
)


# -- the service ---------------------------------------------------------------------------------


@dataclass
class Kill:
    """One SIGKILL: of the server process (`server`), of its engine process (`engine`) or of
    its projection feed process (`feed`)."""

    target: str
    at_s: float  # since the run started
    ready_s: float = 0.0  # from the kill to ready again (a new server, engine or feed)
    caught_up_s: float = 0.0  # from the kill to a projection complete through the kill
    # A server kill: its engine and feed processes ended with it (by themselves).
    children_ended: bool = True


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def children(parent: int, marker: str) -> list[int]:
    """The running processes whose parent is `parent` and whose command line has `marker`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == parent and fields[0] != "Z" and marker in command:
            found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


ENGINE: Final = "ledger.embedded"  # in the command line of the engine process
FEED: Final = "projection feed"  # of the projection's feed process


class Service:
    """`credit-ledger serve` on `data_dir` and a fixed port, started again after each kill;
    the projection's state read from its Postgres (`complete_ns`)."""

    def __init__(self, data_dir: Path, serve_args: Sequence[str] = ()) -> None:
        self.data_dir = data_dir
        self.serve_args = list(serve_args)
        self.env = {**os.environ, "CREDIT_LEDGER_DATA_DIR": str(data_dir)}
        self.env.pop("TB_ADDRESSES", None)  # the embedded engine, and its Postgres
        self.env.pop("DATABASE_URL", None)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.key = self._create_key()
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.conninfo = ""  # the embedded Postgres, once `start` has joined it
        self.feed_beside = False  # serve feeds the projection from a process of its own

    def _create_key(self) -> str:
        scopes = ["--scope", "admin", "--scope", "runtime", "--scope", "finance"]
        created = subprocess.run(
            [CLI, "keys", "create", "--name", "kill-loop", *scopes],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert created.returncode == 0, created.stderr
        return created.stdout.strip()

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def log_tail(self, lines: int = 40) -> str:
        log = self.data_dir / f"serve-{self.starts}.log"
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])

    def start(self) -> None:
        self.starts += 1
        with (self.data_dir / f"serve-{self.starts}.log").open("wb") as output:
            self.process = subprocess.Popen(
                [CLI, "serve", "--port", str(self.port), *self.serve_args],
                env=self.env,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.wait_ready(time.monotonic())
        if self.starts == 1:
            from ledger import db

            # Joined by this process too, it runs until `stop` lets go of it.
            self.conninfo = db.start_embedded_postgres(self.data_dir / db.EMBEDDED_DIR_NAME)
            deadline = time.monotonic() + READY_S_MAX
            while not self.feed_pid() and time.monotonic() < deadline:
                time.sleep(0.05)
            self.feed_beside = self.feed_pid() is not None

    def ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def wait_ready(self, since: float, engine_not: int | None = None) -> float:
        """Waits for /readyz (and, with `engine_not`, for an engine process other than that
        one); the seconds since `since`."""
        while time.monotonic() - since < READY_S_MAX:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"serve exited with {self.process.returncode}:\n{self.log_tail()}"
                )
            engine = self.engine_pid()
            if engine is not None and engine != engine_not and self.ready():
                return time.monotonic() - since
            time.sleep(0.02)
        raise RuntimeError(f"serve was not ready in {READY_S_MAX} s:\n{self.log_tail()}")

    def engine_pid(self) -> int | None:
        found = children(self.pid, ENGINE)
        return found[0] if len(found) == 1 else None

    def feed_pid(self) -> int | None:
        found = children(self.pid, FEED)
        return found[0] if len(found) == 1 else None

    def kill_server(self, kill: Kill) -> None:
        children = [pid for pid in (self.engine_pid(), self.feed_pid()) if pid is not None]
        assert self.process is not None and children
        since = time.monotonic()
        os.kill(self.pid, signal.SIGKILL)
        self.process.wait()
        # The engine ends when its socket closes, and the feed when its standard input does,
        # however the server ended; the journal's lock keeps a new engine out while one lives.
        while any(map(_alive, children)) and time.monotonic() - since < 10:
            time.sleep(0.01)
        kill.children_ended = not any(map(_alive, children))
        for pid in filter(_alive, children):
            os.kill(pid, signal.SIGKILL)
        self.start()
        kill.ready_s = time.monotonic() - since

    def kill_engine(self, kill: Kill) -> None:
        engine = self.engine_pid()
        assert engine is not None
        since = time.monotonic()
        os.kill(engine, signal.SIGKILL)
        kill.ready_s = self.wait_ready(since, engine_not=engine)

    def kill_feed(self, kill: Kill) -> None:
        """SIGKILL of the feed process; ready once the server has started another."""
        feed = self.feed_pid()
        assert feed is not None
        since = time.monotonic()
        os.kill(feed, signal.SIGKILL)
        while self.feed_pid() in (None, feed):
            if time.monotonic() - since > READY_S_MAX:
                raise RuntimeError(f"no feed process again in {READY_S_MAX} s")
            time.sleep(0.02)
        kill.ready_s = time.monotonic() - since

    def kill_postgres(self, kill: Kill) -> None:
        """SIGKILL of one Postgres backend: the postmaster then ends every other backend and
        recovers from its log (as after a crash), while the server and the feed reconnect."""
        from ledger import db

        pid_file = self.data_dir / db.EMBEDDED_DIR_NAME / "postmaster.pid"
        postmaster = int(pid_file.read_text().split()[0])
        backends = children(postmaster, "[local]")
        assert backends, "no Postgres backend to kill"
        since = time.monotonic()
        os.kill(backends[0], signal.SIGKILL)
        time.sleep(0.2)  # the postmaster notices, and ends the others
        kill.ready_s = self.wait_ready(since)

    def complete(self, through_ns: int) -> bool:
        """Whether the projection is complete through the engine time `through_ns`: its
        watermark, or the time the leading feed last found nothing newer, is past it, and no
        pending leg it knows of has timed out by then without its timeout entry (the feed
        writes those once its watermark passes them: ledger/README.md, "The projection")."""
        with psycopg.connect(self.conninfo, autocommit=True) as conn:
            row = conn.execute(
                "SELECT greatest(watermark_ts, caught_up_ns), (SELECT count(*) FROM"
                " projection_pending WHERE expires_at_ns <= %s) FROM projection_state",
                (through_ns,),
            ).fetchone()
        assert row is not None
        return int(row[0]) >= through_ns and int(row[1]) == 0

    def wait_complete(self, through_ns: int, limit_s: float = CONVERGE_S_MAX) -> float:
        """Waits until the projection is complete through the engine time `through_ns`; the
        seconds it took."""
        since = time.monotonic()
        while not self.complete(through_ns):
            if time.monotonic() - since > limit_s:
                raise RuntimeError(f"the projection did not catch up in {limit_s} s")
            time.sleep(0.02)
        return time.monotonic() - since

    def stop(self) -> int:
        """SIGTERM; serve's exit code. Lets go of the embedded Postgres, which then stops."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=60)
        self.release()
        return code

    def release(self) -> None:
        if self.conninfo:
            from ledger import db

            db.stop_embedded_postgres(self.data_dir / db.EMBEDDED_DIR_NAME)
            self.conninfo = ""


# -- what was acknowledged -----------------------------------------------------------------------


@dataclass
class Spend:
    """An acknowledged debit or reservation, and what became of it."""

    kind: str  # debit | reservation
    key: str
    amount: int
    dimensions: dict[str, str] | None
    wallet: str  # the wallet of the resource it was sent for: the one that spent
    budgeted: bool  # a budget is on its resource's path
    refunded: int = 0  # debits: given back by usage refunds
    # Reservations: held | settle | release | timeout | fallback (settled after its timeout:
    # collected by a direct debit).
    outcome: str = "held"
    resolution_id: str = ""  # the settle's or release's operation
    posted: int = 0  # a settle: what it posted of the reservation
    collected: int = 0  # a settle: what it collected beyond the reservation, or by a fallback


@dataclass
class Book:
    """Every acknowledged operation, by operation id; shared by the workers."""

    spends: dict[str, Spend] = field(default_factory=dict)
    resolutions: dict[str, str] = field(default_factory=dict)  # settle/release id -> reservation
    sent: Counter[str] = field(default_factory=Counter)  # acknowledged operations by kind
    retried: Counter[str] = field(default_factory=Counter)  # attempts sent again, by cause
    anomalies: list[str] = field(default_factory=list)
    refused: Counter[str] = field(default_factory=Counter)  # settles refused (402), by request
    # Calls sent again whose answer was a replay: an earlier attempt had been applied, its
    # answer lost to the kill.
    replayed: int = 0
    last_ack_ns: int = 0
    last_expiry_ns: int = 0  # when the last short reservation times out
    lock: threading.Lock = field(default_factory=threading.Lock)

    def acknowledged(self, kind: str, n: int = 1) -> None:
        with self.lock:
            self.sent[kind] += n
            self.last_ack_ns = max(self.last_ack_ns, time.time_ns())


class Unacknowledged(Exception):
    """A call answered with something other than success, unavailability or a transport error;
    or never acknowledged in `CALL_S_MAX`."""


def _dimensions(rng: random.Random) -> dict[str, str] | None:
    roll = rng.random()
    if roll < 0.10:
        return None
    if roll < 0.13:
        return {}
    if roll < 0.17:
        return dict(rng.choice(EDGE_DIMENSIONS))
    out = {"feature": rng.choice(FEATURES)}
    if rng.random() < 0.7:
        out["model"] = rng.choice(MODELS)
    if rng.random() < 0.5:
        out["session"] = f"s-{rng.getrandbits(48):012x}"  # new each time
    if rng.random() < 0.4:
        out["user"] = f"user-{rng.randrange(40)}"
    return out


@dataclass(frozen=True)
class World:
    """What the load spends on: resources by name, which are under the budget, the wallets."""

    resources: dict[str, str]
    budgeted: frozenset[str]
    wallets: dict[str, str]  # by the name of their resource (and "subscription")


class Worker:
    """One thread of load: its own client, random generator, keys and open reservations."""

    def __init__(
        self, n: int, service: Service, world: World, book: Book, settings: Settings
    ) -> None:
        self.n = n
        self.late_settles = settings.late_settles
        self.url = service.url
        self.auth = {"Authorization": f"Bearer {service.key}"}
        self.world = world
        self.book = book
        self.rng = random.Random(settings.seed * 1000 + n)
        self.run = uuid.UUID(int=self.rng.getrandbits(128)).hex[:8]
        self.count = 0
        self.open: list[str] = []  # reservations this worker will settle or release
        # Reservations left to time out that it settles after their timeout, and when.
        self.late: list[tuple[float, str]] = []
        self.debits: list[str] = []  # debits it may refund
        self.attempts = 0  # of the last call

    def key(self, what: str) -> str:
        self.count += 1
        return f"{what}-{self.run}-{self.n}-{self.count}"

    def call(
        self, http: httpx.Client, path: str, body: Any, key: str | None, *, refusable: bool = False
    ) -> Any:
        """Sends until acknowledged (2xx): the same key and body again after a transport error
        or a 503 (or a 500, an anomaly). `refusable`: a 402 is an answer too (None). Anything
        else is an anomaly that ends the worker."""
        headers = {"Idempotency-Key": key} if key else {}
        since = time.monotonic()
        self.attempts = 0
        while time.monotonic() - since < CALL_S_MAX:
            self.attempts += 1
            try:
                r = http.post(path, json=body, headers=headers)
            except httpx.TransportError as error:
                self._retry(type(error).__name__)
                continue
            if r.status_code == 503:
                self._retry(f"503 {r.json().get('code', '')}")
                continue
            if r.status_code == 500:
                # A fault, told as one; sent again all the same, so that what the engine
                # applied stays what was acknowledged (its outcome is unknown).
                with self.book.lock:
                    self.book.anomalies.append(f"{path} {key}: 500 {r.text[:200]}")
                self._retry("500")
                continue
            if refusable and r.status_code == 402:
                return None
            if r.status_code not in (200, 201):
                raise Unacknowledged(f"{path} {key}: {r.status_code} {r.text}")
            if self.attempts > 1 and r.headers.get("idempotency-hit") == "true":
                with self.book.lock:  # an attempt the kill cut short had been applied
                    self.book.replayed += 1
            return r.json()
        raise Unacknowledged(f"{path} {key}: not acknowledged in {CALL_S_MAX} s")

    def _retry(self, cause: str) -> None:
        with self.book.lock:
            self.book.retried[cause] += 1
        time.sleep(RETRY_PAUSE_S)

    def loop(self, stop: threading.Event) -> None:
        try:
            with httpx.Client(base_url=self.url, headers=self.auth, timeout=10) as http:
                while not stop.is_set():
                    self.one(http)
                while self.open:  # everything this worker reserved is settled or released
                    self.resolve(http, self.open.pop())
                for due, reservation in self.late:
                    time.sleep(max(0.0, due - time.monotonic()))
                    self.settle(http, reservation, late=True)
        except BaseException as error:
            with self.book.lock:
                self.book.anomalies.append(f"worker {self.n}: {error!r}")

    def one(self, http: httpx.Client) -> None:
        if self.late and self.late[0][0] <= time.monotonic():
            self.settle(http, self.late.pop(0)[1], late=True)
            return
        roll = self.rng.random()
        if roll < 0.35:
            self.debit(http)
        elif roll < 0.50:
            self.batch(http)
        elif roll < 0.70 or (roll < 0.80 and not self.open):
            self.reserve(http, LONG_TIMEOUT_S)
        elif roll < 0.80:
            self.resolve(http, self.open.pop(self.rng.randrange(len(self.open))))
        elif roll < 0.92:
            self.reserve(http, SHORT_TIMEOUT_S)
        elif self.debits:
            self.refund(http, self.rng.choice(self.debits))

    def _spend_body(self) -> tuple[dict[str, Any], str, dict[str, str] | None]:
        name = self.rng.choice(sorted(self.world.resources))
        dimensions = _dimensions(self.rng)
        body: dict[str, Any] = {
            "credit_type": CODE,
            "resource_id": self.world.resources[name],
            "amount": self.rng.randint(1, 50),
        }
        if dimensions is not None:
            body["dimensions"] = dimensions
        return body, name, dimensions

    def debit(self, http: httpx.Client) -> None:
        body, name, dimensions = self._spend_body()
        key = self.key("debit")
        out = self.call(http, "/v1/debits", body, key)
        self._record_debit(out, key, body, name, dimensions)
        self.book.acknowledged("debit")

    def _record_debit(
        self,
        out: Mapping[str, Any],
        key: str,
        body: Mapping[str, Any],
        name: str,
        dimensions: dict[str, str] | None,
    ) -> None:
        if out["amount"] != body["amount"]:
            raise Unacknowledged(f"debit {key} answered {out['amount']}, not {body['amount']}")
        spend = Spend(
            "debit",
            key,
            body["amount"],
            dimensions,
            self.world.wallets[name],
            name in self.world.budgeted,
        )
        with self.book.lock:
            self.book.spends[out["id"]] = spend
        self.debits.append(out["id"])

    def batch(self, http: httpx.Client) -> None:
        items = []
        for _ in range(self.rng.randint(*BATCH_ITEMS)):
            body, name, dimensions = self._spend_body()
            items.append(({**body, "idempotency_key": self.key("batch")}, name, dimensions))
        payload = {"debits": [item for item, _, _ in items]}
        since = time.monotonic()
        attempts = 0
        while True:
            results = self.call(http, "/v1/debits/batch", payload, None)["results"]
            attempts += self.attempts
            statuses = {result["status"] for result in results}
            if statuses == {201}:
                if attempts > 1:
                    with self.book.lock:
                        self.book.replayed += sum(bool(r["replayed"]) for r in results)
                break
            if statuses - {201, 503} or time.monotonic() - since > CALL_S_MAX:
                raise Unacknowledged(f"batch answered {results}")
            self._retry("503 in a batch")  # the whole batch again: the applied ones replay
        for (item, name, dimensions), result in zip(items, results, strict=True):
            body = {k: v for k, v in item.items() if k != "idempotency_key"}
            self._record_debit(result["debit"], item["idempotency_key"], body, name, dimensions)
        self.book.acknowledged("batch_debit", len(items))

    def reserve(self, http: httpx.Client, timeout_s: int) -> None:
        body, name, dimensions = self._spend_body()
        body["timeout_s"] = timeout_s
        key = self.key("reserve")
        out = self.call(http, "/v1/reservations", body, key)
        spend = Spend(
            "reservation",
            key,
            body["amount"],
            dimensions,
            self.world.wallets[name],
            name in self.world.budgeted,
        )
        short = timeout_s == SHORT_TIMEOUT_S
        if short:
            spend.outcome = "timeout"
        with self.book.lock:
            self.book.spends[out["id"]] = spend
            if short:
                expiry_ns = time.time_ns() + timeout_s * 1_000_000_000
                self.book.last_expiry_ns = max(self.book.last_expiry_ns, expiry_ns)
        if not short:
            self.open.append(out["id"])
        elif self.rng.random() < self.late_settles:
            self.late.append((time.monotonic() + timeout_s + LATE_S, out["id"]))
        self.book.acknowledged("reserve" if not short else "reserve_timeout")

    def resolve(self, http: httpx.Client, reservation: str) -> None:
        """Settles the reservation (in part, all of it, nothing, or more than it holds), or
        releases it."""
        if self.rng.random() < 0.6:
            self.settle(http, reservation, late=False)
            return
        key = self.key("release")
        out = self.call(http, f"/v1/reservations/{reservation}/release", None, key)
        with self.book.lock:
            spend = self.book.spends[reservation]
            spend.outcome, spend.resolution_id = "release", out["id"]
            self.book.resolutions[out["id"]] = reservation
        self.book.acknowledged("release")

    def settle(self, http: httpx.Client, reservation: str, *, late: bool) -> None:
        """A settle, under an overage policy drawn at random when it asks for more than the
        reservation holds; `late`: after the reservation's timeout (a fallback debit)."""
        spend = self.book.spends[reservation]
        a = spend.amount
        roll = self.rng.random()
        if late or roll < 0.15:
            amount = a + self.rng.randint(1, 20)
        elif roll < 0.25:
            amount = 0
        elif roll < 0.50:
            amount = a
        else:
            amount = self.rng.randint(1, a)
        body: dict[str, Any] = {"amount": amount}
        if amount > a:
            body["overage"] = self.rng.choice(("cap", "reject", "overdraft"))
        key = self.key("settle")
        out = self.call(http, f"/v1/reservations/{reservation}/settle", body, key, refusable=True)
        if out is None:
            # Refused (402): nothing moved. A reservation still held is resolved again later.
            with self.book.lock:
                self.book.refused[f"settle {body} of {a} (late: {late})"] += 1
            if not late:
                self.open.append(reservation)
            return
        if out["fallback_debit"] != late:
            raise Unacknowledged(f"settle {key} (late: {late}) answered {out}")
        with self.book.lock:
            if late:
                spend.outcome, spend.collected = "fallback", out["collected"]
            else:
                spend.outcome = "settle"
                spend.collected = out["overage_collected"]
                spend.posted = out["collected"] - spend.collected
            spend.resolution_id = out["id"]
            self.book.resolutions[out["id"]] = reservation
        self.book.acknowledged("settle_late" if late else "settle")

    def refund(self, http: httpx.Client, debit: str) -> None:
        spend = self.book.spends[debit]
        if spend.refunded >= spend.amount:
            return
        amount = self.rng.randint(1, spend.amount - spend.refunded)
        key = self.key("refund")
        out = self.call(http, f"/v1/debits/{debit}/refund", {"amount": amount}, key)
        if out["amount"] != amount:
            raise Unacknowledged(f"refund {key} of {amount} answered {out}")
        with self.book.lock:
            spend.refunded += amount
        self.book.acknowledged("refund")


def set_up(service: Service) -> World:
    """Two customers. One has a subscription (paid credits, with a price) with a team (a
    promotional grant that expires during the run, a monthly budget) and two agents that fall
    through to it; the other an agent whose wallet runs into an unbounded overdraft."""
    auth = {"Authorization": f"Bearer {service.key}"}
    with httpx.Client(base_url=service.url, headers=auth, timeout=30) as http:

        def made(path: str, body: dict[str, Any]) -> str:
            r = http.post(path, json=body, headers={"Idempotency-Key": str(uuid.uuid4())})
            assert r.status_code in (200, 201), (path, r.text)
            return str(r.json()["id"])

        http.post(
            "/v1/credit-types",
            json={"code": CODE, "name": "Kill loop credits"},
            headers={"Idempotency-Key": str(uuid.uuid4())},
        ).raise_for_status()
        first = made("/v1/customers", {"name": "Subscriber"})
        sub = made("/v1/resources", {"customer_id": first, "kind": "subscription"})
        team = made("/v1/resources", {"customer_id": first, "kind": "team", "parent_id": sub})
        agents = [
            made("/v1/resources", {"customer_id": first, "kind": "agent", "parent_id": team})
            for _ in range(2)
        ]
        second = made("/v1/customers", {"name": "Overdrawn"})
        solo = made("/v1/resources", {"customer_id": second, "kind": "agent"})
        wallets = {
            "subscription": made("/v1/wallets", {"resource_id": sub, "credit_type": CODE}),
            "team": made(
                "/v1/wallets", {"resource_id": team, "credit_type": CODE, "fall_through": True}
            ),
            "solo": made(
                "/v1/wallets",
                {"resource_id": solo, "credit_type": CODE, "overdraft_mode": "unbounded"},
            ),
        }
        for i, agent in enumerate(agents):
            wallets[f"agent{i}"] = made(
                "/v1/wallets", {"resource_id": agent, "credit_type": CODE, "fall_through": True}
            )
        expires_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 20))
        grants: list[tuple[str, int, str, dict[str, Any]]] = [
            ("subscription", 10**12, "paid", {"consideration_minor": 10**11, "currency": "USD"}),
            ("team", 30_000, "promotional", {"expires_at": expires_at}),
            ("team", 200_000, "promotional", {"priority": 5}),
            ("agent0", 5_000, "promotional", {}),
            ("solo", 2_000, "paid", {"consideration_minor": 500, "currency": "EUR"}),
        ]
        for owner, amount, category, extra in grants:
            made(
                "/v1/grants",
                {"wallet_id": wallets[owner], "amount": amount, "category": category, **extra},
            )
        made(
            "/v1/budgets",
            {"resource_id": team, "credit_type": CODE, "period": "month", "cap": 10**12},
        )
    resources = {"team": team, "agent0": agents[0], "agent1": agents[1], "solo": solo}
    return World(resources, frozenset({"team", "agent0", "agent1"}), wallets)


# -- the projection against the book -------------------------------------------------------------

SPEND_KINDS: Final = (
    "debit",
    "overdraft_draw",
    "budget_usage",
    "reserve",
    "settle",
    "release",
    "timeout",
    "refund",
)
# An entry's kind as the book expects it (a debit's slices on blocks, overdraft and budgets).
_GROUP: Final = {"overdraft_draw": "debit", "budget_usage": "debit"}

Key = tuple[str, str, str]  # (operation id, kind, funds | budget)


@dataclass
class Findings:
    acknowledged: dict[str, int]
    entries: int  # spend entries in the projection
    expected: int  # (operation, kind, account class) the book expects
    missing: list[Key]
    extra: list[Key]
    amounts_differ: list[tuple[Key, tuple[int, int], tuple[int, int]]]
    dimensions_differ: list[str]
    wallets_differ: list[str]
    differ_by: dict[str, int]  # entries whose dimensions or wallet differ, by operation
    duplicates: int
    rollups_differ: list[str]
    engine_consumed: int
    expected_consumed: int
    rolled_up: int  # credits consumed in all, as the usage rollups say

    @property
    def clean(self) -> bool:
        return not (
            self.missing
            or self.extra
            or self.amounts_differ
            or self.dimensions_differ
            or self.wallets_differ
            or self.duplicates
            or self.rollups_differ
            or self.engine_consumed != self.expected_consumed
        )


def expected_entries(book: Book) -> dict[Key, tuple[int, int]]:
    """(amount, pending) summed per (operation, kind, account class), as the entries must have
    them: signed changes of the accounts' posted and pending debits. A debit's slices of blocks,
    of the overdraft and of budgets are all of kind `debit` here."""
    out: dict[Key, tuple[int, int]] = {}
    for op, spend in book.spends.items():
        for cls in ("funds", "budget") if spend.budgeted else ("funds",):
            if spend.kind == "debit":
                out[(op, "debit", cls)] = (-spend.amount, 0)
                if spend.refunded and cls == "funds":
                    out[(op, "refund", cls)] = (spend.refunded, 0)
            else:
                out.update(_reservation_entries(op, spend, cls))
    return out


def _reservation_entries(op: str, spend: Spend, cls: str) -> dict[Key, tuple[int, int]]:
    a, resolution = spend.amount, spend.resolution_id
    out = {(op, "reserve", cls): (0, a)}
    if spend.outcome in ("timeout", "fallback"):
        out[(op, "timeout", cls)] = (0, -a)
    elif spend.outcome == "release":
        out[(resolution, "release", cls)] = (0, -a)
    elif spend.outcome == "settle":
        if spend.posted:
            out[(resolution, "settle", cls)] = (-spend.posted, -spend.posted)
        if a - spend.posted:
            out[(resolution, "release", cls)] = (0, -(a - spend.posted))
    if spend.collected:
        # What a settle collected beyond the reservation, or after its timeout: a debit (the
        # budgets count what was asked, all of it collected here: the blocks never run dry).
        out[(resolution, "debit", cls)] = (-spend.collected, 0)
    return out


def _owner(book: Book, op: str) -> Spend | None:
    """The spend an entry's operation belongs to (a settle or release: its reservation)."""
    spend = book.spends.get(op)
    if spend is None and op in book.resolutions:
        spend = book.spends.get(book.resolutions[op])
    return spend


def read_entries(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    return conn.execute(
        "SELECT e.operation_id::text, e.kind, e.account_kind, e.amount, e.pending,"
        " e.dimension_set_id::text, d.dimensions, e.transfer_id::text, e.wallet_id::text"
        " FROM ledger_entries e LEFT JOIN dimension_sets d ON d.id = e.dimension_set_id"
        " WHERE e.kind = ANY(%s)",
        (list(SPEND_KINDS),),
    ).fetchall()


@dataclass
class Compared:
    expected: dict[Key, tuple[int, int]]
    actual: dict[Key, tuple[int, int]]
    dimensions_differ: list[str]  # entries whose dimensions are not their operation's
    wallets_differ: list[str]  # entries not of the wallet that spent
    # Entries with either difference, by what their operation was (debit, or a reservation's
    # outcome: settle, fallback, ...).
    differ_by: Counter[str] = field(default_factory=Counter)


def compare(book: Book, rows: Sequence[tuple[Any, ...]]) -> Compared:
    """The expected and the actual sums per key, and the entries whose dimensions or wallet
    are not their operation's."""
    actual: dict[Key, tuple[int, int]] = defaultdict(lambda: (0, 0))
    out = Compared(expected_entries(book), actual, [], [])
    for operation, kind, account_kind, amount, pending, set_id, dims, transfer, wallet in rows:
        op = operation or ""
        key = (op, _GROUP.get(kind, kind), "budget" if account_kind == "budget" else "funds")
        posted, held = actual[key]
        actual[key] = (posted + int(amount), held + int(pending))
        spend = _owner(book, op)
        if spend is None:
            continue  # an extra entry: told by its key
        entry = f"{transfer} {kind} of {spend.key}"
        sent = spend.dimensions or None
        differs = len(out.dimensions_differ) + len(out.wallets_differ)
        if set_id is not None and dims is None:
            out.dimensions_differ.append(f"{entry}: set {set_id} has no row")
        elif dims != sent:
            out.dimensions_differ.append(f"{entry}: {dims} != {sent}")
        if wallet != spend.wallet:
            out.wallets_differ.append(f"{entry}: wallet {wallet} != {spend.wallet}")
        if len(out.dimensions_differ) + len(out.wallets_differ) > differs:
            out.differ_by[spend.kind if spend.kind == "debit" else spend.outcome] += 1
    out.actual = dict(actual)
    return out


def expected_usage(book: Book) -> dict[str, int]:
    """Credits consumed per dimension set (its JSON, sorted keys; '' for none)."""
    out: Counter[str] = Counter()
    for spend in book.spends.values():
        name = json.dumps(spend.dimensions, sort_keys=True) if spend.dimensions else ""
        if spend.kind == "debit":
            out[name] += spend.amount - spend.refunded
        else:
            out[name] += spend.posted + spend.collected
    return {k: v for k, v in out.items() if v}


def read_usage(conn: psycopg.Connection[Any]) -> dict[str, int]:
    rows = conn.execute(
        "SELECT d.dimensions, sum(u.credits) FROM usage_rollups u"
        " LEFT JOIN dimension_sets d ON d.id = u.dimension_set_id"
        " WHERE u.grain = 'day' GROUP BY 1"
    ).fetchall()
    out: Counter[str] = Counter()
    for dimensions, credits in rows:
        out[json.dumps(dimensions, sort_keys=True) if dimensions else ""] += int(credits)
    return {k: v for k, v in out.items() if v}


def engine_consumed(service: Service, wallets: Sequence[str]) -> int:
    """What the engine says every wallet consumed, in all."""
    auth = {"Authorization": f"Bearer {service.key}"}
    with httpx.Client(base_url=service.url, headers=auth, timeout=30) as http:
        total = 0
        for wallet in wallets:
            r = http.get(f"/v1/wallets/{wallet}")
            r.raise_for_status()
            total += int(r.json()["consumed"])
    return total


def verify(service: Service, world: World, book: Book) -> tuple[Findings, list[tuple[Any, ...]]]:
    """Reads the projection (and each wallet's `consumed` from the engine) and compares; the
    findings and the spend entries read."""
    with psycopg.connect(service.conninfo, autocommit=True) as conn:
        rows = read_entries(conn)
        duplicates = conn.execute(
            "SELECT count(*) FROM (SELECT 1 FROM ledger_entries GROUP BY transfer_id, kind,"
            " account_id HAVING count(*) > 1) d"
        ).fetchone()
        usage = read_usage(conn)
    consumed = engine_consumed(service, list(world.wallets.values()))
    count = int(duplicates[0]) if duplicates else 0
    return findings_of(book, rows, count, usage, consumed), rows


def findings_of(
    book: Book,
    rows: Sequence[tuple[Any, ...]],
    duplicates: int,
    usage: Mapping[str, int],
    consumed: int,
) -> Findings:
    """What differs between the book and the projection's entries `rows` (`read_entries`),
    its usage per dimension set, and the engine's `consumed`."""
    compared = compare(book, rows)
    expected, actual = compared.expected, compared.actual
    wanted_usage = expected_usage(book)
    rollups_differ = [
        f"{name or '(none)'}: {usage.get(name, 0)} != {wanted_usage.get(name, 0)}"
        for name in sorted(set(usage) | set(wanted_usage))
        if usage.get(name, 0) != wanted_usage.get(name, 0)
    ]
    return Findings(
        acknowledged=dict(book.sent),
        entries=len(rows),
        expected=len(expected),
        missing=sorted(set(expected) - set(actual)),
        extra=sorted(set(actual) - set(expected)),
        amounts_differ=[
            (k, expected[k], actual[k])
            for k in sorted(expected)
            if k in actual and actual[k] != expected[k]
        ],
        dimensions_differ=compared.dimensions_differ,
        wallets_differ=compared.wallets_differ,
        differ_by=dict(compared.differ_by),
        duplicates=duplicates,
        rollups_differ=rollups_differ,
        engine_consumed=consumed,
        expected_consumed=sum(wanted_usage.values()),
        rolled_up=sum(usage.values()),
    )


# -- the loop ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    kills: int = 12
    workers: int = 6
    load_s: float = 3.0  # load between kills (0.5x to 1.5x, at random)
    seed: int = 1
    late_settles: float = LATE_SETTLES
    postgres: bool = False  # kill a Postgres backend too, in turn with the others


@dataclass
class Run:
    settings: Settings
    kills: list[Kill]
    findings: Findings
    book: Book
    load_s: float  # from the first operation to the load's end
    caught_up_s: float  # from the load's end to a projection complete through its last ack
    converged_s: float  # from the load's end to the last comparison
    comparisons: int  # how many were made (the first right after the projection caught up)
    rows: list[tuple[Any, ...]]  # the spend entries of the last comparison (`read_entries`)
    stopped_with: int  # serve's exit code on SIGTERM at the end
    feed_beside: bool  # serve fed the projection from a process of its own


def run(settings: Settings, data_dir: Path, log: TextIO | None = None) -> Run:
    """The kill loop on a service over `data_dir` (empty), and what the projection holds;
    progress to `log`."""

    def say(text: str) -> None:
        if log is not None:
            print(text, file=log, flush=True)

    service = Service(data_dir)
    try:
        service.start()
        say(f"serve on {data_dir}; projection fed beside it: {service.feed_beside}")
        world = set_up(service)
        book = Book()
        stop = threading.Event()
        workers = [Worker(n, service, world, book, settings) for n in range(settings.workers)]
        threads = [threading.Thread(target=w.loop, args=(stop,), daemon=True) for w in workers]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        kills = _kill_loop(service, settings, started, say)
        time.sleep(settings.load_s)
        stop.set()
        for thread in threads:
            thread.join(CALL_S_MAX * 2)
        load_end = time.monotonic()
        say(f"load stopped after {load_end - started:.1f} s: {dict(book.sent)}")
        caught_up_s = service.wait_complete(max(book.last_ack_ns, book.last_expiry_ns) + 10**8)
        # Complete, the projection holds everything at once; a few more looks, in case not.
        (findings, rows), comparisons = verify(service, world, book), 1
        while not findings.clean and time.monotonic() - load_end < caught_up_s + LOOK_AGAIN_S:
            time.sleep(0.5)
            (findings, rows), comparisons = verify(service, world, book), comparisons + 1
        converged_s = time.monotonic() - load_end
        stopped_with = service.stop()
    except BaseException:
        if service.process is not None and service.process.poll() is None:
            service.process.kill()
        service.release()
        raise
    return Run(
        settings,
        kills,
        findings,
        book,
        load_end - started,
        caught_up_s,
        converged_s,
        comparisons,
        rows,
        stopped_with,
        service.feed_beside,
    )


def _kill_loop(
    service: Service, settings: Settings, started: float, say: Callable[[str], None]
) -> list[Kill]:
    """Kills in turn the server, its engine and its feed, each after some load."""
    rng = random.Random(settings.seed)
    targets = ["server", "engine", *(["feed"] if service.feed_beside else [])]
    targets += ["postgres"] if settings.postgres else []
    kills = []
    for n in range(settings.kills):
        time.sleep(settings.load_s * rng.uniform(0.5, 1.5))
        kill = Kill(targets[n % len(targets)], time.monotonic() - started)
        kill_ns = time.time_ns()
        if kill.target == "server":
            service.kill_server(kill)
        elif kill.target == "engine":
            service.kill_engine(kill)
        elif kill.target == "feed":
            service.kill_feed(kill)
        else:
            service.kill_postgres(kill)
        kill.caught_up_s = kill.ready_s + service.wait_complete(kill_ns)
        kills.append(kill)
        say(
            f"kill {n + 1}/{settings.kills} ({kill.target}) at {kill.at_s:.1f} s: ready in "
            f"{kill.ready_s:.2f} s, projection caught up in {kill.caught_up_s:.2f} s"
        )
    return kills


def report(run: Run) -> str:
    f, book = run.findings, run.book
    kills = run.kills
    servers = [k for k in kills if k.target == "server"]
    lines = [
        f"kills: {len(kills)} {dict(Counter(k.target for k in kills))}; the projection fed from "
        f"a process of its own: {run.feed_beside}; the server's children ended with it: "
        f"{sum(k.children_ended for k in servers)}/{len(servers)}",
        f"operations acknowledged: {sum(f.acknowledged.values())} {f.acknowledged}",
        f"attempts sent again: {sum(book.retried.values())} {dict(book.retried)}; calls whose "
        f"answer was lost to a kill but applied (a replay answered the retry): {book.replayed}",
        f"spend entries: {f.entries} in {f.expected} (operation, kind, account class) sums",
        f"missing {len(f.missing)}, extra {len(f.extra)}, amounts differ "
        f"{len(f.amounts_differ)}, dimension mismatches {len(f.dimensions_differ)}, "
        f"wallet mismatches {len(f.wallets_differ)}, duplicate entries {f.duplicates}, "
        f"rollups differ {len(f.rollups_differ)}",
        f"entries whose dimensions or wallet differ, by operation: {f.differ_by}",
        f"consumed: engine {f.engine_consumed}, acknowledged {f.expected_consumed}, in the usage "
        f"rollups {f.rolled_up}",
        f"settles refused (402): {sum(book.refused.values())}",
        f"anomalies: {len(book.anomalies)}",
    ]
    for target in ("server", "engine", "feed", "postgres"):
        ready = sorted(k.ready_s for k in kills if k.target == target)
        caught = sorted(k.caught_up_s for k in kills if k.target == target)
        if ready:
            lines.append(
                f"{target} kill to ready: median {ready[len(ready) // 2]:.2f} s, max "
                f"{ready[-1]:.2f} s; to projection caught up: median "
                f"{caught[len(caught) // 2]:.2f} s, max {caught[-1]:.2f} s"
            )
    lines.append(
        f"load {run.load_s:.1f} s; after it: projection caught up in {run.caught_up_s:.2f} s, "
        f"compared at {run.converged_s:.2f} s ({run.comparisons} comparisons); serve "
        f"stopped with {run.stopped_with}"
    )
    lines += [f"  missing: {k}" for k in f.missing[:10]]
    lines += [f"  extra: {k}" for k in f.extra[:10]]
    lines += [f"  amounts: {k} expected {e} got {a}" for k, e, a in f.amounts_differ[:10]]
    lines += [f"  dimensions: {d}" for d in f.dimensions_differ[:10]]
    lines += [f"  wallets: {d}" for d in f.wallets_differ[:10]]
    lines += [f"  rollups: {d}" for d in f.rollups_differ[:10]]
    lines += [f"  anomaly: {a}" for a in book.anomalies[:10]]
    lines += [f"  refused: {n} x {what}" for what, n in book.refused.most_common(10)]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=Settings.kills)
    parser.add_argument("--workers", type=int, default=Settings.workers)
    parser.add_argument("--load-s", type=float, default=Settings.load_s)
    parser.add_argument("--seed", type=int, default=Settings.seed)
    parser.add_argument(
        "--late-settles",
        type=float,
        default=Settings.late_settles,
        help="the share of reservations left to time out that are settled after it",
    )
    parser.add_argument(
        "--postgres", action="store_true", help="kill a Postgres backend too, in turn"
    )
    parser.add_argument("--keep", action="store_true", help="keep the data directory")
    args = parser.parse_args()
    settings = Settings(
        args.kills, args.workers, args.load_s, args.seed, args.late_settles, args.postgres
    )
    data_dir = Path(tempfile.mkdtemp(prefix="bench-projection-kill-"))
    try:
        result = run(settings, data_dir, log=sys.stderr)
    finally:
        if not args.keep:
            import shutil

            shutil.rmtree(data_dir, ignore_errors=True)
        else:
            print(f"data directory kept: {data_dir}", file=sys.stderr)
    print(report(result))
    sys.exit(0 if result.findings.clean and not result.book.anomalies else 1)


if __name__ == "__main__":
    main()
