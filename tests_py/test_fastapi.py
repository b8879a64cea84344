"""The rollout admin router: Bearer token against a SHA-256 hash, validation, audit lines."""

from __future__ import annotations

import hashlib
import logging
import warnings
from collections.abc import Iterator

import pytest
from fastapi import FastAPI

with warnings.catch_warnings():
    # On Python 3.10 starlette's TestClient can only use httpx (httpx2 needs 3.11+) and says so.
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    from fastapi.testclient import TestClient

from sark_native.fastapi import admin_router
from sark_native.flags import FeatureFlags

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def flags() -> FeatureFlags:
    return FeatureFlags()


@pytest.fixture
def client(flags: FeatureFlags) -> Iterator[TestClient]:
    app = FastAPI()
    app.include_router(admin_router(flags, token_sha256=hashlib.sha256(TOKEN.encode()).hexdigest()))
    with TestClient(app) as c:
        yield c


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": TOKEN},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": f"Bearer {hashlib.sha256(TOKEN.encode()).hexdigest()}"},
    ],
)
def test_requests_without_the_token_are_401(client: TestClient, headers: dict[str, str]) -> None:
    assert client.get("/admin/rollout", headers=headers).status_code == 401
    r = client.post(
        "/admin/rollout/update", json={"feature": "f", "percentage": 10}, headers=headers
    )
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == "Bearer"
    assert (
        client.post("/admin/rollout/rollback", json={"feature": "f"}, headers=headers).status_code
        == 401
    )


def test_update_list_rollback_with_audit(
    client: TestClient, flags: FeatureFlags, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="sark_native.audit"):
        r = client.post(
            "/admin/rollout/update", json={"feature": "rust_opa", "percentage": 25}, headers=AUTH
        )
        assert r.status_code == 200, r.text
        assert r.json() == {"feature": "rust_opa", "percentage": 25, "previous": 0}
        assert flags.get_rollout("rust_opa") == 25
        listed = client.get("/admin/rollout", headers=AUTH).json()
        assert listed == {"features": {"rust_opa": 25}, "redis": False, "healthy": True}
        r = client.post("/admin/rollout/rollback", json={"feature": "rust_opa"}, headers=AUTH)
        assert r.json() == {"feature": "rust_opa", "percentage": 0, "previous": 25}
    lines = [rec.getMessage() for rec in caplog.records if rec.name == "sark_native.audit"]
    assert lines == [
        "rollout update by admin@testclient: feature=rust_opa before=0 after=25",
        "rollout rollback by admin@testclient: feature=rust_opa before=25 after=0",
    ]


@pytest.mark.parametrize(
    "body",
    [
        {"feature": "f", "percentage": 101},
        {"feature": "f", "percentage": -1},
        {"feature": "f", "percentage": 50.5},
        {"feature": "f", "percentage": "50"},
        {"feature": "f", "percentage": True},
        {"feature": "f", "percentage": None},
        {"feature": "", "percentage": 5},
        {"feature": "a b", "percentage": 5},
        {"feature": 7, "percentage": 5},
        {"percentage": 5},
        {"feature": "f"},
        {"feature": "f", "percentage": 5, "extra": 1},
    ],
)
def test_bad_values_are_422_and_change_nothing(
    client: TestClient,
    flags: FeatureFlags,
    body: dict[str, object],
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.INFO, logger="sark_native.audit"):
        r = client.post("/admin/rollout/update", json=body, headers=AUTH)
    assert r.status_code == 422, r.text
    assert flags.rollouts() == {}
    assert not [rec for rec in caplog.records if rec.name == "sark_native.audit"]


def test_named_tokens_say_who(flags: FeatureFlags, caplog: pytest.LogCaptureFixture) -> None:
    app = FastAPI()
    hashes = {name: hashlib.sha256(name.encode() * 2).hexdigest() for name in ("alice", "bob")}
    app.include_router(admin_router(flags, token_sha256=hashes))
    with TestClient(app) as c, caplog.at_level(logging.INFO, logger="sark_native.audit"):
        r = c.post(
            "/admin/rollout/update",
            json={"feature": "f", "percentage": 5},
            headers={"Authorization": "Bearer bobbob"},
        )
        assert r.status_code == 200
    assert "by bob@testclient" in caplog.records[-1].getMessage()


@pytest.mark.parametrize("bad", ["", "abc", "z" * 64, {}])
def test_bad_token_hash_is_refused_at_construction(flags: FeatureFlags, bad: object) -> None:
    with pytest.raises(ValueError, match="token_sha256"):
        admin_router(flags, token_sha256=bad)  # type: ignore[arg-type]


def test_redis_down_is_503(private_redis: object) -> None:
    from conftest import RedisServer

    assert isinstance(private_redis, RedisServer)
    flags = FeatureFlags(redis=private_redis.url)
    app = FastAPI()
    app.include_router(admin_router(flags, token_sha256=hashlib.sha256(TOKEN.encode()).hexdigest()))
    private_redis.kill()
    with TestClient(app) as c:
        r = c.post("/admin/rollout/update", json={"feature": "f", "percentage": 5}, headers=AUTH)
        assert r.status_code == 503
        c.portal.call(flags.aclose)
