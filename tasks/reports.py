"""A per-tenant daily summary: a cron job that fires once a day for every tenant."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from orchestrator import JobContext
from orchestrator.cron import CronInput, define_cron_job
from orchestrator.service import status_counts


@define_cron_job("daily-tenant-summary", "0 6 * * *", timezone="UTC", per_tenant=True)
def daily_tenant_summary(ctx: JobContext, data: CronInput) -> dict[str, Any]:
    """Counts of the tenant's jobs created on the day before the occurrence, by status."""
    occurrence = data.scheduledFor or datetime.now(UTC)
    day_end = occurrence.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    day_start = day_end - timedelta(days=1)
    by_status = status_counts(ctx.database, ctx.tenant_id, day_start, day_end)
    return {
        "tenantId": ctx.tenant_id,
        "day": day_start.date().isoformat(),
        "created": sum(by_status.values()),
        "byStatus": by_status,
    }
