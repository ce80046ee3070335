"""What a push dispatcher sends: the body and credentials of one delivery.

Cloud Tasks and plain HTTP push the same request to `/internal/worker/run`:
`{"jobId": ..., "idempotencyKey": ...}`, authenticated by the service secret header or, on
Cloud Tasks, by an OIDC token that Google mints for a service account.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from orchestrator.dispatch.base import Delivery

SERVICE_AUTH_HEADER = "X-Service-Auth"


@dataclass(frozen=True)
class PushTarget:
    url: str
    secret: str | None = None
    oidc_service_account: str | None = None
    oidc_audience: str | None = None

    def headers(self, *, oidc_token_attached: bool = False) -> dict[str, str]:
        """A push's headers. The service secret is left out only of a push that carries an
        OIDC token instead (Cloud Tasks attaches one for `oidc_service_account`), so that
        the secret is not stored in every task; a plain HTTP push always needs it."""
        headers = {"Content-Type": "application/json"}
        if self.secret and not oidc_token_attached:
            headers[SERVICE_AUTH_HEADER] = self.secret
        return headers


def push_body(delivery: Delivery) -> bytes:
    return json.dumps({"jobId": delivery.job_id, "idempotencyKey": delivery.delivery_id}).encode()
