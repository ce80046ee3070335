"""The domain's job types. Importing this package registers them."""

from tasks import inspections

__all__ = ["inspections"]
