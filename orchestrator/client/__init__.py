"""Python clients for the HTTP API, for services that create and follow jobs from
another process: `Client` (sync, on `httpx.Client`) and `AsyncClient` (asyncio, on
`httpx.AsyncClient`), with the same methods as the in-process API (`send_job`,
`get_job`, `list_jobs`, ...); `AdminClient` and `AsyncAdminClient` for the operators'
`/admin` routes. Error answers raise `ApiError`. See docs/client.md.

    with Client("https://jobs.example.com", api_key="ork_...") as client:
        job = client.send_job("ANALYZE_INSPECTION", {"analysisMode": "QUICK", "roomIds": ["hall"]})
        done = client.wait_for_job(job["id"], timeout=60)
"""

from orchestrator.client.asynchronous import AsyncAdminClient, AsyncClient
from orchestrator.client.calls import Call, Page
from orchestrator.client.errors import ApiError
from orchestrator.client.routes import Event, Job, JobSpec
from orchestrator.client.sync import AdminClient, Client

__all__ = [
    "AdminClient",
    "ApiError",
    "AsyncAdminClient",
    "AsyncClient",
    "Call",
    "Client",
    "Event",
    "Job",
    "JobSpec",
    "Page",
]
