"""The domain's job types and cron jobs. Importing this package registers them."""

from tasks import inspections, maintenance, reports

__all__ = ["inspections", "maintenance", "reports"]
