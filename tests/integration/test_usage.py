"""Cost attribution against Postgres: spends through the credit service at chosen business
times, projected by the feed, then read back through `wallets.usage` from the rollups: exact
credits and values per bucket, group and currency, subtrees, filters, pages; and nothing of it
comes from the entries (they can be gone)."""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from cli.usage import usage as usage_command
from grants.model import Category
from ledger import db
from ledger.clock import TEST_CLOCK_FILE, ns_of_datetime, write_instant
from ledger.ids import id_text
from ledger.repositories import projection as projection_rows
from ledger.repositories.resources import ResourceKind
from ledger.repositories.usage import UsageRecord
from tests.integration.projection_support import fresh_plane
from wallets.catalog import OverdraftMode
from wallets.control import ControlPlane, GrantRequest
from wallets.projection import ProjectionFeed
from wallets.usage import UsagePage, decimal_text, read_usage, usage_query

pytestmark = pytest.mark.anyio

TENANT = 9
CHAT_SMALL = {"feature": "chat", "model": "small"}
CHAT_LARGE = {"feature": "chat", "model": "large"}
SEARCH = {"feature": "search"}
_tags = itertools.count(1)  # a world per test, in the module's one database


def at(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


@dataclass
class World:
    plane: ControlPlane
    ledger: int
    customer: int
    other_customer: int
    subscription: int
    team: int
    agent1: int
    agent2: int
    other_agent: int
    agent1_wallet: int
    agent2_wallet: int
    other_wallet: int


@pytest.fixture
async def plane(pool: db.Pool) -> AsyncIterator[ControlPlane]:
    async for made in fresh_plane(pool):
        yield made


async def _resource(
    plane: ControlPlane, customer: int, kind: ResourceKind, key: str, parent: int | None = None
) -> int:
    resource, _ = await plane.create_resource(
        customer_id=customer, kind=kind, actor="a", tenant=0, key=key, parent_id=parent
    )
    return resource.id


async def _wallet(plane: ControlPlane, resource: int, ledger: int, key: str, **kw: Any) -> int:
    wallet, _ = await plane.create_wallet(
        resource_id=resource, ledger=ledger, actor="a", tenant=0, key=key, **kw
    )
    return wallet.id


async def _grant(plane: ControlPlane, wallet: int, key: str, amount: int, **kw: Any) -> None:
    request = GrantRequest(
        wallet_id=wallet,
        amount=amount,
        category=kw.pop("category", Category.PAID),
        effective_at=at("2026-01-01T00:00:00Z"),
        **kw,
    )
    await plane.issue_grant(request, tenant=TENANT, key=key, actor="a")


async def make_world(plane: ControlPlane, tag: int) -> World:
    """Customer A: subscription > team > agent1 (paid blocks: 1,000 credits for $10.00, so a
    credit is worth 1 cent) and agent2 (promotional, then a soft overdraft); customer B: an
    agent with a paid block (2,000 credits for 3,000 yen)."""
    ct, _ = await plane.create_credit_type(
        ledger=300 + tag, code=f"u{tag}", name="Credits", asset_scale=0, actor="a", tenant=0,
        key=f"ct{tag}",
    )  # fmt: skip
    a, _ = await plane.create_customer(name="A", actor="a", tenant=0, key=f"a{tag}")
    b, _ = await plane.create_customer(name="B", actor="a", tenant=0, key=f"b{tag}")
    sub = await _resource(plane, a.id, ResourceKind.SUBSCRIPTION, f"s{tag}")
    team = await _resource(plane, a.id, ResourceKind.TEAM, f"t{tag}", sub)
    agent1 = await _resource(plane, a.id, ResourceKind.AGENT, f"g1{tag}", team)
    agent2 = await _resource(plane, a.id, ResourceKind.AGENT, f"g2{tag}", sub)
    other = await _resource(plane, b.id, ResourceKind.AGENT, f"o{tag}")
    w1 = await _wallet(plane, agent1, ct.ledger, f"w1{tag}")
    w2 = await _wallet(
        plane, agent2, ct.ledger, f"w2{tag}", overdraft_mode=OverdraftMode.SOFT,
        overdraft_limit=100,
    )  # fmt: skip
    wo = await _wallet(plane, other, ct.ledger, f"wo{tag}")
    await _grant(plane, w1, f"g1{tag}", 1000, consideration_minor=1000, currency="USD")
    await _grant(plane, w2, f"g2{tag}", 40, category=Category.PROMOTIONAL)
    await _grant(plane, wo, f"go{tag}", 2000, consideration_minor=3000, currency="JPY")
    return World(plane, ct.ledger, a.id, b.id, sub, team, agent1, agent2, other, w1, w2, wo)


async def spend(world: World, key: str, wallet: int, amount: int, when: str, **kw: Any) -> int:
    result = await world.plane.service.debit(
        tenant=TENANT, key=f"{key}-{world.ledger}", amount=amount, ledger=world.ledger,
        wallet_id=wallet, at_ns=ns_of_datetime(at(when)), **kw,
    )  # fmt: skip
    return result.operation_id


async def spend_and_project(world: World) -> None:
    """The spends every test reads (times in UTC; 2026-03-02 is a Monday)."""
    first = await spend(world, "d1", world.agent1_wallet, 100, "2026-03-02T10:15:00Z",
                        dimensions=CHAT_SMALL)  # fmt: skip
    await spend(world, "d2", world.agent1_wallet, 50, "2026-03-02T10:45:00Z",
                dimensions=CHAT_LARGE)  # fmt: skip
    await spend(world, "d3", world.agent2_wallet, 30, "2026-03-02T11:05:00Z", dimensions=SEARCH)
    # 30 of agent2's 40 promotional credits are gone: 25 more draw 10 + 15 of overdraft.
    await spend(world, "d4", world.agent2_wallet, 25, "2026-03-08T23:30:00Z", dimensions=SEARCH)
    await spend(world, "d5", world.agent1_wallet, 10, "2026-03-09T00:10:00Z",
                dimensions=CHAT_SMALL)  # fmt: skip
    await spend(world, "d6", world.agent1_wallet, 5, "2026-03-31T23:00:00Z")
    await spend(world, "d7", world.agent1_wallet, 7, "2026-04-01T00:00:00Z")
    await spend(world, "d8", world.other_wallet, 70, "2026-03-02T10:20:00Z", dimensions=CHAT_SMALL)
    # A refund of 40 of the first debit, on the same day.
    plane = world.plane
    plane.grant_service.clock_ns = lambda: ns_of_datetime(at("2026-03-02T16:00:00Z"))
    await plane.grant_service.refund(first, 40, tenant=TENANT, key=f"rf{world.ledger}")
    await ProjectionFeed(plane.service.ledger, plane.pool).catch_up()


@pytest.fixture
async def world(plane: ControlPlane) -> World:
    world = await make_world(plane, next(_tags))
    await spend_and_project(world)
    return world


async def read(world: World, **kw: Any) -> UsagePage:
    kw.setdefault("bucket", "day")
    kw["from_at"] = at(kw.pop("start", "2026-03-01T00:00:00Z"))
    kw["to_at"] = at(kw.pop("end", "2026-05-01T00:00:00Z"))
    return await read_usage(world.plane.pool, usage_query(**kw))


def figures(rows: list[UsageRecord]) -> list[tuple[Any, ...]]:
    """(bucket start, the grouped values, currency, credits, value) per row, sorted."""
    out = []
    for r in rows:
        ids = [i for i in (r.customer_id, r.resource_id, r.wallet_id) if i is not None]
        start = r.bucket_start.strftime("%Y-%m-%dT%H")
        out.append((start, *ids, *r.dimensions, r.currency, r.credits, decimal_text(r.value_minor)))
    return sorted(out, key=repr)


async def test_a_customer_by_day_and_feature_and_model_per_currency(world: World) -> None:
    page = await read(world, customer_id=world.customer, group_by="feature,model")
    assert figures(page.rows) == sorted(
        [
            # 100 + 50 chat, less the refund of 40 of the small one; a credit is 1 cent.
            ("2026-03-02T00", "chat", "small", "USD", 60, "60"),
            ("2026-03-02T00", "chat", "large", "USD", 50, "50"),
            # Promotional credits have no cost basis.
            ("2026-03-02T00", "search", None, "", 30, "0"),
            # 10 promotional, then 15 of overdraft: neither has a cost basis.
            ("2026-03-08T00", "search", None, "", 25, "0"),
            ("2026-03-09T00", "chat", "small", "USD", 10, "10"),
            ("2026-03-31T00", None, None, "USD", 5, "5"),
            ("2026-04-01T00", None, None, "USD", 7, "7"),
        ],
        key=repr,
    )
    assert page.next_position is None
    assert page.watermark_ts > 0


async def test_weeks_start_on_monday_and_months_on_the_first(world: World) -> None:
    weeks = await read(world, customer_id=world.customer, bucket="week")
    assert figures(weeks.rows) == sorted(
        [
            # Monday 2 March to Sunday 8 March, 23:30.
            ("2026-03-02T00", "USD", 110, "110"),
            ("2026-03-02T00", "", 55, "0"),
            ("2026-03-09T00", "USD", 10, "10"),
            ("2026-03-30T00", "USD", 12, "12"),  # Tuesday 31 March and 1 April
        ],
        key=repr,
    )
    months = await read(world, customer_id=world.customer, bucket="month")
    assert figures(months.rows) == sorted(
        [
            ("2026-03-01T00", "USD", 125, "125"),
            ("2026-03-01T00", "", 55, "0"),
            ("2026-04-01T00", "USD", 7, "7"),
        ],
        key=repr,
    )


async def test_hours_and_a_range_off_whole_days_read_the_hour_rollups(world: World) -> None:
    hours = await read(
        world, customer_id=world.customer, bucket="hour", start="2026-03-02T10:00:00Z",
        end="2026-03-02T17:00:00Z", group_by="resource",
    )  # fmt: skip
    assert figures(hours.rows) == sorted(
        [
            ("2026-03-02T10", world.agent1, "USD", 150, "150"),
            ("2026-03-02T11", world.agent2, "", 30, "0"),
            ("2026-03-02T16", world.agent1, "USD", -40, "-40"),  # the refund's hour
        ],
        key=repr,
    )
    # Day buckets over a range that starts at 11:00: the 10:00 spends are outside it.
    days = await read(world, customer_id=world.customer, start="2026-03-02T11:00:00Z",
                      end="2026-03-03T00:00:00Z")  # fmt: skip
    assert figures(days.rows) == sorted(
        [("2026-03-02T00", "USD", -40, "-40"), ("2026-03-02T00", "", 30, "0")],
        key=repr,
    )


async def test_a_resource_filter_takes_its_whole_subtree(world: World) -> None:
    subscription = await read(world, resource_id=world.subscription, bucket="month",
                              group_by="resource")  # fmt: skip
    assert {(r.resource_id, r.currency, r.credits) for r in subscription.rows} == {
        (world.agent1, "USD", 125),
        (world.agent2, "", 55),
        (world.agent1, "USD", 7),
    }
    team = await read(world, resource_id=world.team, bucket="month")
    assert [(r.currency, r.credits) for r in team.rows] == [("USD", 125), ("USD", 7)]
    agent2 = await read(world, resource_id=world.agent2, bucket="month")
    assert [(r.currency, r.credits) for r in agent2.rows] == [("", 55)]


async def test_filters_on_wallet_credit_type_and_dimensions(world: World) -> None:
    wallet = await read(world, wallet_id=world.agent2_wallet, bucket="month", group_by="wallet")
    assert [(r.wallet_id, r.credits) for r in wallet.rows] == [(world.agent2_wallet, 55)]
    chat = await read(world, bucket="month", group_by="customer,model",
                      dimension=["feature:chat"])  # fmt: skip
    assert figures(chat.rows) == sorted(
        [
            ("2026-03-01T00", world.customer, "small", "USD", 70, "70"),
            ("2026-03-01T00", world.customer, "large", "USD", 50, "50"),
            # Customer B: 70 credits bought at 3,000 yen for 2,000: 105 yen.
            ("2026-03-01T00", world.other_customer, "small", "JPY", 70, "105"),
        ],
        key=repr,
    )
    either = await read(world, bucket="month", customer_id=world.customer,
                        dimension=["model:large", "model:small", "feature:chat"])  # fmt: skip
    assert [(r.currency, r.credits) for r in either.rows] == [("USD", 120)]
    none = await read(world, bucket="month", credit_type_id=world.ledger + 1)
    assert none.rows == []


async def test_pages_follow_the_order_without_gaps_or_repeats(world: World) -> None:
    whole = await read(world, group_by="customer,resource,feature,model")
    assert whole.next_position is None and len(whole.rows) == 8
    seen: list[UsageRecord] = []
    after = None
    while True:
        page = await read(world, group_by="customer,resource,feature,model", limit=3, after=after)
        seen += page.rows
        after = page.next_position
        if after is None:
            break
    assert seen == whole.rows
    starts = [r.bucket_start for r in seen]
    assert starts == sorted(starts)


async def test_the_answer_comes_from_the_rollups_not_the_entries(world: World) -> None:
    before = await read(world, group_by="resource,feature,model")
    async with world.plane.pool.connection() as conn:
        await conn.execute("TRUNCATE ledger_entries")
    after = await read(world, group_by="resource,feature,model")
    assert after.rows == before.rows and after.rows


# -- the command line ------------------------------------------------------------------------------


async def run_cli(database_url: str, *args: str) -> Result:
    """`credit-ledger usage ...` (it runs its own event loop: in a thread of its own here)."""
    return await asyncio.to_thread(
        CliRunner().invoke, usage_command, list(args), env={"DATABASE_URL": database_url}
    )


async def test_the_command_prints_an_aligned_table(world: World, migrated_db_url: str) -> None:
    result = await run_cli(
        migrated_db_url, "--from", "2026-03-01", "--to", "2026-05-01", "--bucket", "month",
        "--customer", id_text(world.customer), "--group-by", "resource,feature",
    )  # fmt: skip
    assert result.exit_code == 0, (result.output, result.exception)
    lines = result.stdout.splitlines()
    credits = f"u{world.ledger - 300}"
    header = ["bucket_start", "resource_id", "feature", "credit_type", "currency", "credits",
              "value_minor", "entries"]  # fmt: skip
    assert lines[0].split() == header
    assert set(lines[1]) == {"-", " "}
    # Sorted by bucket, then resource, feature, credit type and currency; null is blank.
    march, april = "2026-03-01T00:00:00Z", "2026-04-01T00:00:00Z"
    a1, a2 = id_text(world.agent1), id_text(world.agent2)
    rows = sorted(
        [
            [march, a1, "", credits, "USD", "5", "5", "1"],
            [march, a1, "chat", credits, "USD", "120", "120", "4"],  # 3 debits and a refund
            [march, a2, "search", credits, "", "55", "0", "3"],  # promotional, overdraft
            [april, a1, "", credits, "USD", "7", "7", "1"],
        ]
    )
    assert [[cell for cell in row if cell] for row in rows] == [
        line.split() for line in lines[2:-1]
    ]
    # Text to the left, numbers to the right, under their headings.
    for line in lines[2:-1]:
        assert line.index(a1 if a1 in line else a2) == lines[0].index("resource_id")
        assert line.endswith(" 1") or line.endswith(" 3") or line.endswith(" 4")
        assert len(line) == len(lines[0])
    assert lines[-1].startswith("4 rows; the projection includes every transfer up to 2026-")


async def test_the_command_prints_csv_and_states_the_projection_on_stderr(
    world: World, migrated_db_url: str
) -> None:
    result = await run_cli(
        migrated_db_url, "--from", "2026-03-02T10:00:00Z", "--to", "2026-03-02T12:00:00+00:00",
        "--bucket", "hour", "--resource", id_text(world.subscription), "--group-by", "model",
        "--dimension", "feature:chat", "--dimension", "feature:search", "--csv",
    )  # fmt: skip
    assert result.exit_code == 0, (result.output, result.exception)
    credits = f"u{world.ledger - 300}"
    assert result.stdout_bytes.decode().split("\r\n") == [
        "bucket_start,model,credit_type,currency,credits,value_minor,entries",
        f"2026-03-02T10:00:00Z,large,{credits},USD,50,50,1",
        f"2026-03-02T10:00:00Z,small,{credits},USD,100,100,1",
        f"2026-03-02T11:00:00Z,,{credits},,30,0,1",
        "",
    ]
    assert result.stderr.startswith("3 rows; the projection includes every transfer up to")


@pytest.mark.parametrize(
    ("args", "option", "words"),
    [
        (["--from", "2026-03-01T10:00:00", "--to", "2026-04-01"], "--from", "UTC offset"),
        (["--from", "March", "--to", "2026-04-01"], "--from", "not a date"),
        (["--from", "2026-03-01", "--to", "2026-03-01T10:30:00Z"], "--to", "whole UTC hour"),
        (["--from", "2026-01-01", "--to", "2026-04-01", "--bucket", "hour"], "--bucket",
         "2160 hour buckets"),
        (["--from", "2026-03-01", "--to", "2026-04-01", "--credit-type", "nope"],
         "--credit-type", "no credit type 'nope'"),
        (["--from", "2026-03-01", "--to", "2026-04-01", "--resource", "x"], "--resource",
         "not an id"),
        (["--from", "2026-03-01", "--to", "2026-04-01", "--group-by", "a,a"], "--group-by",
         "twice"),
        (["--from", "2026-03-01", "--to", "2026-04-01", "--dimension", "feature"],
         "--dimension", "NAME:VALUE"),
    ],
)  # fmt: skip
async def test_the_command_names_the_option_that_is_wrong(
    migrated_db_url: str, args: list[str], option: str, words: str
) -> None:
    result = await run_cli(migrated_db_url, *args)
    assert result.exit_code == 2, (result.output, result.exception)
    assert f"Invalid value for '{option}'" in result.stderr
    assert words in result.stderr


async def test_the_command_says_when_postgres_cannot_be_reached() -> None:
    result = await run_cli("postgresql://nobody@127.0.0.1:1/none?connect_timeout=1", "--from",
                           "2026-03-01", "--to", "2026-04-01")  # fmt: skip
    assert result.exit_code == 1
    assert "cannot connect to Postgres" in result.stderr


async def test_the_lag_is_told_by_a_sandboxs_clock(
    world: World, migrated_db_url: str, tmp_path: Path
) -> None:
    """On a test clock the footer's lag is against the sandbox's clock, not the wall's."""
    async with world.plane.pool.connection() as conn:
        state = await projection_rows.read_state(conn)
    complete_ns = max(state.watermark_ts, state.caught_up_ns)
    (tmp_path / "engine").mkdir()
    write_instant(tmp_path / "engine" / TEST_CLOCK_FILE, complete_ns + 7 * 1_000_000_000)
    result = await run_cli(
        migrated_db_url, "--from", "2026-03-01", "--to", "2026-05-01", "--data-dir", str(tmp_path)
    )
    assert result.exit_code == 0, (result.output, result.exception)
    assert "at most 7.0 s behind the engine" in result.stdout.splitlines()[-1]
