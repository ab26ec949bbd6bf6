"""The Python client (`credit_ledger_client`) against an in-memory fake of the service on an
`httpx.MockTransport`: headers, decoding, error mapping, retries that reuse the idempotency key,
the `reserve(...)` context manager, lists and changes. One test drives the real app (in
process) through the client; the end-to-end tests drive the real service."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import uuid
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from credit_ledger_client import (
    ERRORS_BY_CODE,
    AlreadySubscribedError,
    AsyncCreditClient,
    BudgetExceededError,
    CreditApiError,
    CreditClient,
    ExpiryRefusedError,
    ForbiddenError,
    GrantNotChangeableError,
    GrantNotRefundableError,
    IdempotencyConflictError,
    InsufficientCreditsError,
    LedgerUnavailableError,
    NotFoundError,
    RefundExceedsAvailableError,
    ReservationAlreadyReleasedError,
    ReservationAlreadySettledError,
    ReservationExpiredError,
    ReservationStateError,
    RetryPolicy,
    ServiceUnreachableError,
    SpendRefusedError,
    UnauthorizedError,
    UnexpectedResponseError,
    ValidationError,
    VoidExceedsAvailableError,
)
from credit_ledger_client.schemas import (
    AccountKind,
    BudgetIn,
    BudgetOut,
    BudgetPatchIn,
    BudgetQuery,
    CheckOut,
    CustomerOut,
    CustomerPage,
    CustomerQuery,
    DebitOut,
    EntriesOut,
    EntryOut,
    EntryType,
    FundingOut,
    GrantQuery,
    GrantRefundIn,
    Overage,
    OverdraftMode,
    Period,
    PriceAtQuery,
    PriceIn,
    PriceOut,
    ReleaseOut,
    ReservationOut,
    ReservationPage,
    ReservationQuery,
    ReservationStatus,
    ReserveIn,
    SettleIn,
    SettleOut,
    SpendIn,
    Usage,
    WalletOut,
    WalletPatchIn,
)

from tests.api.conftest import Api
from tests.api.support import make_world

ROOT = Path(__file__).resolve().parents[2]
BASE_URL = "http://credit.test"
API_KEY = "test-key"
CREDITS = "credits"
RESOURCE = "0190c3a1-7f3e-7a41-9a6e-1d2c3b4a5f60"
BUDGETED = "0190c3a1-7f3e-7a41-9a6e-1d2c3b4a5f61"  # a resource whose budget is spent
BUDGET = "0190c3a1-7f3e-7a41-9a6e-1d2c3b4a5f62"
WALLET = "0190c3a1-7f3e-7a41-9a6e-1d2c3b4a5f63"
GRANT_ACCOUNT = "42"
PRICE_PER_UNIT = 3  # credits per unit of any feature, for usage-based settles
ENTRIES = 5
CUSTOMERS = 5
EPOCH = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
# No pauses between attempts: the tests check which requests are sent, not the clock.
NO_WAIT = RetryPolicy(attempts=3, backoff_initial_s=0, backoff_max_s=0)
ONE_ATTEMPT = RetryPolicy(attempts=1)


def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(
        status,
        content=msgspec.json.encode(body),
        headers={"content-type": "application/json", **(headers or {})},
    )


def problem(status: int, code: str, detail: str = "", **extra: Any) -> httpx.Response:
    body = {"type": f"https://credit-ledger.dev/problems/{code}", "title": code, "status": status,
            "code": code, "detail": detail or code, **extra}  # fmt: skip
    return httpx.Response(
        status, content=msgspec.json.encode(body),
        headers={"content-type": "application/problem+json"},
    )  # fmt: skip


@dataclass
class Stored:
    request_body: bytes
    status: int
    content: bytes


@dataclass
class Hold:
    amount: int
    timeout_s: int
    status: str = "held"


@dataclass
class FakeService:
    """The service's behaviour that the client relies on, in memory: one balance, debits,
    reservations with settle and release, idempotency replay and conflict, problem+json errors.

    `script` holds answers (responses or exceptions to raise) served before any real handling,
    as a failing network or an unavailable ledger would; they are not recorded as replies."""

    available: int = 100
    requests: list[httpx.Request] = field(default_factory=list)
    script: list[httpx.Response | Exception] = field(default_factory=list)
    stored: dict[str, Stored] = field(default_factory=dict)
    holds: dict[str, Hold] = field(default_factory=dict)
    applied: int = 0  # mutations really applied (replays excluded)
    fail_release: httpx.Response | None = None
    wallet: WalletOut = field(
        default_factory=lambda: WalletOut(
            id=WALLET, resource_id=RESOURCE, credit_type=CREDITS, overdraft_mode="hard",
            overdraft_limit=0, fall_through=False,
        )
    )  # fmt: skip
    budget_caps: dict[str, int | None] = field(default_factory=lambda: {BUDGET: 500})

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.script:
            answer = self.script.pop(0)
            if isinstance(answer, Exception):
                raise answer
            return answer
        if request.headers.get("authorization") != f"Bearer {API_KEY}":
            return problem(401, "unauthorized")
        if request.method == "GET":
            return self._get(request)
        key = request.headers.get("idempotency-key")
        if key is None:
            return problem(422, "validation_error", field="Idempotency-Key")
        stored = self.stored.get(key)
        if stored is not None:
            if stored.request_body != request.content:
                return problem(409, "idempotency_conflict")
            return httpx.Response(stored.status, content=stored.content,
                                  headers={"Idempotency-Hit": "true"})  # fmt: skip
        response = self._post(request)
        if response.status_code < 500:
            self.stored[key] = Stored(request.content, response.status_code, response.read())
        return response

    # -- routes

    def _get(self, request: httpx.Request) -> httpx.Response:
        parts = request.url.path.strip("/").split("/")
        if parts[:2] == ["v1", "reservations"] and len(parts) == 3 and parts[2] in self.holds:
            hold = self.holds[parts[2]]
            return _json(200, self._reservation_out(parts[2], hold))
        if parts == ["v1", "wallets", WALLET, "entries"]:
            return self._entries(request)
        if parts == ["v1", "customers"]:
            return self._customers(request)
        if parts == ["v1", "reservations"] and "wallet_id" in request.url.params:
            return self._reservations(request)
        if parts == ["v1", "prices", "current"]:
            return _json(200, PriceOut(
                id=str(uuid.uuid4()), feature=request.url.params["feature"], credit_type=CREDITS,
                credits_per_unit=PRICE_PER_UNIT, effective_at=EPOCH, created_at=EPOCH,
            ))  # fmt: skip
        if parts == ["healthz"]:
            return _json(200, {"status": "ok"})
        return problem(404, "not_found")

    def _post(self, request: httpx.Request) -> httpx.Response:
        parts = request.url.path.strip("/").split("/")
        try:
            if request.method == "PATCH" and parts == ["v1", "wallets", WALLET]:
                return self._update_wallet(msgspec.json.decode(request.content, type=WalletPatchIn))
            if parts[:2] == ["v1", "budgets"] and len(parts) == 3:
                return self._change_budget(request, parts[2])
            if parts == ["v1", "check"]:
                asked = msgspec.json.decode(request.content, type=SpendIn).amount or 0
                return _json(200, CheckOut(
                    allowed=asked <= self.available, reason=None, amount=asked,
                    available=self.available, reserved=0, overdraft_headroom=0, budgets=[],
                    would_fund=[],
                ))  # fmt: skip
            if parts == ["v1", "debits"]:
                return self._debit(msgspec.json.decode(request.content, type=SpendIn))
            if parts == ["v1", "reservations"]:
                return self._reserve(msgspec.json.decode(request.content, type=ReserveIn))
            if parts[:2] == ["v1", "reservations"] and len(parts) == 4:
                if parts[2] not in self.holds:
                    return problem(404, "not_found")
                if parts[3] == "settle":
                    body = msgspec.json.decode(request.content, type=SettleIn)
                    return self._settle(parts[2], body)
                if parts[3] == "release":
                    return self._release(parts[2])
        except msgspec.ValidationError as error:
            found = str(error).rsplit("at `$.", 1)
            name = found[1].rstrip("`") if len(found) == 2 else None
            return problem(422, "validation_error", str(error), field=name)
        return problem(404, "not_found")

    def _refusal(self, spend: SpendIn, amount: int) -> httpx.Response | None:
        if spend.resource_id == BUDGETED:
            return problem(402, "budget_exceeded", budget_id=BUDGET)
        if amount > self.available:
            return problem(402, "insufficient_credits", available=self.available, needed=amount)
        return None

    def _debit(self, spend: SpendIn) -> httpx.Response:
        assert spend.amount is not None
        refusal = self._refusal(spend, spend.amount)
        if refusal is not None:
            return refusal
        self.available -= spend.amount
        self.applied += 1
        funded = [FundingOut(account_id=GRANT_ACCOUNT, kind="grant", amount=spend.amount)]
        return _json(201, DebitOut(id=str(uuid.uuid4()), amount=spend.amount, funded_by=funded))

    def _reserve(self, spend: ReserveIn) -> httpx.Response:
        amount = spend.amount if spend.amount is not None else 0
        if spend.usage is not None:
            amount = spend.usage.quantity * PRICE_PER_UNIT
        refusal = self._refusal(spend, amount)
        if refusal is not None:
            return refusal
        self.available -= amount
        self.applied += 1
        reservation_id = str(uuid.uuid4())
        self.holds[reservation_id] = Hold(amount, spend.timeout_s)
        return _json(201, self._reservation_out(reservation_id, self.holds[reservation_id]))

    def _settle(self, reservation_id: str, body: SettleIn) -> httpx.Response:
        hold = self.holds[reservation_id]
        if hold.status != "held":
            return problem(409, f"reservation_already_{hold.status}")
        requested = hold.amount if body.amount is None else body.amount
        if body.usage is not None:
            requested = body.usage.quantity * PRICE_PER_UNIT
        collected = min(requested, hold.amount)  # the cap policy
        self.available += hold.amount - collected
        hold.status = "settled"
        self.applied += 1
        return _json(200, SettleOut(
            reservation_id=reservation_id, id=str(uuid.uuid4()), requested=requested,
            collected=collected, released=hold.amount - collected,
            overage=requested - collected, overage_collected=0,
            overage_uncollected=requested - collected, policy=body.overage.value,
            fallback_debit=False,
        ))  # fmt: skip

    def _release(self, reservation_id: str) -> httpx.Response:
        if self.fail_release is not None:
            return self.fail_release
        hold = self.holds[reservation_id]
        if hold.status != "held":
            return problem(409, f"reservation_already_{hold.status}")
        self.available += hold.amount
        hold.status = "released"
        self.applied += 1
        out = ReleaseOut(reservation_id=reservation_id, id=str(uuid.uuid4()), released=hold.amount)
        return _json(200, out)

    def _entries(self, request: httpx.Request) -> httpx.Response:
        start = int(request.url.params.get("cursor", "0"))
        limit = int(request.url.params.get("limit", "2"))
        end = min(start + limit, ENTRIES)
        entries = [
            EntryOut(at=f"2025-01-01T00:00:00.{i + 1:09d}Z", type=EntryType.DEBIT,
                     account_id=WALLET, account_kind=AccountKind.GRANT, amount=-1,
                     operation_id=str(i), available_after=ENTRIES - i - 1, held_after=0,
                     overdraft_used_after=0)
            for i in range(start, end)
        ]  # fmt: skip
        next_cursor = str(end) if end < ENTRIES else None
        return _json(200, EntriesOut(entries=entries, next_cursor=next_cursor))

    def _customers(self, request: httpx.Request) -> httpx.Response:
        """CUSTOMERS customers, named c0.., a page at a time (the cursor is the next index)."""
        start = int(request.url.params.get("cursor", "0"))
        limit = int(request.url.params.get("limit", "100"))
        end = min(start + limit, CUSTOMERS)
        items = [
            CustomerOut(id=f"c{i}", tenant=i + 1, name=f"c{i}", external_ref=None)
            for i in range(start, end)
        ]
        page = CustomerPage(items=items, next_cursor=str(end) if end < CUSTOMERS else None)
        return _json(200, page)

    def _reservations(self, request: httpx.Request) -> httpx.Response:
        status = request.url.params.get("status")
        items = [
            self._reservation_out(rid, hold)
            for rid, hold in self.holds.items()
            if status is None or hold.status == status
        ]
        return _json(200, ReservationPage(items=items, next_cursor=None))

    def _update_wallet(self, body: WalletPatchIn) -> httpx.Response:
        changes = {k: v for k, v in msgspec.structs.asdict(body).items() if v is not None}
        if not changes:
            return problem(422, "validation_error", field="overdraft_mode")
        self.wallet = msgspec.structs.replace(self.wallet, **changes)
        self.applied += 1
        return _json(200, self.wallet)

    def _change_budget(self, request: httpx.Request, budget_id: str) -> httpx.Response:
        if self.budget_caps.get(budget_id) is None:
            return problem(404, "not_found")
        if request.method == "PATCH":
            self.budget_caps[budget_id] = msgspec.json.decode(
                request.content, type=BudgetPatchIn
            ).cap
        elif request.method == "DELETE":
            assert request.content == b"", "a DELETE has no body"
            cap, self.budget_caps[budget_id] = self.budget_caps[budget_id], None
            self.applied += 1
            return _json(200, self._budget_out(budget_id, cap, active=False))
        else:
            return problem(405, "method_not_allowed")
        self.applied += 1
        return _json(200, self._budget_out(budget_id, self.budget_caps[budget_id]))

    @staticmethod
    def _budget_out(budget_id: str, cap: int | None, active: bool = True) -> BudgetOut:
        assert cap is not None
        return BudgetOut(id=budget_id, resource_id=RESOURCE, credit_type=CREDITS, period="day",
                         cap=cap, active=active)  # fmt: skip

    @staticmethod
    def _reservation_out(reservation_id: str, hold: Hold) -> ReservationOut:
        funded = [FundingOut(account_id=GRANT_ACCOUNT, kind="grant", amount=hold.amount)]
        return ReservationOut(id=reservation_id, amount=hold.amount, timeout_s=hold.timeout_s,
                              funded_by=funded, status=hold.status)  # fmt: skip

    # -- what the tests read

    def keys(self) -> list[str | None]:
        return [r.headers.get("idempotency-key") for r in self.requests]

    def hold(self, reservation_id: str) -> Hold:
        return self.holds[reservation_id]


def spend(amount: int, resource_id: str = RESOURCE) -> dict[str, Any]:
    """The keywords of a debit (or a check), as `reserve` takes them too."""
    return {"credit_type": CREDITS, "resource_id": resource_id, "amount": amount}


@pytest.fixture
def fake() -> FakeService:
    return FakeService()


def make_client(
    fake: FakeService, retry: RetryPolicy = NO_WAIT, api_key: str = API_KEY
) -> CreditClient:
    return CreditClient(BASE_URL, api_key, retry=retry, transport=httpx.MockTransport(fake))


def make_async_client(fake: FakeService, retry: RetryPolicy = NO_WAIT) -> AsyncCreditClient:
    return AsyncCreditClient(BASE_URL, API_KEY, retry=retry, transport=httpx.MockTransport(fake))


@pytest.fixture
def client(fake: FakeService) -> Any:
    with make_client(fake) as client:
        yield client


# -- requests and decoding --------------------------------------------------------------------


def test_a_debit_carries_the_api_key_a_fresh_uuid4_key_and_decodes(
    client: CreditClient, fake: FakeService
) -> None:
    out = client.debit(**spend(30))

    assert isinstance(out, DebitOut)
    assert out.amount == 30
    assert out.funded_by == [FundingOut(account_id=GRANT_ACCOUNT, kind="grant", amount=30)]
    assert fake.available == 70
    [request] = fake.requests
    assert (request.method, request.url.path) == ("POST", "/v1/debits")
    assert request.headers["authorization"] == f"Bearer {API_KEY}"
    assert request.headers["content-type"] == "application/json"
    assert uuid.UUID(request.headers["idempotency-key"]).version == 4
    assert msgspec.json.decode(request.content)["amount"] == 30


def test_each_call_gets_its_own_default_key(client: CreditClient, fake: FakeService) -> None:
    client.debit(**spend(1))
    client.debit(**spend(1))

    first, second = fake.keys()
    assert first != second
    assert fake.applied == 2


def test_reads_send_no_idempotency_key(client: CreditClient, fake: FakeService) -> None:
    assert client.healthz() == {"status": "ok"}

    [request] = fake.requests
    assert request.method == "GET"
    assert "idempotency-key" not in request.headers
    assert request.headers["authorization"] == f"Bearer {API_KEY}"


def test_a_replay_with_the_callers_key_is_applied_once(
    client: CreditClient, fake: FakeService
) -> None:
    first = client.debit(**spend(25), idempotency_key="order-17")
    second = client.debit(**spend(25), idempotency_key="order-17")

    assert first == second
    assert fake.available == 75
    assert fake.applied == 1
    assert fake.keys() == ["order-17", "order-17"]


def test_the_same_key_with_another_body_is_an_idempotency_conflict(
    client: CreditClient, fake: FakeService
) -> None:
    client.debit(**spend(25), idempotency_key="order-18")

    with pytest.raises(IdempotencyConflictError) as caught:
        client.debit(**spend(26), idempotency_key="order-18")
    assert caught.value.status == 409
    assert caught.value.idempotency_key == "order-18"
    assert fake.available == 75


def test_ids_are_quoted_into_one_path_segment(client: CreditClient, fake: FakeService) -> None:
    with pytest.raises(NotFoundError):
        client.get_reservation("../debits")

    assert fake.requests[0].url.raw_path == b"/v1/reservations/..%2Fdebits"


def test_iter_entries_follows_the_cursor(client: CreditClient, fake: FakeService) -> None:
    entries = list(client.iter_entries(WALLET, page_limit=2))

    assert [e.operation_id for e in entries] == [str(i) for i in range(ENTRIES)]
    assert [r.url.params.get("cursor") for r in fake.requests] == [None, "2", "4"]
    assert {r.url.params.get("limit") for r in fake.requests} == {"2"}
    assert entries[0].at == "2025-01-01T00:00:00.000000001Z"


def test_entries_of_some_types_send_each_type(client: CreditClient, fake: FakeService) -> None:
    list(client.iter_entries(WALLET, page_limit=4, types=[EntryType.DEBIT, "settle"]))
    assert {tuple(r.url.params.get_list("type")) for r in fake.requests} == {("debit", "settle")}


def test_lists_follow_the_cursor_with_the_query_as_parameters(
    client: CreditClient, fake: FakeService
) -> None:
    customers = list(client.iter_customers(CustomerQuery(limit=2, external_ref="crm-1")))

    assert [c.id for c in customers] == [f"c{i}" for i in range(CUSTOMERS)]
    assert [r.url.params.get("cursor") for r in fake.requests] == [None, "2", "4"]
    assert {r.url.params.get("external_ref") for r in fake.requests} == {"crm-1"}
    assert {r.url.params.get("limit") for r in fake.requests} == {"2"}
    assert {r.method for r in fake.requests} == {"GET"}
    assert all("idempotency-key" not in r.headers for r in fake.requests)
    page = client.list_customers()
    assert (len(page.items), page.next_cursor) == (CUSTOMERS, None)
    assert fake.requests[-1].url.params.get("limit") == "100"


def test_a_list_query_is_checked_and_encoded_before_sending(
    client: CreditClient, fake: FakeService
) -> None:
    with pytest.raises(ValueError, match="limit"):
        client.list_customers(CustomerQuery(limit=0))
    with pytest.raises(ValueError, match="expires_before"):
        client.list_grants(GrantQuery(expires_before=dt.datetime(2030, 1, 1)))  # no offset
    assert fake.requests == []
    with pytest.raises(NotFoundError):
        client.list_budgets(BudgetQuery(active=False, resource_id=RESOURCE))
    params = dict(fake.requests[-1].url.params)
    assert params == {"limit": "100", "resource_id": RESOURCE, "active": "false"}
    with pytest.raises(NotFoundError):
        client.list_grants(GrantQuery(expires_before=EPOCH))
    assert fake.requests[-1].url.params["expires_before"] == "2025-01-01T00:00:00+00:00"


def test_check_and_debit_take_the_keywords_reserve_takes(
    client: CreditClient, fake: FakeService
) -> None:
    out = client.debit(
        credit_type=CREDITS, wallet_id=WALLET, amount=7, dimensions={"model": "small"},
        idempotency_key="usage-1",
    )  # fmt: skip
    allowed = client.check(credit_type=CREDITS, resource_id=RESOURCE, amount=3)

    assert (out.amount, allowed.allowed) == (7, True)
    debit, check = fake.requests
    assert (debit.url.path, check.url.path) == ("/v1/debits", "/v1/check")
    assert msgspec.json.decode(debit.content) == {
        "credit_type": CREDITS, "wallet_id": WALLET, "amount": 7, "dimensions": {"model": "small"},
        "resource_id": None, "usage": None,
    }  # fmt: skip
    assert msgspec.json.decode(check.content)["resource_id"] == RESOURCE
    assert debit.headers["idempotency-key"] == "usage-1"
    with pytest.raises(TypeError, match="amout"):
        client.debit(credit_type=CREDITS, resource_id=RESOURCE, amout=3)  # type: ignore[call-arg]
    assert len(fake.requests) == 2


def test_changes_carry_a_key_and_replay_with_it(client: CreditClient, fake: FakeService) -> None:
    body = WalletPatchIn(fall_through=True)
    first = client.update_wallet(WALLET, body, idempotency_key="w-1")
    again = client.update_wallet(WALLET, body, idempotency_key="w-1")
    assert first == again and first.fall_through is True
    assert fake.applied == 1
    with pytest.raises(IdempotencyConflictError):
        client.update_wallet(WALLET, WalletPatchIn(fall_through=False), idempotency_key="w-1")
    patch_request = fake.requests[0]
    assert (patch_request.method, patch_request.url.path) == ("PATCH", f"/v1/wallets/{WALLET}")
    assert msgspec.json.decode(patch_request.content)["fall_through"] is True

    capped = client.update_budget(BUDGET, BudgetPatchIn(cap=900))
    removed = client.remove_budget(BUDGET, idempotency_key="b-1")
    replay = client.remove_budget(BUDGET, idempotency_key="b-1")
    assert (capped.cap, removed.active, replay) == (900, False, removed)
    delete_request = fake.requests[-2]
    assert (delete_request.method, delete_request.content) == ("DELETE", b"")
    assert delete_request.headers["idempotency-key"] == "b-1"
    assert uuid.UUID(fake.requests[-3].headers["idempotency-key"]).version == 4
    with pytest.raises(NotFoundError):
        client.remove_budget(BUDGET)
    price = client.current_price(PriceAtQuery(feature="chat", credit_type=CREDITS))
    assert price.credits_per_unit == PRICE_PER_UNIT
    assert dict(fake.requests[-1].url.params) == {"feature": "chat", "credit_type": CREDITS}


def test_bad_arguments_are_refused_before_sending(client: CreditClient, fake: FakeService) -> None:
    with pytest.raises(ValueError, match="idempotency_key"):
        client.debit(**spend(1), idempotency_key="")
    with pytest.raises(ValueError, match="idempotency_key"):
        client.debit(**spend(1), idempotency_key="x" * 256)
    with pytest.raises(ValueError, match="idempotency_key"):
        client.debit(**spend(1), idempotency_key="caf\u00e9")
    with pytest.raises(ValueError, match="idempotency_key"):
        # The reservation's key is suffixed with ":release" for its release: it must leave room.
        client.reserve(credit_type=CREDITS, resource_id=RESOURCE, amount=1,
                       idempotency_key="x" * 250)  # fmt: skip
    with pytest.raises(ValueError, match="empty"):
        client.get_reservation("")
    with pytest.raises(ValueError, match="api_key"):
        CreditClient(BASE_URL, "")
    assert fake.requests == []


# -- errors ---------------------------------------------------------------------------------------


def test_insufficient_credits_carries_available_and_needed_and_is_not_retried(
    client: CreditClient, fake: FakeService
) -> None:
    with pytest.raises(InsufficientCreditsError) as caught:
        client.debit(**spend(101), idempotency_key="big-one")

    error = caught.value
    assert isinstance(error, SpendRefusedError)
    assert (error.status, error.code) == (402, "insufficient_credits")
    assert (error.available, error.needed) == (100, 101)
    assert error.extra == {"available": 100, "needed": 101}
    assert error.idempotency_key == "big-one"
    assert not error.retryable
    assert len(fake.requests) == 1
    assert fake.available == 100


def test_amounts_past_2_53_arrive_as_strings_and_are_read_as_ints() -> None:
    huge = 1 << 60
    response = problem(402, "insufficient_credits", available=str(huge), needed=str(huge + 1))
    with (
        make_client(FakeService(script=[response])) as client,
        pytest.raises(InsufficientCreditsError) as caught,
    ):
        client.debit(**spend(1))
    assert (caught.value.available, caught.value.needed) == (huge, huge + 1)


def test_a_refusal_answered_again_under_its_key_says_it_is_a_replay() -> None:
    first = problem(402, "insufficient_credits", available=100, needed=101)
    stored = problem(402, "insufficient_credits", needed=101)
    stored.headers["idempotency-hit"] = "true"
    with make_client(FakeService(script=[first, stored])) as client:
        with pytest.raises(InsufficientCreditsError) as caught:
            client.debit(**spend(101), idempotency_key="poor")
        assert (caught.value.replayed, caught.value.available) == (False, 100)
        with pytest.raises(InsufficientCreditsError) as caught:
            client.debit(**spend(101), idempotency_key="poor")
        assert (caught.value.replayed, caught.value.available) == (True, None)


def test_budget_exceeded_names_the_budget(client: CreditClient) -> None:
    with pytest.raises(BudgetExceededError) as caught:
        client.debit(**spend(1, resource_id=BUDGETED))
    assert caught.value.budget_id == BUDGET
    assert isinstance(caught.value, SpendRefusedError)


def test_a_wrong_api_key_is_unauthorized(fake: FakeService) -> None:
    with make_client(fake, api_key="not-the-key") as client, pytest.raises(UnauthorizedError):
        client.debit(**spend(1))
    assert fake.available == 100


def test_a_validation_error_names_the_field(client: CreditClient) -> None:
    # Struct constructors do not check constraints; the service does, and says which field.
    with pytest.raises(ValidationError) as caught:
        client.debit(**spend(0))
    assert caught.value.status == 422
    assert caught.value.field == "amount"


CODES = {
    "insufficient_credits": (402, InsufficientCreditsError),
    "budget_exceeded": (402, BudgetExceededError),
    "reservation_expired": (409, ReservationExpiredError),
    "reservation_already_settled": (409, ReservationAlreadySettledError),
    "reservation_already_released": (409, ReservationAlreadyReleasedError),
    "idempotency_conflict": (409, IdempotencyConflictError),
    "grant_not_refundable": (409, GrantNotRefundableError),
    "refund_exceeds_available": (409, RefundExceedsAvailableError),
    "void_exceeds_available": (409, VoidExceedsAvailableError),
    "already_subscribed": (409, AlreadySubscribedError),
    "grant_not_changeable": (409, GrantNotChangeableError),
    "expiry_in_past": (422, ExpiryRefusedError),
    "expiry_not_after_effective": (422, ExpiryRefusedError),
    "not_found": (404, NotFoundError),
    "validation_error": (422, ValidationError),
    "unauthorized": (401, UnauthorizedError),
    "forbidden": (403, ForbiddenError),
    "ledger_unavailable": (503, LedgerUnavailableError),
}


def test_every_code_of_the_contract_has_its_error_class() -> None:
    assert set(CODES) <= set(ERRORS_BY_CODE)
    assert all(issubclass(cls, CreditApiError) for cls in ERRORS_BY_CODE.values())


@pytest.mark.parametrize("code", sorted(CODES))
def test_each_code_maps_to_its_class_with_status_detail_and_extras(code: str) -> None:
    status, error_class = CODES[code]
    response = problem(status, code, "what happened", hint="extra")
    with (
        make_client(FakeService(script=[response]), retry=ONE_ATTEMPT) as client,
        pytest.raises(error_class) as caught,
    ):
        client.debit(**spend(1))
    error = caught.value
    assert type(error) is error_class
    assert (error.status, error.code, error.detail) == (status, code, "what happened")
    assert error.type == f"https://credit-ledger.dev/problems/{code}"
    assert error.extra == {"hint": "extra"}
    assert (error.method, error.path) == ("POST", "/v1/debits")


def test_the_reservation_errors_share_a_family() -> None:
    for cls in (ReservationExpiredError, ReservationAlreadySettledError,
                ReservationAlreadyReleasedError):  # fmt: skip
        assert issubclass(cls, ReservationStateError)


def test_an_unknown_code_falls_back_to_its_status_family() -> None:
    response = problem(402, "wallet_frozen")
    with (
        make_client(FakeService(script=[response])) as client,
        pytest.raises(SpendRefusedError) as caught,
    ):
        client.debit(**spend(1))
    assert type(caught.value) is SpendRefusedError
    assert caught.value.code == "wallet_frozen"


def test_an_error_without_a_problem_document_keeps_its_status_and_text() -> None:
    response = httpx.Response(418, text="<html>teapot</html>")
    with (
        make_client(FakeService(script=[response])) as client,
        pytest.raises(UnexpectedResponseError) as caught,
    ):
        client.debit(**spend(1))
    assert (caught.value.status, caught.value.code) == (418, "http_418")
    assert caught.value.detail == "<html>teapot</html>"


def test_a_success_body_that_does_not_decode_is_an_unexpected_response() -> None:
    response = _json(201, {"id": "x"})  # amount and funded_by are missing
    with (
        make_client(FakeService(script=[response])) as client,
        pytest.raises(UnexpectedResponseError),
    ):
        client.debit(**spend(1))


# -- retries --------------------------------------------------------------------------------------


def test_a_503_then_200_retries_with_the_same_key_and_body(fake: FakeService) -> None:
    fake.script = [problem(503, "ledger_unavailable")]
    with make_client(fake) as client:
        out = client.debit(**spend(10))

    assert out.amount == 10
    first, second = fake.requests
    assert first.headers["idempotency-key"] == second.headers["idempotency-key"]
    assert first.content == second.content
    assert fake.available == 90
    assert fake.applied == 1


@pytest.mark.parametrize(
    "failure",
    [httpx.ConnectError("refused"), httpx.ReadTimeout("slow"), httpx.RemoteProtocolError("cut")],
    ids=["connect", "read-timeout", "protocol"],
)
def test_transport_failures_are_retried_with_the_same_key(
    fake: FakeService, failure: Exception
) -> None:
    fake.script = [failure]
    with make_client(fake) as client:
        client.debit(**spend(10), idempotency_key="retry-me")

    assert fake.keys() == ["retry-me", "retry-me"]
    assert fake.applied == 1


def test_retries_are_bounded_and_the_error_names_the_key_to_retry_with(fake: FakeService) -> None:
    fake.script = [problem(503, "ledger_unavailable")] * 3
    with make_client(fake) as client:
        with pytest.raises(LedgerUnavailableError) as caught:
            client.debit(**spend(10))
        assert len(fake.requests) == 3
        assert caught.value.retryable
        key = caught.value.idempotency_key
        assert key is not None and set(fake.keys()) == {key}

        # The caller retries later with the key the error names: applied once.
        client.debit(**spend(10), idempotency_key=key)
        client.debit(**spend(10), idempotency_key=key)
    assert fake.applied == 1
    assert fake.available == 90


def test_no_response_after_every_attempt_is_service_unreachable(fake: FakeService) -> None:
    fake.script = [httpx.ConnectError("refused") for _ in range(3)]
    with make_client(fake) as client, pytest.raises(ServiceUnreachableError) as caught:
        client.debit(**spend(10))
    assert len(fake.requests) == 3
    assert (caught.value.status, caught.value.retryable) == (0, True)
    assert isinstance(caught.value.__cause__, httpx.ConnectError)


def test_a_gateway_error_is_retried_then_reported_as_unreachable(fake: FakeService) -> None:
    fake.script = [httpx.Response(504, text="gateway timeout")] * 3
    with make_client(fake) as client, pytest.raises(ServiceUnreachableError) as caught:
        client.debit(**spend(10), idempotency_key="through-a-proxy")
    assert fake.keys() == ["through-a-proxy"] * 3
    assert (caught.value.status, caught.value.code, caught.value.retryable) == (
        504,
        "http_504",
        True,
    )


def test_the_number_of_attempts_is_configurable(fake: FakeService) -> None:
    fake.script = [problem(503, "ledger_unavailable")]
    with make_client(fake, retry=ONE_ATTEMPT) as client, pytest.raises(LedgerUnavailableError):
        client.debit(**spend(10))
    assert len(fake.requests) == 1


def test_a_probe_is_never_retried(fake: FakeService) -> None:
    fake.script = [_json(503, {"status": "unavailable", "problems": ["engine"]})] * 3
    with make_client(fake) as client, pytest.raises(LedgerUnavailableError) as caught:
        client.readyz()
    assert len(fake.requests) == 1
    assert caught.value.code == "http_503"


def test_the_backoff_doubles_up_to_its_cap_and_honours_retry_after() -> None:
    policy = RetryPolicy(backoff_initial_s=0.1, backoff_max_s=1.0, jitter=0)
    assert [policy.delay_s(n) for n in (1, 2, 3, 4, 5)] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1])
    assert policy.delay_s(1, retry_after_s=0.5) == pytest.approx(0.5)
    assert policy.delay_s(1, retry_after_s=30) == pytest.approx(1.0)
    jittery = RetryPolicy(backoff_initial_s=0.1, backoff_max_s=1.0, jitter=0.5)
    assert all(0.05 <= jittery.delay_s(1) <= 0.1 for _ in range(100))


def test_the_retry_policy_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="attempts"):
        RetryPolicy(attempts=0)
    with pytest.raises(ValueError, match="5xx"):
        RetryPolicy(statuses=frozenset({402}))
    with pytest.raises(ValueError, match="backoff"):
        RetryPolicy(backoff_initial_s=3, backoff_max_s=1)


# -- the reserve(...) context manager ----------------------------------------------------------


def test_reserve_settles_the_reserved_amount_by_default(
    client: CreditClient, fake: FakeService
) -> None:
    with client.reserve(credit_type=CREDITS, resource_id=RESOURCE, amount=40, timeout_s=60,
                        idempotency_key="job-1") as r:  # fmt: skip
        assert fake.available == 60
        assert (r.amount, r.timeout_s) == (40, 60)

    assert r.settled is not None and r.settled.collected == 40
    assert r.released is None
    assert fake.hold(r.id).status == "settled"
    assert fake.available == 60
    assert fake.keys() == ["job-1", "job-1:settle"]
    reserve, settle = fake.requests
    assert msgspec.json.decode(reserve.content)["timeout_s"] == 60
    assert settle.url.path == f"/v1/reservations/{r.id}/settle"
    assert msgspec.json.decode(settle.content)["amount"] == 40


def test_reserve_settles_the_measured_amount_and_returns_the_rest(
    client: CreditClient, fake: FakeService
) -> None:
    with client.reserve(credit_type=CREDITS, resource_id=RESOURCE, amount=40) as r:
        r.settle_amount = 15

    assert r.settled is not None
    assert (r.settled.collected, r.settled.released) == (15, 25)
    assert fake.available == 85
    # Fields at their defaults are left out (SettleIn's omit_defaults): "cap" is the default.
    body = msgspec.json.decode(fake.requests[-1].content)
    assert body == {"amount": 15}


def test_reserve_settles_by_usage_with_the_chosen_overage_policy(
    client: CreditClient, fake: FakeService
) -> None:
    with client.reserve(credit_type=CREDITS, resource_id=RESOURCE,
                        usage=Usage(feature="tokens", quantity=10)) as r:  # fmt: skip
        assert r.amount == 30
        r.usage = Usage(feature="tokens", quantity=4)
        r.overage = Overage.REJECT

    body = msgspec.json.decode(fake.requests[-1].content)
    assert body == {"usage": {"feature": "tokens", "quantity": 4}, "overage": "reject"}
    assert fake.available == 100 - 4 * PRICE_PER_UNIT


def test_settle_amount_and_usage_exclude_each_other(client: CreditClient) -> None:
    with (
        pytest.raises(ValueError, match="either"),
        client.reserve(credit_type=CREDITS, resource_id=RESOURCE, amount=10) as r,
    ):
        r.settle_amount = 5
        r.usage = Usage(feature="tokens", quantity=1)
    with (
        pytest.raises(ValueError, match="non-negative"),
        client.reserve(credit_type=CREDITS, resource_id=RESOURCE, amount=10) as r,
    ):
        r.settle_amount = -1


def test_reserve_releases_on_an_exception_and_reraises_it(
    client: CreditClient, fake: FakeService
) -> None:
    with (
        pytest.raises(RuntimeError, match="model crashed"),
        client.reserve(
            credit_type=CREDITS, resource_id=RESOURCE, amount=40, idempotency_key="job-2"
        ) as r,
    ):
        r.settle_amount = 10
        raise RuntimeError("model crashed")

    assert r.settled is None
    assert r.released is not None and r.released.released == 40
    assert fake.hold(r.id).status == "released"
    assert fake.available == 100
    assert fake.keys() == ["job-2", "job-2:release"]
    assert fake.requests[-1].url.path == f"/v1/reservations/{r.id}/release"
    assert fake.requests[-1].content == b"{}"


def test_a_failed_release_leaves_the_callers_exception_with_a_note(
    client: CreditClient, fake: FakeService
) -> None:
    fake.fail_release = problem(409, "reservation_expired")
    with (
        pytest.raises(RuntimeError, match="model crashed") as caught,
        client.reserve(credit_type=CREDITS, resource_id=RESOURCE, amount=40) as r,
    ):
        raise RuntimeError("model crashed")

    assert isinstance(r.release_error, ReservationExpiredError)
    assert any("expires by itself" in note for note in caught.value.__notes__)


def test_a_refused_reservation_never_runs_the_block(client: CreditClient) -> None:
    ran = False
    with (
        pytest.raises(InsufficientCreditsError),
        client.reserve(credit_type=CREDITS, resource_id=RESOURCE, amount=500),
    ):
        ran = True
    assert not ran


def test_rerunning_a_crashed_block_with_its_key_spends_once(
    client: CreditClient, fake: FakeService
) -> None:
    # The first run reserved, then the process died before settling.
    held = client.create_reservation(
        ReserveIn(credit_type=CREDITS, resource_id=RESOURCE, amount=40), idempotency_key="job-3"
    )
    # The restarted process runs the same block with the same key: the same reservation.
    with client.reserve(credit_type=CREDITS, resource_id=RESOURCE, amount=40,
                        idempotency_key="job-3") as r:  # fmt: skip
        r.settle_amount = 30
    # And a crash after the settle's request but before its answer replays the same settle.
    replay = client.settle(r.id, SettleIn(amount=30), idempotency_key="job-3:settle")

    assert r.id == held.id
    assert replay == r.settled
    assert fake.available == 70
    assert fake.applied == 2  # one reservation, one settlement


def test_settling_twice_is_reservation_already_settled(client: CreditClient) -> None:
    with client.reserve(credit_type=CREDITS, resource_id=RESOURCE, amount=5) as r:
        pass
    with pytest.raises(ReservationAlreadySettledError):
        client.settle(r.id, SettleIn(amount=5))
    assert client.get_reservation(r.id).status == "settled"


# -- the async client -----------------------------------------------------------------------------


@pytest.mark.anyio
async def test_async_debit_carries_the_headers_and_decodes(fake: FakeService) -> None:
    async with make_async_client(fake) as client:
        out = await client.debit(**spend(30))

    assert isinstance(out, DebitOut) and out.amount == 30
    [request] = fake.requests
    assert request.headers["authorization"] == f"Bearer {API_KEY}"
    assert uuid.UUID(request.headers["idempotency-key"]).version == 4


@pytest.mark.anyio
async def test_async_a_503_then_200_retries_with_the_same_key(fake: FakeService) -> None:
    fake.script = [problem(503, "ledger_unavailable"), httpx.ConnectError("refused")]
    async with make_async_client(fake) as client:
        await client.debit(**spend(10))

    assert len(fake.requests) == 3
    assert len(set(fake.keys())) == 1
    assert fake.applied == 1


@pytest.mark.anyio
async def test_async_errors_map_by_code(fake: FakeService) -> None:
    async with make_async_client(fake) as client:
        with pytest.raises(InsufficientCreditsError) as caught:
            await client.debit(**spend(101))
        with pytest.raises(NotFoundError):
            await client.get_reservation(str(uuid.uuid4()))
    assert (caught.value.available, caught.value.needed) == (100, 101)


@pytest.mark.anyio
async def test_async_reserve_settles_on_success(fake: FakeService) -> None:
    async with make_async_client(fake) as client:
        async with client.reserve(credit_type=CREDITS, resource_id=RESOURCE, amount=40,
                                  idempotency_key="a-1") as r:  # fmt: skip
            r.settle_amount = 12
        status = (await client.get_reservation(r.id)).status

    assert r.settled is not None and r.settled.collected == 12
    assert status == "settled"
    assert fake.available == 88
    assert fake.keys()[:2] == ["a-1", "a-1:settle"]


@pytest.mark.anyio
async def test_async_reserve_releases_on_an_exception(fake: FakeService) -> None:
    async with make_async_client(fake) as client:
        with pytest.raises(RuntimeError, match="boom"):
            async with client.reserve(credit_type=CREDITS, resource_id=RESOURCE, amount=40,
                                      idempotency_key="a-2") as r:  # fmt: skip
                raise RuntimeError("boom")

    assert r.released is not None and r.released.released == 40
    assert fake.available == 100
    assert fake.keys() == ["a-2", "a-2:release"]


@pytest.mark.anyio
async def test_async_iter_entries_follows_the_cursor(fake: FakeService) -> None:
    async with make_async_client(fake) as client:
        entries = [entry async for entry in client.iter_entries(WALLET, page_limit=3)]
    assert len(entries) == ENTRIES
    assert len(fake.requests) == 2


@pytest.mark.anyio
async def test_async_lists_changes_and_keyword_spends(fake: FakeService) -> None:
    async with make_async_client(fake) as client:
        customers = [c async for c in client.iter_customers(CustomerQuery(limit=3))]
        await client.debit(credit_type=CREDITS, resource_id=RESOURCE, amount=5)
        async with client.reserve(credit_type=CREDITS, resource_id=RESOURCE, amount=9):
            pass
        held = [r async for r in client.iter_reservations(ReservationQuery(wallet_id=WALLET))]
        wallet = await client.update_wallet(WALLET, WalletPatchIn(fall_through=True))
        removed = await client.remove_budget(BUDGET)

    assert [c.id for c in customers] == [f"c{i}" for i in range(CUSTOMERS)]
    assert [(r.amount, r.status) for r in held] == [(9, ReservationStatus.SETTLED.value)]
    assert (wallet.fall_through, removed.active) == (True, False)
    assert fake.available == 100 - 5 - 9


# -- a real call path -----------------------------------------------------------------------------


@pytest.mark.anyio
async def test_the_client_against_the_real_service(api: Api) -> None:
    """The async client over the app itself (no fake): keyword spends, the lists following
    their cursors, the whole grant, and changes of a wallet, a budget and a price."""
    world = await make_world(api, granted=1000)
    wallet_id, agent = world.wallet["id"], world.agent["id"]
    transport = httpx.ASGITransport(app=api.app)
    async with AsyncCreditClient(
        "http://testserver", api.keys["all"], transport=transport
    ) as client:
        spend = {"credit_type": world.code, "resource_id": agent}
        debit = await client.debit(**spend, amount=30, dimensions={"model": "small"})
        refused = await client.check(**spend, amount=2000)
        async with client.reserve(**spend, amount=20) as reservation:
            reservation.settle_amount = 5
        reservations = [
            r
            async for r in client.iter_reservations(ReservationQuery(wallet_id=wallet_id, limit=1))
        ]
        customers = [c.id async for c in client.iter_customers(CustomerQuery(limit=2))]
        grants = [g async for g in client.iter_grants(GrantQuery(wallet_id=wallet_id))]
        grant = await client.get_grant(world.grant["id"])
        soft = await client.update_wallet(
            wallet_id, WalletPatchIn(overdraft_mode=OverdraftMode.SOFT, overdraft_limit=100)
        )
        balance = await client.get_wallet(wallet_id)
        budget = await client.create_budget(
            BudgetIn(resource_id=agent, credit_type=world.code, period=Period.DAY, cap=50)
        )
        capped = await client.update_budget(budget.id, BudgetPatchIn(cap=60))
        removed = await client.remove_budget(budget.id)
        await client.create_price(
            PriceIn(feature=f"real-{api.seq}", credit_type=world.code, credits_per_unit=4)
        )
        price = await client.current_price(
            PriceAtQuery(feature=f"real-{api.seq}", credit_type=world.code)
        )
        refund = await client.refund_grant(
            world.grant["id"], GrantRefundIn(amount=5, refund_minor=50, reason="goodwill")
        )
        with pytest.raises(RefundExceedsAvailableError) as too_much:
            await client.refund_grant(world.grant["id"], GrantRefundIn(refund_minor=1, amount=961))

    assert (refund.grant_id, refund.refunded, refund.refund_minor, refund.currency) == (
        world.grant["id"],
        5,
        50,
        "USD",
    )
    assert too_much.value.refundable == 960
    assert (debit.amount, refused.allowed, refused.reason) == (30, False, "insufficient_credits")
    assert [(r.id, r.amount, r.status) for r in reservations] == [(reservation.id, 20, "settled")]
    assert world.customer["id"] in customers and len(customers) == len(set(customers))
    assert [g.id for g in grants] == [world.grant["id"]]
    assert (grant.id, grant.category, grant.currency, grant.consumed) == (
        world.grant["id"],
        "paid",
        "USD",
        35,
    )
    assert (soft.overdraft_mode, balance.overdraft_limit, balance.available) == ("soft", 100, 965)
    assert (capped.cap, removed.active, price.credits_per_unit) == (60, False, 4)


# -- the client stands alone ----------------------------------------------------------------------


def test_the_client_is_a_distribution_of_its_own(tmp_path: Path) -> None:
    """The client's wheel, built from clients/python, needs httpx and msgspec only, and
    imported from that wheel alone it brings no server code with it."""
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "--wheel-dir", str(tmp_path), str(ROOT / "clients" / "python")],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    (wheel,) = tmp_path.glob("credit_ledger_client-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        (metadata,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        requires = [
            line.split(":", 1)[1].strip()
            for line in archive.read(metadata).decode().splitlines()
            if line.startswith("Requires-Dist:")
        ]
    assert sorted(r.split(">")[0].split("<")[0].split("=")[0] for r in requires) == [
        "httpx",
        "msgspec",
    ]
    assert "credit_ledger_client/py.typed" in names
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import credit_ledger_client as c; "
        "assert c.__file__.startswith(sys.argv[1]), c.__file__; "
        "c.CreditClient('http://127.0.0.1:9', 'clk_x').close(); "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'api', 'litestar', 'wallets', 'grants', 'ledger', 'jobs', 'tigerbeetle', 'psycopg'}); "
        "assert not bad, bad"
    )
    result = subprocess.run([sys.executable, "-I", "-c", code, str(wheel)], cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode == 0, result.stderr
