"""The dashboard in api-key mode: a login form takes a key into a signed, HTTP-only session
cookie; its buttons keep CSRF protection; a revoked key logs the session out."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask.testing import FlaskClient

import api
from orchestrator import apikeys
from orchestrator.runtime import Runtime
from orchestrator.settings import load_settings
from tests import REAL_SECRET


@pytest.fixture
def runtime(sqlite_url: str) -> Iterator[Runtime]:
    settings = load_settings(
        env="production",
        database_url=sqlite_url,
        dispatch_mode="inline",
        job_modules="tests.jobtypes",
        service_auth_secret=REAL_SECRET,
    )
    built = Runtime.build(settings)
    yield built
    built.database.dispose()


@pytest.fixture
def client(runtime: Runtime) -> FlaskClient:
    return api.create_app(runtime=runtime).test_client()


def token_from(html: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert found
    return found.group(1)


def test_login_takes_a_key_into_the_session_and_logout_ends_it(
    client: FlaskClient, runtime: Runtime
) -> None:
    issued = apikeys.create_key(runtime.database, "acme", "browser")
    client.post(
        "/v1/jobs",
        json={"type": "TEST_EXPLODES"},
        headers={"Authorization": f"Bearer {issued.key}"},
    )
    first = client.get("/dashboard")
    assert first.status_code == 302 and "/dashboard/login" in first.headers["Location"]
    form = client.get("/dashboard/login")
    token = token_from(form.get_data(as_text=True))

    assert client.post("/dashboard/login", data={"api_key": issued.key}).status_code == 400
    wrong = client.post("/dashboard/login", data={"api_key": "ork_nope", "csrf_token": token})
    assert wrong.status_code == 401
    ok = client.post(
        "/dashboard/login",
        data={"api_key": issued.key, "csrf_token": token, "next": "https://evil.example/"},
    )
    assert ok.status_code == 303 and ok.headers["Location"] == "/dashboard"
    cookie = ok.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "Secure" in cookie and issued.key not in cookie

    page = client.get("/dashboard")
    assert page.status_code == 200
    assert "acme" in page.get_data(as_text=True) and "TEST_EXPLODES" in page.get_data(as_text=True)
    out = client.post(
        "/dashboard/logout", data={"csrf_token": token_from(page.get_data(as_text=True))}
    )
    assert out.status_code == 303
    assert client.get("/dashboard").status_code == 302


def test_a_revoked_key_ends_the_session(client: FlaskClient, runtime: Runtime) -> None:
    issued = apikeys.create_key(runtime.database, "acme", "browser")
    token = token_from(client.get("/dashboard/login").get_data(as_text=True))
    client.post("/dashboard/login", data={"api_key": issued.key, "csrf_token": token})
    assert client.get("/dashboard").status_code == 200
    apikeys.revoke_key(runtime.database, issued.id)
    assert client.get("/dashboard").status_code == 302


def test_a_key_for_the_system_tenant_signs_nobody_in(client: FlaskClient, runtime: Runtime) -> None:
    """Made by hand in the database (the CLI refuses to): refused as a wrong key is."""
    issued = apikeys.create_key(runtime.database, runtime.settings.system_tenant, "smuggled")
    token = token_from(client.get("/dashboard/login").get_data(as_text=True))
    refused = client.post("/dashboard/login", data={"api_key": issued.key, "csrf_token": token})
    assert refused.status_code == 401
    assert client.get("/dashboard").status_code == 302


@pytest.mark.parametrize(
    "target", ["/dashboard\r\nSet-Cookie: x=1", "/dashboard\\\\evil.example", "//evil.example"]
)
def test_a_login_never_sends_the_browser_to_a_broken_or_foreign_target(
    client: FlaskClient, runtime: Runtime, target: str
) -> None:
    issued = apikeys.create_key(runtime.database, "acme", "browser")
    token = token_from(client.get("/dashboard/login").get_data(as_text=True))
    data = {"api_key": issued.key, "csrf_token": token, "next": target}
    response = client.post("/dashboard/login", data=data)
    assert (response.status_code, response.headers["Location"]) == (303, "/dashboard")


def test_a_session_naming_another_tenants_key_opens_nothing(
    client: FlaskClient, runtime: Runtime
) -> None:
    """A cookie signed with the app's own key (as anyone could with a known secret) that
    pairs tenant A with tenant B's key: every request checks the key's tenant."""
    victim = apikeys.create_key(runtime.database, "victim", "browser")
    client.post(
        "/v1/jobs",
        json={"type": "TEST_EXPLODES"},
        headers={"Authorization": f"Bearer {victim.key}"},
    )
    intruder = apikeys.create_key(runtime.database, "intruder", "browser")
    with client.session_transaction() as session:
        session["tenant_id"] = "victim"
        session["api_key_id"] = intruder.id
    assert client.get("/dashboard").status_code == 302  # logged out, not victim's page
    with client.session_transaction() as session:
        assert "tenant_id" not in session


def test_development_signs_sessions_with_a_random_key_kept_in_the_state_folder(
    sqlite_url: str, tmp_path: Path
) -> None:
    """Not one derived from the public `dev-secret`: the same for every web process of the
    folder, different for another folder, readable by its owner only."""
    import hashlib  # noqa: PLC0415
    import hmac  # noqa: PLC0415

    def app_key(folder: Path) -> str:
        settings = load_settings(
            env="development", database_url=sqlite_url, dispatch_mode="inline", state_dir=folder
        )
        runtime = Runtime.build(settings)
        try:
            return str(api.create_app(runtime=runtime).secret_key)
        finally:
            runtime.database.dispose()

    first, again, other = app_key(tmp_path / "a"), app_key(tmp_path / "a"), app_key(tmp_path / "b")
    derived = hmac.new(b"dev-secret", b"orchestrator-session", hashlib.sha256).hexdigest()
    assert first == again != other
    assert derived not in (first, other) and len(first) == 64
    assert (tmp_path / "a" / "session.key").stat().st_mode & 0o077 == 0


def _key_in(folder: str) -> str:
    from api.identity import session_secret  # noqa: PLC0415

    return session_secret(load_settings(env="development", state_dir=folder))


def test_web_processes_starting_together_agree_on_the_session_key(tmp_path: Path) -> None:
    """gunicorn starts its workers at once: each must read the one key, never a file half
    written (an empty key turns sessions off)."""
    import multiprocessing  # noqa: PLC0415

    context = multiprocessing.get_context("fork")
    for trial in range(15):
        folder = str(tmp_path / f"trial{trial}")
        with context.Pool(6) as pool:
            keys = pool.map(_key_in, [folder] * 6)
        assert len(set(keys)) == 1 and len(keys[0]) == 64, keys
