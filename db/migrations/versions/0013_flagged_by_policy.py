"""Latency buckets count "flagged" as the policy's action, by direction.

Until now a bucket's ``flagged`` counted exchanges with any stored finding; toxicity scores are stored for every
message, so the Latency page showed every request as flagged. Flagged now means what it means everywhere else
(``db/flags.py``): the policy's action on the prompt or the output was ``flag`` or ``block``.

- ``latency_buckets`` gains ``prompt_flagged`` and ``output_flagged`` (an exchange flagged both ways counts in
  both, and once in ``flagged``).
- The three counters of every stored bucket are recomputed from the stored exchanges (finished ones, as the
  buckets hold them), in one pass over the exchanges; everything else in the rows (request counts, tokens,
  latency histograms, the console-overhead figures that exchanges do not keep) stays as it is. A bucket keeps at
  most its own request count. Downgrading recomputes the old meaning (any finding).

The bucket keys are computed here as ``db/latency.py`` computes them (a minute and an hour since the Unix epoch,
UTC), with this migration's own copy of the rule, so later changes to the code do not change what it did.

Revision ID: 0013_flagged_by_policy
Revises: 0012_browser_sessions
Create Date: 2026-12-06
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from alembic import op

from db.types import UTCDateTime

revision: str = "0013_flagged_by_policy"
down_revision: str | None = "0012_browser_sessions"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

RESOLUTIONS = (60, 3600)
FLAG_ACTIONS = ("flag", "block")
_KEY = ("resolution_s", "bucket_start", "model_version", "synthetic", "status")

_buckets = sa.table(
    "latency_buckets",
    sa.column("resolution_s", sa.Integer()),
    sa.column("bucket_start", UTCDateTime()),
    sa.column("model_version", sa.String()),
    sa.column("synthetic", sa.Boolean()),
    sa.column("status", sa.String()),
    sa.column("requests", sa.Integer()),
    sa.column("flagged", sa.Integer()),
    sa.column("prompt_flagged", sa.Integer()),
    sa.column("output_flagged", sa.Integer()),
)
_exchanges = sa.table(
    "exchanges",
    sa.column("id", sa.Integer()),
    sa.column("created_at", UTCDateTime()),
    sa.column("model_version", sa.String()),
    sa.column("synthetic", sa.Boolean()),
    sa.column("status", sa.String()),
    sa.column("prompt_action", sa.String()),
    sa.column("output_action", sa.String()),
)
_findings = sa.table("findings", sa.column("exchange_id", sa.Integer()))

Counts = dict[tuple[int, int, str, bool, str], list[int]]


def _floor_epoch(ts: datetime, seconds: int) -> int:
    return math.floor(ts.timestamp() / seconds) * seconds


def _count(bind: sa.Connection, flags: Callable[[Any], tuple[bool, bool, bool]], extra: Sequence[Any]) -> Counts:
    """(flagged, prompt flagged, output flagged) per bucket key, from every finished exchange."""
    x = _exchanges.c
    stmt = (sa.select(x.created_at, x.model_version, x.synthetic, x.status, x.prompt_action, x.output_action, *extra)
            .where(x.status != "pending"))
    counts: Counts = {}
    for row in bind.execute(stmt.execution_options(yield_per=10_000)):
        flagged = flags(row)
        if not any(flagged):
            continue
        for res in RESOLUTIONS:
            key = (res, _floor_epoch(row[0], res), str(row[1]), bool(row[2]), str(row[3]))
            entry = counts.setdefault(key, [0, 0, 0])
            for i, value in enumerate(flagged):
                entry[i] += int(value)
    return counts


def _store(bind: sa.Connection, counts: Counts) -> None:
    """Write the counters of every stored bucket (0 where no exchange of its key was flagged)."""
    b = _buckets.c
    updates = []
    for row in bind.execute(sa.select(*(b[k] for k in _KEY), b.requests, b.flagged, b.prompt_flagged,
                                      b.output_flagged)):
        start = row.bucket_start
        key = (row.resolution_s, _floor_epoch(start, row.resolution_s), str(row.model_version), bool(row.synthetic),
               str(row.status))
        new = [min(int(row.requests), n) for n in counts.get(key, (0, 0, 0))]
        if new != [row.flagged, row.prompt_flagged, row.output_flagged]:
            updates.append({"k_res": row.resolution_s, "k_start": start, "k_version": row.model_version,
                            "k_synthetic": row.synthetic, "k_status": row.status,
                            "v_flagged": new[0], "v_prompt": new[1], "v_output": new[2]})
    if not updates:
        return
    stmt = (sa.update(_buckets)
            .where(b.resolution_s == sa.bindparam("k_res"), b.bucket_start == sa.bindparam("k_start"),
                   b.model_version == sa.bindparam("k_version"), b.synthetic == sa.bindparam("k_synthetic"),
                   b.status == sa.bindparam("k_status"))
            .values(flagged=sa.bindparam("v_flagged"), prompt_flagged=sa.bindparam("v_prompt"),
                    output_flagged=sa.bindparam("v_output")))
    for i in range(0, len(updates), 5_000):
        bind.execute(stmt, updates[i:i + 5_000])


def _by_policy(row: Any) -> tuple[bool, bool, bool]:
    prompt, output = row.prompt_action in FLAG_ACTIONS, row.output_action in FLAG_ACTIONS
    return prompt or output, prompt, output


def _by_any_finding(row: Any) -> tuple[bool, bool, bool]:
    return bool(row.has_finding), False, False


def upgrade() -> None:
    op.add_column("latency_buckets", sa.Column("prompt_flagged", sa.Integer(), server_default=sa.text("0"),
                                               nullable=False))
    op.add_column("latency_buckets", sa.Column("output_flagged", sa.Integer(), server_default=sa.text("0"),
                                               nullable=False))
    bind = op.get_bind()
    _store(bind, _count(bind, _by_policy, ()))


def downgrade() -> None:
    bind = op.get_bind()
    has_finding = sa.exists().where(_findings.c.exchange_id == _exchanges.c.id).label("has_finding")
    _store(bind, _count(bind, _by_any_finding, (has_finding,)))
    with op.batch_alter_table("latency_buckets") as batch:
        batch.drop_column("output_flagged")
        batch.drop_column("prompt_flagged")

