"""The Flask app factory. Blueprints by audience; logic stays in `orchestrator`."""

from __future__ import annotations

from flask import Flask
from werkzeug.routing import BaseConverter

from api import admin, dashboard, errors, health, internal, jobs, metrics, openapi, operator
from api.auth import Certs, GoogleCerts, OidcVerifier
from api.bodies import refuse_unstorable_fields
from api.body_guard import guard_request_bodies
from api.http_framing import MAX_BODY_BYTES
from api.identity import session_secret
from api.tenant_slots import TenantSlots
from orchestrator import heap, tracing
from orchestrator.ids import ID_PATTERN
from orchestrator.limits import CreationRateLimiter
from orchestrator.logs import configure_logging
from orchestrator.runtime import Runtime
from orchestrator.settings import Settings, get_settings


class JobIdConverter(BaseConverter):
    """`<job:job_id>`: only what a job id looks like, so `/v1/jobs/retry` is never a job's
    path (and `OPTIONS` on it advertises its own methods, not a job's)."""

    regex = ID_PATTERN.pattern


def create_app(
    settings: Settings | None = None,
    *,
    runtime: Runtime | None = None,
    oidc_certs: Certs | None = None,
) -> Flask:
    """Build the app; tests pass their own settings, a ready runtime, or the certificates
    that OIDC tokens are checked against (Google's, fetched, by default)."""
    settings = runtime.settings if runtime is not None else (settings or get_settings())
    settings.require_production_secrets()
    app = Flask("orchestrator")
    app.secret_key = session_secret(settings)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.config["SESSION_COOKIE_HTTPONLY"] = True
    app.config["SESSION_COOKIE_SAMESITE"] = "Lax"
    app.config["SESSION_COOKIE_SECURE"] = not settings.is_development
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.url_map.converters["job"] = JobIdConverter
    app.extensions["orchestrator"] = runtime or Runtime.build(settings)
    app.extensions["rate_limiter"] = CreationRateLimiter.from_settings(settings)
    # Half a process's threads at most for one tenant's cancels and retries.
    app.extensions["tenant_slots"] = TenantSlots(settings.web_threads // 2)
    errors.init_app(app)
    app.before_request(refuse_unstorable_fields)
    app.wsgi_app = guard_request_bodies(app.wsgi_app)  # type: ignore[method-assign,assignment]
    app.register_blueprint(health.blueprint)
    app.register_blueprint(jobs.blueprint)
    app.register_blueprint(admin.blueprint)
    app.register_blueprint(internal.blueprint)
    app.register_blueprint(dashboard.blueprint)
    app.register_blueprint(operator.blueprint)
    app.register_blueprint(metrics.blueprint)
    app.register_blueprint(openapi.blueprint)
    # OIDC tokens are taken only from the one service account named: any Google account can
    # mint a token for our audience, so without a name the service secret is the only key.
    audience, account = settings.expected_oidc_audience, settings.oidc_service_account
    if audience is not None and account is not None:
        app.extensions["oidc_verifier"] = OidcVerifier(
            audience, account, oidc_certs or GoogleCerts()
        )
    return app


def create_production_app() -> Flask:
    """What gunicorn serves: `gunicorn 'api:create_production_app()'`."""
    settings = get_settings()
    configure_logging(settings.log_level, settings.log_format)
    app = create_app(settings)
    tracing.instrument(app)
    heap.freeze_startup_heap()
    return app
