"""The test clock of a sandbox (`credit-ledger serve --test-clock`): read it, move it forward.

On an instance without one (the default, and always on a real cluster) both routes are 404: the
service runs on the wall clock. An advance moves the service's clock and its engine's (the same
instant, kept in the engine's data directory: ledger.clock.TestClock), then, before it answers,
makes happen what the time that passed brings: the engine releases every reservation whose
timeout it passed (its pulse, which runs before any request it serves), and the expiry sweep
runs for every block whose `expires_at` it passed (each sweep dated at the block's expiry, as
the periodic sweep dates it, so one sweep at the end of a long jump books what sweeps along the
way would have). Before the sweep, the plans' allocations due by the instant reached are
issued (each period once, dated at its own start, wallets/plans.py). Budget periods and a
grant's effective time need nothing run: every spend takes them from the clock. The projection
follows on its own, as it follows every transfer.
"""

from __future__ import annotations

from typing import Any

from credit_ledger_client import schemas as w
from litestar import Request, get, post
from litestar.datastructures import State

from api.openapi import COMMON, operation
from api.routes.shared import documented_body, services_of, strict_body
from api.services import Services
from grants.errors import ClockBackwards, InvalidRequest, NotFound
from ledger.clock import TestClock, ns_of_datetime, rfc3339_of_ns
from ledger.limits import TEST_CLOCK_ADVANCE_S_MAX

NS_PER_S = 1_000_000_000
_PROBLEMS = (*COMMON, "not_found", "ledger_unavailable")
OPS = {
    "get_test_clock": operation(*_PROBLEMS, idempotent=False),
    "advance_test_clock": operation(
        *_PROBLEMS,
        "validation_error",
        "payload_too_large",
        "unsupported_media_type",
        "test_clock_backwards",
        idempotent=False,
        example={"to": "2025-02-01T00:00:00Z"},
    ),
}
_NOT_ENABLED = "this instance runs on the wall clock (start it with `serve --test-clock`)"


def _clock(services: Services) -> TestClock:
    if services.test_clock is None:
        raise NotFound(_NOT_ENABLED)
    return services.test_clock


@get(
    "/v1/test-clock",
    operation_class=OPS["get_test_clock"],
    opt={"scopes": {"admin"}},
    tags=["test clock"],
    description="The instant a sandbox's test clock stands at (`serve --test-clock`). 404 "
    "not_found on an instance that runs on the wall clock.",
)
async def get_test_clock(state: State) -> w.ClockOut:
    return w.ClockOut(now=rfc3339_of_ns(_clock(services_of(state))()))


@post(
    "/v1/test-clock/advance",
    operation_class=OPS["advance_test_clock"],
    dependencies=documented_body(w.ClockAdvanceIn),
    opt={"scopes": {"admin"}},
    status_code=200,
    tags=["test clock"],
    description="Moves a sandbox's test clock forward, to `to` or by `seconds` (exactly one; "
    "at most 400 days at once), for the service and its engine alike. Before it answers, the "
    "engine has released every reservation whose timeout passed, the plans' allocations of "
    "every period that started are issued (each dated at its period's start), and the expiry "
    "sweep has run for every block whose expires_at passed (dated at each block's expiry), "
    "its rollover made first; budget periods roll over by themselves. `swept_blocks`: the "
    "blocks the sweep expired credits of. 409 test_clock_backwards for an instant before the "
    "clock's; 404 not_found on an instance that runs on the wall clock. No Idempotency-Key: "
    "advancing `to` an instant the clock has reached changes nothing, while `seconds` moves "
    "it again on every call.",
)
async def advance_test_clock(request: Request[Any, Any, Any], state: State) -> w.ClockOut:
    services = services_of(state)
    clock = _clock(services)
    data = await strict_body(request, w.ClockAdvanceIn)
    if (data.to is None) == (data.seconds is None):
        raise InvalidRequest("give exactly one of to and seconds", field="to")
    now_ns = clock()
    target_ns = now_ns + data.seconds * NS_PER_S if data.seconds is not None else 0
    if data.to is not None:
        target_ns = ns_of_datetime(data.to)
    if target_ns < now_ns:
        raise ClockBackwards(
            f"the test clock is at {rfc3339_of_ns(now_ns)} and moves forward only",
            now=rfc3339_of_ns(now_ns),
        )
    if target_ns - now_ns > TEST_CLOCK_ADVANCE_S_MAX * NS_PER_S:
        raise InvalidRequest(
            f"at most {TEST_CLOCK_ADVANCE_S_MAX // 86_400} days in one advance", field="to"
        )
    try:
        reached_ns = clock.advance_to(target_ns)
    except ValueError as error:  # another advance went further meanwhile
        raise ClockBackwards(str(error), now=rfc3339_of_ns(clock())) from None
    # The plans' allocations of every period that started, each dated at its own start, then
    # the sweeps (an allocation whose period the jump passed expires in the same advance).
    await services.plans.allocate_all_due(reached_ns)
    report = await services.control.advance_to(reached_ns)
    return w.ClockOut(now=rfc3339_of_ns(reached_ns), swept_blocks=len(report.swept))


ROUTES = [get_test_clock, advance_test_clock]
