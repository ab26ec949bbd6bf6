"""The hot lane: the spending routes served straight from ASGI, in front of litestar.

An AI request path calls check, debit, reserve and settle on every model call, so their cost per
request is the service's capacity. Through litestar's routing, guard, signature parsing and
response machinery a debit spent about three quarters of its CPU outside the credit logic. The
lane matches the six spending paths by hand (POST only), then does what the litestar door does,
in the same order and with the same answers:

1. authenticate the bearer key from the in-process cache and check the route's scopes (401/403);
2. read the body, refusing more than the app's limit (413) and a body that is not JSON (415);
3. decode it strictly (422 naming the field) and take the Idempotency-Key (422 when missing);
4. call `api.spending` and send its reply, or the problem+json of its `CreditError`.

Anything else (other methods, other paths, a trailing slash) goes on to litestar. The litestar
handlers of these paths stay: they document the routes in the OpenAPI schema and serve them when
the lane is off (`ApiSettings.hot_lane`); a test drives both doors with the same requests and
compares the answers byte for byte.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import msgspec
from credit_ledger_client import schemas as w

from api import spending
from api.auth import Principal, require_any_scope
from api.common import decode_strict, idempotency_key, require_json
from api.errors import PROBLEM_MEDIA_TYPE, credit_problem, problem_body
from api.services import Services
from api.spending import Reply
from grants.errors import CreditError
from ledger.client import LedgerUnavailable

_logger = logging.getLogger(__name__)

_JSON = [(b"content-type", b"application/json")]
_PROBLEM = [(b"content-type", PROBLEM_MEDIA_TYPE.encode())]
_HIT = (b"idempotency-hit", b"true")
_RESERVATIONS = "/v1/reservations/"


class _Request(msgspec.Struct):
    """What a lane handler gets: the principal, the headers it reads, the path id, the body."""

    principal: Principal
    key: str | None
    path_id: str
    body: bytes


@dataclass(frozen=True)
class _Route:
    template: str  # as litestar names it in metrics
    scopes: frozenset[str]
    call: Callable[[Services, _Request], Awaitable[Reply]]


def _key(request: _Request) -> str:
    return idempotency_key(request.key)


async def _check(services: Services, r: _Request) -> Reply:
    return await spending.check(services, r.principal, decode_strict(r.body, w.SpendIn))


async def _debit(services: Services, r: _Request) -> Reply:
    data = decode_strict(r.body, w.DebitIn)
    return await spending.debit(services, r.principal, _key(r), data)


async def _batch(services: Services, r: _Request) -> Reply:
    return await spending.debit_batch(services, r.principal, decode_strict(r.body, w.BatchIn))


async def _reserve(services: Services, r: _Request) -> Reply:
    data = decode_strict(r.body, w.ReserveIn)
    return await spending.reserve(services, r.principal, _key(r), data)


async def _settle(services: Services, r: _Request) -> Reply:
    data = decode_strict(r.body, w.SettleIn)
    return await spending.settle(services, r.principal, _key(r), r.path_id, data)


async def _release(services: Services, r: _Request) -> Reply:
    return await spending.release(services, r.principal, _key(r), r.path_id)


_S = spending.SCOPES  # the same table the litestar routes declare
_EXACT = {
    "/v1/check": _Route("/v1/check", _S["check"], _check),
    "/v1/debits": _Route("/v1/debits", _S["debit"], _debit),
    "/v1/debits/batch": _Route("/v1/debits/batch", _S["debit_batch"], _batch),
    "/v1/reservations": _Route("/v1/reservations", _S["reserve"], _reserve),
}
_ON_RESERVATION = {
    "settle": _Route("/v1/reservations/{reservation_id}/settle", _S["settle"], _settle),
    "release": _Route("/v1/reservations/{reservation_id}/release", _S["release"], _release),
}


class _Disconnected(Exception):
    pass


class HotLane:
    """`match(scope)` says whether the lane serves a request; `serve(...)` serves it."""

    def __init__(self, services: Services, body_bytes_max: int) -> None:
        self.services = services
        self.body_bytes_max = body_bytes_max
        self._encoder = msgspec.json.Encoder()
        self._counters: dict[tuple[str, int], Any] = {}
        self._timers: dict[str, Any] = {}

    @staticmethod
    def match(scope: Any) -> tuple[_Route, str] | None:
        """(route, path id) when the lane serves this request, else None."""
        if scope["type"] != "http" or scope["method"] != "POST":
            return None
        path: str = scope["path"]
        route = _EXACT.get(path)
        if route is not None:
            return route, ""
        if path.startswith(_RESERVATIONS):
            rest = path[len(_RESERVATIONS) :]
            path_id, slash, action = rest.partition("/")
            route = _ON_RESERVATION.get(action)
            if slash and path_id and route is not None:
                return route, path_id
        return None

    async def serve(self, route: _Route, path_id: str, scope: Any, receive: Any, send: Any) -> None:
        start = time.perf_counter()
        try:
            status, headers, body = await self._answer(route, path_id, scope, receive)
        except _Disconnected:
            return
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        self._observe(route.template, status, time.perf_counter() - start)

    async def _answer(
        self, route: _Route, path_id: str, scope: Any, receive: Any
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        try:
            authorization = key = length = content_type = None
            for name, value in scope["headers"]:
                if name == b"authorization":
                    authorization = value.decode("latin-1")
                elif name == b"idempotency-key":
                    key = value.decode("latin-1")
                elif name == b"content-length":
                    length = value
                elif name == b"content-type":
                    content_type = value.decode("latin-1")
            principal = self.services.keys.authenticate(authorization)
            require_any_scope(principal, route.scopes)
            if length is not None and length.isdigit() and int(length) > self.body_bytes_max:
                return self._problem("payload_too_large", "Request Entity Too Large")
            body = await self._body(receive)
            if body is None:
                return self._problem("payload_too_large", "Request Entity Too Large")
            require_json(content_type, body)
            reply = await route.call(self.services, _Request(principal, key, path_id, body))
        except CreditError as error:
            status, problem = credit_problem(error)
            headers = [*_PROBLEM, _length(problem)]
            if error.replayed:
                headers.append(_HIT)
            return status, headers, problem
        except LedgerUnavailable as error:
            return self._problem("ledger_unavailable", str(error))
        except _Disconnected:
            raise
        except Exception:
            _logger.exception("unhandled error on POST %s", scope["path"])
            return self._problem("internal_error", "an unexpected error; it has been logged")
        encoded = self._encoder.encode(reply.body)
        headers = [*_JSON, _length(encoded)]
        if reply.replayed:
            headers.append(_HIT)
        return reply.status, headers, encoded

    async def _body(self, receive: Any) -> bytes | None:
        """The whole body, or None past the limit; `_Disconnected` if the client went away."""
        chunks = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _Disconnected
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.body_bytes_max:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    @staticmethod
    def _problem(code: str, detail: str) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        status, body = problem_body(code, detail)
        return status, [*_PROBLEM, _length(body)], body

    def _observe(self, template: str, status: int, seconds: float) -> None:
        """The same request metrics as litestar's routes, with the label children cached."""
        metrics = self.services.metrics
        counter = self._counters.get((template, status))
        if counter is None:
            counter = metrics.requests.labels("POST", template, str(status))
            self._counters[(template, status)] = counter
        timer = self._timers.get(template)
        if timer is None:
            timer = self._timers[template] = metrics.request_seconds.labels("POST", template)
        counter.inc()
        timer.observe(seconds)


def _length(body: bytes) -> tuple[bytes, bytes]:
    return (b"content-length", str(len(body)).encode())
