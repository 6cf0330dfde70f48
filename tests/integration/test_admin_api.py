"""The admin API on real processes: token, dead letters (list, replay, purge), drain, pause."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest

from tests.support.stack import Stack, wait_until

pytestmark = pytest.mark.integration

TOKEN = "s3cret-admin-token"


def admin_env(gateway_env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    """The token from a secret file, and a file sink that refuses bodies over 400 bytes."""
    secret = tmp_path / "admin_token"
    secret.write_text(TOKEN + "\n")
    return {
        **gateway_env,
        "IOTGW_ADMIN_TOKEN_FILE": str(secret),
        "IOTGW_SINK_MAX_RECORD_BYTES": "400",
    }


def auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKEN}"}


def test_admin_api_is_off_without_a_token(stack: Stack) -> None:
    with stack.client() as client:
        assert client.get("/admin/v1/spool").status_code == 404
        assert client.post("/admin/v1/pause", headers=auth()).status_code == 404


@pytest.mark.slow
def test_dead_letters_list_replay_purge_and_operations(
    gateway_env: dict[str, str], tmp_path: Path
) -> None:
    env = admin_env(gateway_env, tmp_path)
    stack = Stack(env, tmp_path).start()
    try:
        with stack.client() as client:
            assert client.get("/admin/v1/spool").status_code == 401
            wrong = {"Authorization": "Bearer nope"}
            assert client.get("/admin/v1/spool", headers=wrong).status_code == 401
            big_ids = {}
            for device in ("dev-a", "dev-b"):
                for seq in range(3):
                    r = client.post(
                        f"/v1/ingest/{device}",
                        json={"seq": seq, "payload": {"blob": "x" * 500}},
                    )
                    assert r.status_code == 202
                    big_ids[r.json()["id"]] = device
            ok = client.post("/v1/ingest/dev-a", json={"seq": 10, "metrics": {"v": 1}})
            assert ok.status_code == 202

            def dead_count() -> int:
                body = client.get("/admin/v1/spool", headers=auth()).json()
                return int(body["counts"]["Dead"])

            wait_until(lambda: dead_count() == 6, 30, "six dead letters")
            summary = client.get("/admin/v1/spool", headers=auth()).json()
            assert summary["dead_by_reason"] == {"record_too_large": 6}
            assert summary["oldest_dead_age_s"] >= 0 and summary["bytes"] > 0

            # Listing: filter by device, paginate by cursor.
            page1 = client.get(
                "/admin/v1/dead-letters", params={"device_id": "dev-a", "limit": 2}, headers=auth()
            ).json()
            assert len(page1["items"]) == 2 and page1["next"] is not None
            page2 = client.get(
                "/admin/v1/dead-letters",
                params={"device_id": "dev-a", "limit": 2, "after": page1["next"]},
                headers=auth(),
            ).json()
            listed = page1["items"] + page2["items"]
            assert len(listed) == 3 and page2["next"] is None
            assert {i["device_id"] for i in listed} == {"dev-a"}
            assert all(i["reason"].startswith("record_too_large") for i in listed)
            by_reason = client.get(
                "/admin/v1/dead-letters", params={"reason": "other"}, headers=auth()
            ).json()
            assert by_reason["items"] == []
            future = client.get(
                "/admin/v1/dead-letters", params={"since": time.time() + 60}, headers=auth()
            ).json()
            assert future["items"] == []

            # Purge dev-b's dead letters; an empty selection is refused.
            assert (
                client.post("/admin/v1/dead-letters/purge", json={}, headers=auth()).status_code
                == 400
            )
            purged = client.post(
                "/admin/v1/dead-letters/purge", json={"device_id": "dev-b"}, headers=auth()
            ).json()
            assert purged == {"purged": 3}

            # Replay dev-a's after the sink's limit is raised: they are delivered.
            stack.forwarder.stop()
            stack.forwarder.env["IOTGW_SINK_MAX_RECORD_BYTES"] = "131072"
            stack.start_forwarder()
            dev_a_ids = [i["id"] for i in listed]
            replayed = client.post(
                "/admin/v1/dead-letters/replay", json={"ids": dev_a_ids}, headers=auth()
            ).json()
            assert replayed["replayed"] == 3 and replayed["handed_to_stream"] is True
            records = stack.wait_outbox(4)
            assert set(dev_a_ids) <= {r["id"] for r in records}
            assert dead_count() == 0

            # Pause: the forwarder stops delivering; resume: it goes on.
            assert client.post("/admin/v1/pause", headers=auth()).json()["paused"] is True
            time.sleep(2.5)  # longer than the forwarder's poll of the flag
            held = client.post("/v1/ingest/dev-c", json={"seq": 1, "metrics": {"v": 2}})
            assert held.status_code == 202
            time.sleep(2.0)
            assert held.json()["id"] not in {r["id"] for r in stack.records()}
            state = client.get("/admin/v1/spool", headers=auth()).json()
            assert state["paused"] is True and state["counts"]["Enqueued"] >= 1

            # Drain: ingest refuses with 503 and Retry-After.
            assert client.post("/admin/v1/drain", headers=auth()).json()["draining"] is True
            refused = client.post("/v1/ingest/dev-c", json={"seq": 2, "metrics": {"v": 3}})
            assert refused.status_code == 503 and refused.headers["Retry-After"]
            assert refused.json()["code"] == "draining"

            resumed = client.post("/admin/v1/resume", headers=auth()).json()
            assert resumed == {"draining": False, "paused": False}
            again = client.post("/v1/ingest/dev-c", json={"seq": 2, "metrics": {"v": 3}})
            assert again.status_code == 202
            wait_until(
                lambda: (
                    {held.json()["id"], again.json()["id"]} <= {r["id"] for r in stack.records()}
                ),
                30,
                "delivery after resume",
            )
    finally:
        stack.stop()


def test_bad_queries_are_answered_400(gateway_env: dict[str, str], tmp_path: Path) -> None:
    stack = Stack(admin_env(gateway_env, tmp_path), tmp_path)
    stack.start_ingest()
    try:
        with httpx.Client(base_url=stack.base_url, timeout=10) as client:
            bad = client.get("/admin/v1/dead-letters", params={"limit": 0}, headers=auth())
            assert bad.status_code == 400 and bad.json()["code"] == "invalid_query"
            bad = client.get("/admin/v1/dead-letters", params={"since": "x"}, headers=auth())
            assert bad.status_code == 400
            bad = client.post("/admin/v1/dead-letters/replay", json={"bogus": 1}, headers=auth())
            assert bad.status_code == 400 and bad.json()["code"] == "invalid_selection"
    finally:
        stack.stop()


def test_cli_lists_replays_and_purges_with_progress(
    gateway_env: dict[str, str], tmp_path: Path
) -> None:
    import subprocess
    import sys

    env = admin_env(gateway_env, tmp_path)
    stack = Stack(env, tmp_path).start()
    cli_env = {
        **env,
        "IOTGW_ADMIN_URL": stack.base_url,
        "PATH": "/usr/bin:/bin",
    }

    def iotgw(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "iotgw_cli", "admin", *argv],
            env=cli_env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    try:
        with stack.client() as client:
            for seq in range(4):
                r = client.post(
                    "/v1/ingest/dev-cli", json={"seq": seq, "payload": {"blob": "y" * 500}}
                )
                assert r.status_code == 202
            wait_until(
                lambda: client.get("/admin/v1/spool", headers=auth()).json()["counts"]["Dead"] == 4,
                30,
                "four dead letters",
            )
        listed = iotgw("dead", "list", "--device", "dev-cli", "--json")
        assert listed.returncode == 0, listed.stderr
        assert len(json.loads(listed.stdout)) == 4
        replay = iotgw("dead", "replay", "--device", "dev-cli", "--chunk", "2")
        assert replay.returncode == 0, replay.stderr
        assert "4/4 replayed" in replay.stderr  # the progress bar
        assert json.loads(replay.stdout) == {"replayed": 4}
        # Still over the sink's limit: they go Dead again; purge them all.
        with stack.client() as client:
            wait_until(
                lambda: client.get("/admin/v1/spool", headers=auth()).json()["counts"]["Dead"] == 4,
                30,
                "dead again",
            )
        purge = iotgw("dead", "purge", "--all")
        assert purge.returncode == 0 and json.loads(purge.stdout) == {"purged": 4}
        assert json.loads(iotgw("spool").stdout)["counts"]["Dead"] == 0
        cli_env["IOTGW_ADMIN_TOKEN_FILE"] = str(tmp_path / "absent")
        refused = iotgw("spool")
        assert refused.returncode == 1 and "IOTGW_ADMIN_TOKEN_FILE" in refused.stderr
        assert "Traceback" not in refused.stderr
    finally:
        stack.stop()
