"""Finance: the reports of a period (JSON or CSV, with control totals and a checksum), the
periods (list, close, lock) and the breakage policies. finance/ holds the rules; this module
decodes, applies the key's boundary and shapes the answers."""

from __future__ import annotations

import os
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final, cast

import msgspec
from credit_ledger_client import schemas as w
from litestar import Request, Response, get, post
from litestar.datastructures import State
from litestar.openapi.spec import (
    OpenAPIHeader,
    OpenAPIMediaType,
    OpenAPIResponse,
    OpenAPIType,
    Schema,
)
from litestar.params import FromPath

from api.auth import SCOPE_ADMIN, SCOPE_FINANCE, Forbidden
from api.common import code_of
from api.openapi import operation
from api.paging import NothingVisible, customer_filter
from api.routes.shared import (
    ADMIN_PROBLEMS,
    LIST_PROBLEMS,
    documented_body,
    id_or_none,
    principal_of,
    query_of,
    services_of,
    strict_body,
)
from finance import exports, periods, policies
from finance import reports as rp
from finance.exports import ExportRequest
from finance.posting import Poster
from grants.errors import NotFound
from ledger.limits import U128_MAX

CSV_MEDIA_TYPE: Final = "text/csv"
DIGEST_HEADER: Final = "Content-Digest"
CONTROL_HEADER: Final = "X-Control-Totals"
PROVISIONAL_HEADER: Final = "X-Report-Provisional"
# A customer id no customer has: a bound key asking for another customer's report finds
# nothing, as an unknown customer's id does.
_NOBODY: Final = U128_MAX

REPORT_DESCRIPTION: Final = (
    "One finance report of one period (a calendar month in UTC, `period=YYYY-MM`), read in one "
    "snapshot from the period's own rows: `journal-lines` (every journal line, traceable to "
    "its transfers), `summary-journal` (per account x currency x product; `layout=netsuite` "
    "or `qbo` for those ERPs' journal entry imports, one entry per currency dated the "
    "period's last day; the chart's codes are mapped to the ERP's by the JSON file named by "
    "`CREDIT_LEDGER_ERP_ACCOUNTS`), `rollforward` (deferred revenue per currency with its "
    "check, which is 0), `revenue` (per customer x product x type: usage, breakage, contra), "
    "`aging` (remaining obligation by days from the period's end to expiry; totals equal the "
    "rollforward's closing), `blocks` (the register of paid blocks), `promotional-memo` (in "
    "credits) and `reconciliation` (ledger vs projection vs journals: only differences, then "
    "a summary row). finance/README.md lists every report's columns.\n\n"
    "Money is text in major units with the currency's fixed decimals, times ISO-8601 UTC. "
    "`format=json` (default) answers `ReportOut`: `columns`, `rows` and `control` (rows, "
    "totals per currency, and the SHA-256 of the CSV form of the same report); `format=csv` "
    "answers RFC 4180 CSV with a header row, its control totals in `X-Control-Totals` (JSON) "
    "and its digest in `Content-Digest` (RFC 9530, `sha-256=:<base64>:`, on both formats). "
    "`provisional` (`X-Report-Provisional`) is true while the period is open; a closed or "
    "locked period's report is the same bytes every time. Requires the finance scope; a key "
    "bound to a customer sees only that customer's rows (another customer's id finds "
    "nothing). An unknown report, layout (or a layout other than generic for a report other "
    "than summary-journal) or a malformed period is 422 naming the field."
)


def _headers() -> dict[str, Any]:
    text = Schema(type=OpenAPIType.STRING)
    return {
        DIGEST_HEADER: OpenAPIHeader(
            schema=text, description="RFC 9530: `sha-256=:<base64>:` of the body's bytes"
        ),
        CONTROL_HEADER: OpenAPIHeader(
            schema=text,
            description='the control as JSON: {"rows": N, "totals": {...}, "sha256": hex}',
        ),
        PROVISIONAL_HEADER: OpenAPIHeader(
            schema=text, description="`true` while the period is open, else `false`"
        ),
    }


_BASE = operation(*LIST_PROBLEMS, "not_found", idempotent=False, query=w.ReportQuery)


@dataclass
class _ReportOperation(_BASE):  # type: ignore[valid-type,misc]
    """The report's operation, whose 200 may also be CSV, with the control's headers."""

    def __post_init__(self) -> None:
        super().__post_init__()
        ok = (self.responses or {}).get("200")
        assert isinstance(ok, OpenAPIResponse) and ok.content is not None
        ok.content[CSV_MEDIA_TYPE] = OpenAPIMediaType(
            schema=Schema(type=OpenAPIType.STRING),
            example="period,currency,opening,additions,usage,breakage,refunds,adjustments,"
            "closing,check,recognized_from_opening\r\n"
            "2025-01,USD,0.00,100.00,40.00,0.00,0.00,0.00,60.00,0.00,0.00\r\n",
        )
        ok.headers = _headers()


@get(
    "/v1/reports/{report:str}",
    operation_class=_ReportOperation,
    opt={"scopes": {SCOPE_FINANCE}},
    tags=["finance"],
    description=REPORT_DESCRIPTION,
)
async def report(
    request: Request[Any, Any, Any], state: State, report: FromPath[str]
) -> Response[w.ReportOut]:
    principal = principal_of(request)
    services = services_of(state)
    query = query_of(request, w.ReportQuery)
    chosen = rp.parse_report(report)
    requested = id_or_none(query.customer_id, "customer_id")
    try:
        customer_id = customer_filter(principal, requested)
    except NothingVisible:
        customer_id = _NOBODY
    export = ExportRequest(
        report=chosen,
        period=rp.parse_period(query.period),
        layout=rp.parse_layout(query.layout.value, chosen),
        customer_id=customer_id,
        functional_currency=services.control.functional_currency,
        mapping=exports.mapping_from_env(os.environ),
    )
    if query.format is w.ReportFormat.CSV:
        data, control = await exports.export_csv(services.pool, export)
        media_type, provisional, rows = CSV_MEDIA_TYPE, control.provisional, control.rows
        totals, sha256 = control.totals, control.sha256
    else:
        data = await exports.export_json(services.pool, export)
        read = msgspec.json.decode(data, type=_JsonControl)
        media_type, provisional, rows = "application/json", read.provisional, read.control.rows
        totals, sha256 = read.control.totals, read.control.sha256
    headers = {
        DIGEST_HEADER: exports.content_digest(data),
        CONTROL_HEADER: msgspec.json.encode(
            {"rows": rows, "totals": totals, "sha256": sha256}
        ).decode(),
        PROVISIONAL_HEADER: "true" if provisional else "false",
    }
    # The document's 200 is ReportOut; its CSV form is added by _ReportOperation.
    return cast("Response[w.ReportOut]", Response(data, media_type=media_type, headers=headers))


class _Control(msgspec.Struct):
    rows: int
    totals: dict[str, dict[str, str]]
    sha256: str


class _JsonControl(msgspec.Struct):
    """What the route reads back of a JSON report, for its headers."""

    provisional: bool
    control: _Control


# -- periods ---------------------------------------------------------------------------------------

PERIOD_PROBLEMS = (*LIST_PROBLEMS, "not_found", "conflict", "period_close_refused")


def _period_out(view: periods.PeriodView) -> w.PeriodOut:
    return w.PeriodOut(
        period=view.period,
        state=w.PeriodState(view.state),
        closed_at=view.closed_at,
        closed_by=view.closed_by,
        locked_at=view.locked_at,
        locked_by=view.locked_by,
        checks=view.checks,
    )


@get(
    "/v1/periods",
    operation_class=operation(*LIST_PROBLEMS, idempotent=False),
    opt={"scopes": {SCOPE_FINANCE, SCOPE_ADMIN}},
    tags=["finance"],
    description="The accounting periods (calendar months, UTC), oldest first: every closed or "
    "locked month (when and by whom, and the checks its close passed), and every open month "
    "that has journals or promotional memo rows. A month without a row is open. Finance or "
    "admin scope.",
)
async def list_periods(state: State) -> w.PeriodList:
    views = await periods.list_periods(services_of(state).pool)
    return w.PeriodList(items=[_period_out(v) for v in views])


def _unbound(request: Request[Any, Any, Any]) -> str:
    principal = principal_of(request)
    if principal.customer_id is not None:
        raise Forbidden("periods are closed and locked by keys bound to no customer")
    return principal.name


@post(
    "/v1/periods/{period:str}/close",
    operation_class=operation(*PERIOD_PROBLEMS, idempotent=False),
    opt={"scopes": {SCOPE_FINANCE}},
    status_code=200,
    tags=["finance"],
    description="Closes a month (`YYYY-MM`, UTC) once every check passes, in order: the month "
    "has ended, the month before it is closed (or nothing was booked before it), the "
    "projection is complete past its end, the poster has posted everything projected, the "
    "expiry sweep has passed its end, every journal balances, the engine reconciles with the "
    "projection and the projection with the journals, and the rollforward's check is 0. A "
    "refusal is 409 `period_close_refused` naming the `check`. Closing keeps what the "
    "month's reports read; nothing is ever booked into it again (late events are prior-"
    "period adjustments of the next open month). Idempotent by nature: closing a closed "
    "month answers it as it is (no Idempotency-Key). Finance scope, a key bound to no "
    "customer.",
)
async def close_period(
    request: Request[Any, Any, Any], state: State, period: FromPath[str]
) -> w.PeriodOut:
    actor = _unbound(request)
    services = services_of(state)
    start = rp.parse_period(period)

    async def reconciled() -> bool:
        return (await services.projection_check.run_to_watermark()).clean

    view = await periods.close_period(
        services.pool,
        start,
        actor=actor,
        clock_ns=services.service.clock_ns,
        poster=Poster(services.pool, functional_currency=services.control.functional_currency),
        check_projection=reconciled,
    )
    return _period_out(view)


@post(
    "/v1/periods/{period:str}/lock",
    operation_class=operation(*PERIOD_PROBLEMS, "period_not_closed", idempotent=False),
    opt={"scopes": {SCOPE_FINANCE}},
    status_code=200,
    tags=["finance"],
    description="Locks a closed month (closed -> locked; 409 `period_not_closed` for an open "
    "one). Idempotent by nature: locking a locked month answers it (no Idempotency-Key). "
    "Finance scope, a key bound to no customer.",
)
async def lock_period(
    request: Request[Any, Any, Any], state: State, period: FromPath[str]
) -> w.PeriodOut:
    actor = _unbound(request)
    services = services_of(state)
    view = await periods.lock_period(
        services.pool, rp.parse_period(period), actor=actor, clock_ns=services.service.clock_ns
    )
    return _period_out(view)


# -- breakage policies -----------------------------------------------------------------------------


@post(
    "/v1/finance/breakage-policies",
    operation_class=operation(
        *ADMIN_PROBLEMS,
        idempotent=False,
        example={
            "credit_type": "credits",
            "method": "proportional",
            "rate": "0.1",
            "effective_from": "2025-01-01T00:00:00Z",
        },
    ),
    dependencies=documented_body(w.BreakagePolicyIn),
    opt={"scopes": {SCOPE_ADMIN}},
    status_code=201,
    tags=["finance"],
    description="How a product's paid blocks recognize breakage, for the blocks that take "
    "effect from `effective_from` and that the poster has not seen yet: `remote` (at expiry, "
    "the default without a policy) or `proportional` at `rate` (the expected unused share, "
    "in (0, 1)) as credits are used. Never changed: a later policy is a new row. Idempotent "
    "by nature: the same policy again answers 201 with it; another at the same credit type "
    "and time is 409 `conflict`. Admin scope, a key bound to no customer.",
)
async def add_breakage_policy(
    request: Request[Any, Any, Any], state: State
) -> Response[w.BreakagePolicyOut]:
    principal = principal_of(request)
    data = await strict_body(request, w.BreakagePolicyIn)
    if principal.customer_id is not None:
        raise NotFound("breakage policies are set by unbound admin keys only")
    services = services_of(state)
    ledger = services.catalog.ledger_of_code(data.credit_type)
    if ledger is None:
        raise NotFound(f"no credit type {data.credit_type!r}", field="credit_type")
    rate = policies.checked_rate(data.method.value, data.rate)
    policy, _ = await policies.add_breakage_policy(
        services.pool,
        credit_type_id=ledger,
        method=data.method.value,
        rate=rate,
        effective_from=policies.checked_effective_from(data.effective_from),
        actor=principal.name,
    )
    body = w.BreakagePolicyOut(
        credit_type=code_of(services, policy.credit_type_id),
        method=w.BreakageMethod(policy.method),
        rate=_rate_text(policy.rate),
        effective_from=policy.effective_from,
    )
    # The same policy again answers it as it was created (201), as an idempotent replay does.
    return Response(body, status_code=201)


def _rate_text(rate: Decimal) -> str:
    return format(rate.normalize(), "f") if rate else "0"


ROUTES = [report, list_periods, close_period, lock_period, add_breakage_policy]
