"""Cloud Tasks dispatch: one HTTP task per delivery, pushed to `/internal/worker/run`.

A task is named after its delivery (the job and its admission's number), so sending the
same admission twice creates one task, and admitting a job again is a new name. A job due
soon goes out with its time (`scheduleTime`); the dispatch deadline follows the job type's
time limit. The window is the tasks created and not yet run: the dispatcher counts them
itself (`waiting` and `held` say Cloud Tasks cannot be asked cheaply).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import timedelta
from typing import Any

import grpc
from google.api_core import exceptions
from google.cloud import tasks_v2
from google.cloud.tasks_v2.services.cloud_tasks.transports import CloudTasksGrpcTransport

from orchestrator.dispatch.base import Delivery, DispatchError, Held
from orchestrator.dispatch.push import PushTarget, push_body

# Cloud Tasks accepts HTTP dispatch deadlines from 15 seconds to 30 minutes.
MIN_DEADLINE, MAX_DEADLINE = 15.0, 1800.0
DEADLINE_MARGIN = 30.0


def make_client(endpoint: str | None) -> tasks_v2.CloudTasksClient:
    """The real API with Application Default Credentials, or an emulator on `endpoint`
    (plain-text gRPC, no credentials)."""
    if endpoint is None:
        return tasks_v2.CloudTasksClient()
    channel = grpc.insecure_channel(endpoint)
    return tasks_v2.CloudTasksClient(transport=CloudTasksGrpcTransport(channel=channel))


class CloudTasksDispatcher:
    mode = "cloud-tasks"
    drives_pipelines = False

    def __init__(
        self,
        client: tasks_v2.CloudTasksClient,
        queue: str,
        target: PushTarget,
        time_limit: Callable[[str], float],
    ) -> None:
        self.client = client
        self.queue = queue
        self.target = target
        self.time_limit = time_limit

    def task_for(self, delivery: Delivery) -> dict[str, Any]:
        account = self.target.oidc_service_account
        request: dict[str, Any] = {
            "http_method": tasks_v2.HttpMethod.POST,
            "url": self.target.url,
            "headers": self.target.headers(oidc_token_attached=account is not None),
            "body": push_body(delivery),
        }
        if account is not None:
            request["oidc_token"] = {
                "service_account_email": account,
                "audience": self.target.oidc_audience or self.target.url,
            }
        deadline = self.time_limit(delivery.type) + DEADLINE_MARGIN
        task: dict[str, Any] = {
            "name": f"{self.queue}/tasks/{delivery.delivery_id}",
            "http_request": request,
            "dispatch_deadline": timedelta(seconds=min(max(deadline, MIN_DEADLINE), MAX_DEADLINE)),
        }
        if delivery.not_before is not None:
            task["schedule_time"] = delivery.not_before
        return task

    def send(self, deliveries: Sequence[Delivery]) -> None:
        for delivery in deliveries:
            try:
                task = tasks_v2.Task(self.task_for(delivery))
                self.client.create_task(parent=self.queue, task=task)
            except exceptions.AlreadyExists:
                continue  # this delivery was sent before: Cloud Tasks de-duplicated it
            except (exceptions.GoogleAPICallError, exceptions.RetryError) as exc:
                raise DispatchError(f"Cloud Tasks refused the task: {exc}") from exc

    def waiting(self, queues: Iterable[str]) -> dict[str, int] | None:
        return None

    def held(self, queues: Iterable[str]) -> Held | None:
        return None
