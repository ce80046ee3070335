"""How many of a web process's threads one tenant's cancels and retries may hold at once.

These change jobs, so on SQLite they take turns at its one write lock: a tenant firing a
hundred at once would fill every thread of every process with its queue, and everyone
else's requests, `/healthz` included, would wait behind it. Past its share, a tenant's
request is answered at once: `429` with `Retry-After`.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

from api.errors import Problem


class TenantSlots:
    def __init__(self, per_tenant: int) -> None:
        self.per_tenant = max(1, per_tenant)
        self._held: Counter[str] = Counter()
        self._lock = threading.Lock()

    @contextmanager
    def held(self, tenant_id: str) -> Iterator[None]:
        with self._lock:
            if self._held[tenant_id] >= self.per_tenant:
                raise Problem(
                    429,
                    "Too many requests",
                    "This tenant has as many cancels and retries under way as it may have at "
                    "once; send this one again in a second.",
                    headers={"Retry-After": "1"},
                )
            self._held[tenant_id] += 1
        try:
            yield
        finally:
            with self._lock:
                self._held[tenant_id] -= 1
                if not self._held[tenant_id]:
                    del self._held[tenant_id]
