"""The dispatcher process (`orchestrator run dispatcher`): the one that keeps Celery's
broker window full, fairly, from the database.

Any number may run; a lease elects the one that fills (`leader.Leadership`), and a
standby takes over within a few seconds of its death. The leader:

- fills each queue's window as workers empty it: while ready jobs wait outside a full
  window, it looks at the queue's depth in Redis when half the window should be gone at
  the workers' pace; when nothing waits, it waits to be told (`CeleryDispatcher.nudge`);
- finds scheduled jobs due (a delay, a retry's backoff) on each look, and when idle
  wakes as the first of them comes due;
- every second, checks that the broker holds what was admitted and not yet claimed, and
  admits again what went missing (a restart without persistence, a crash between an
  admission and its send, a worker that died holding a message);
- every `CONCURRENCY_EVERY` seconds, asks the workers their queues and concurrency (Celery's
  remote control), which size the windows.
"""

from __future__ import annotations

import logging
import threading
import time

from sqlalchemy.exc import SQLAlchemyError

from orchestrator import heap, tracing
from orchestrator.admission import Admission
from orchestrator.dispatch.celery import CeleryDispatcher
from orchestrator.leader import Leadership
from orchestrator.models import utcnow
from orchestrator.runtime import Runtime
from orchestrator.window import WindowSizes
from orchestrator.workers import worker_name

log = logging.getLogger("orchestrator.dispatcher")

LEASE_NAME = "dispatcher"
LEASE_SECONDS = 3.0
RENEW_EVERY = 1.0
CHECK_EVERY = 1.0
CONCURRENCY_EVERY = 30.0
# While ready jobs wait outside a full window, its depth is looked at when half of it
# should be gone at the workers' pace; at least this long apart (and at most IDLE_SECONDS),
# so that looking does not take the machine from the workers.
POLL_SECONDS = 0.002
# While nothing waits: how long to wait to be told before looking anyway.
IDLE_SECONDS = 0.25


class DispatchLoop:
    def __init__(self, runtime: Runtime, *, holder: str | None = None) -> None:
        self.runtime = runtime
        self.admission: Admission = runtime.admission
        broker = getattr(runtime.dispatcher, "inner", runtime.dispatcher)
        if not isinstance(broker, CeleryDispatcher):
            raise RuntimeError("the dispatcher process is for ORCH_DISPATCH_MODE=celery")
        self.broker = broker
        self.leadership = Leadership(
            runtime.database, LEASE_NAME, holder or worker_name(), ttl=LEASE_SECONDS
        )
        self.stop = threading.Event()
        self._renewed = self._checked = self._sized = 0.0

    def run(self) -> None:
        log.info("dispatcher started", extra={"action": "dispatcher_started"})
        try:
            while not self.stop.is_set():
                try:
                    if not self._lead():
                        self.stop.wait(RENEW_EVERY)
                        continue
                    self.tick()
                    self._wait()
                except SQLAlchemyError:
                    self._fall_back()
        finally:
            try:
                self.leadership.release()
            except SQLAlchemyError:  # the lease runs out by itself within LEASE_SECONDS
                log.exception("could not give the dispatcher's lease up")

    def _fall_back(self) -> None:
        """The database failed us (a restart, a failover, a deadlock): say so, let the
        lease go as if lost (a standby, or this process later, takes it again with a new
        token), and try again after a pause rather than exit."""
        log.exception("dispatcher round failed; trying again", extra={"action": "dispatcher_error"})
        self.leadership.token = None
        self.stop.wait(RENEW_EVERY)

    def tick(self) -> int:
        """One round of the leader's work; how many jobs it admitted."""
        now = time.monotonic()
        if now - self._sized > CONCURRENCY_EVERY:
            self._sized = now
            threading.Thread(target=self._size_windows, daemon=True).start()
        if now - self._checked > CHECK_EVERY:
            self._checked = now
            self.admission.find_missing(recheck=True)
        fence = self.leadership.fence()
        if fence is None:  # the lease was lost since `_lead` looked
            return 0
        started = time.monotonic()
        deliveries = self.admission.fill(fence=fence)
        self.admission.send(deliveries)
        if deliveries:  # how long workers wait for a fill: what sizes the window
            self.admission.sizes.observe_fill(time.monotonic() - started)
        return len(deliveries)

    def _lead(self) -> bool:
        now = time.monotonic()
        if self.leadership.token is not None and now - self._renewed < RENEW_EVERY:
            return True
        held = self.leadership.token is not None
        if self.leadership.hold(utcnow()):
            self._renewed = now
            if not held:
                log.info("dispatcher leads", extra={"action": "dispatcher_leads"})
            return True
        if held:
            log.warning("dispatcher lost its lease", extra={"action": "dispatcher_lost"})
        return False

    def _wait(self) -> None:
        """Until a window has room again for what waits, or until told of new work."""
        if not self.admission.backlogged:
            due = self.admission.until_next_due()
            pause = IDLE_SECONDS if due is None else min(max(due, POLL_SECONDS), IDLE_SECONDS)
            self.broker.wait_for_nudge(pause)
            return
        deadline = time.monotonic() + IDLE_SECONDS
        queues = self.admission.full_queues
        calm: dict[str, float] = {}  # per queue, a floor's pause between looks
        while not self.stop.is_set() and time.monotonic() < deadline:
            waiting = self.broker.waiting(queues)
            if waiting is None:  # the broker is away: a fill could send nothing
                self.stop.wait(IDLE_SECONDS)
                return
            moved = self.admission.looked(waiting)
            if any(self.admission.refill_due(q, waiting.get(q, 0)) for q in queues):
                return
            sizes = self.admission.sizes
            pause = min(next_look(sizes, q, waiting.get(q, 0), q in moved, calm) for q in queues)
            time.sleep(min(max(pause, POLL_SECONDS), IDLE_SECONDS))

    def _size_windows(self) -> None:
        try:
            replies = self.broker.app.control.inspect(timeout=1.0).active_queues() or {}
            stats = self.broker.app.control.inspect(timeout=1.0).stats() or {}
        except Exception:  # the windows keep their sizes; asked again later
            log.exception("could not ask the workers their concurrency")
            return
        per_queue: dict[str, int] = {}
        for node, queues in replies.items():
            concurrency = int(stats.get(node, {}).get("pool", {}).get("max-concurrency", 1))
            for queue in queues:
                per_queue[queue["name"]] = per_queue.get(queue["name"], 0) + concurrency
        if per_queue:
            self.admission.sizes.observe(per_queue)


def next_look(
    sizes: WindowSizes, queue: str, waiting: int, moved: bool, calm: dict[str, float]
) -> float:
    """Seconds until the next look at a full window: when half of it should be gone at the
    workers' pace. A pace known only as a floor is looked at again at once while the
    workers take from the window (`moved`, to measure it), and less and less often,
    doubling (`calm`, per queue), while they take nothing: all busy with long jobs, for
    which a look every few milliseconds would go on for as long as a job runs."""
    if not sizes.floored(queue):
        return sizes.until_half(queue, waiting)
    calm[queue] = (
        POLL_SECONDS if moved else min(2 * calm.get(queue, POLL_SECONDS / 2), IDLE_SECONDS)
    )
    return calm[queue]


def main() -> None:
    """`orchestrator run dispatcher`: run until SIGTERM or SIGINT."""
    import signal  # noqa: PLC0415

    from orchestrator.logs import configure_logging  # noqa: PLC0415

    runtime = Runtime.current()
    configure_logging(runtime.settings.log_level, runtime.settings.log_format)
    tracing.instrument()  # the publishes' spans, when OpenTelemetry is installed
    loop = DispatchLoop(runtime)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: loop.stop.set())
    heap.freeze_startup_heap()
    loop.run()


if __name__ == "__main__":
    main()
