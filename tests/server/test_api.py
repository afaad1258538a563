"""The dashboard's REST API: every endpoint, its auth, its errors (TestClient, no server)."""

from __future__ import annotations

import importlib.util

import pytest
from fastapi.testclient import TestClient

from modelhopper.errors import ConfigError
from modelhopper.server import create_app, new_token, require_dashboard
from modelhopper.store import CommandStatus, RunStatus


def _error(response, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "detail"}
    assert "Traceback" not in body["error"]
    return body["error"]


# -- reads ---------------------------------------------------------------------------
def test_runs_list_and_run_detail(client, store, make_run):
    make_run(store, "done", n_msts=2, status=RunStatus.COMPLETED)
    runs = client.get("/api/runs").json()
    assert [r["name"] for r in runs] == ["done", "fake"]  # newest first
    assert runs[1]["n_msts"] == 6 and runs[1]["metric"] == "val_accuracy"
    run = client.get("/api/runs/fake").json()
    assert run["space"]["lr"]["type"] == "loguniform" and run["n_workers"] == 2
    assert client.get("/api/runs/fake/provenance").json() == {"seed": 0, "host": "test"}


def test_msts_of_a_run_with_several_objectives_mark_its_pareto_front(
    client, store, make_two_objective_run
):
    make_two_objective_run(store)
    items = client.get("/api/runs/mo/msts").json()["items"]
    # 1 is infeasible (size > 350), 2 is beaten by 3: the front is 0 and 3
    assert {m["mst_id"]: m["pareto"] for m in items} == {0: True, 1: False, 2: False, 3: True}
    assert client.get("/api/runs/mo/msts/3").json()["pareto"] is True
    assert client.get("/api/runs/fake/msts/0").json()["pareto"] is False  # one objective


def test_unknown_run_is_a_404_naming_it(client):
    for path in ("", "/msts", "/curves", "/epochs", "/events", "/timeline", "/resources"):
        assert "no run named 'nope'" in _error(client.get(f"/api/runs/nope{path}"), 404)


def test_msts_page_sorts_filters_and_paginates(client):
    page = client.get("/api/runs/fake/msts", params={"limit": 2}).json()
    assert page["total"] == page["n_msts"] == 6 and [m["mst_id"] for m in page["items"]] == [0, 1]
    first = page["items"][0]
    assert first["epochs_done"] == 3 and first["best"] == pytest.approx(0.7)
    assert first["last"] == pytest.approx(0.7) and first["best_epoch"] == 2
    assert first["metrics"]["val_loss"] == pytest.approx(0.4)
    worst = client.get("/api/runs/fake/msts", params={"sort": "best", "order": "asc"}).json()
    assert [m["mst_id"] for m in worst["items"]] == [5, 4, 3, 2, 1, 0]
    paged = client.get("/api/runs/fake/msts", params={"offset": 4, "limit": 10}).json()
    assert [m["mst_id"] for m in paged["items"]] == [4, 5]
    by_param = client.get("/api/runs/fake/msts", params={"sort": "param:hidden", "order": "desc"})
    assert [m["params"]["hidden"] for m in by_param.json()["items"]][:2] == [128, 128]
    hidden = client.get("/api/runs/fake/msts", params={"q": "hidden=64"}).json()
    assert [m["mst_id"] for m in hidden["items"]] == [1, 4] and hidden["total"] == 2
    assert client.get("/api/runs/fake/msts", params={"status": "stopped"}).json()["total"] == 0


def test_msts_bad_query_parameters_are_422_with_the_rule(client):
    assert "sort must be one of mst_id" in _error(
        client.get("/api/runs/fake/msts", params={"sort": "__class__"}), 422
    )
    message = _error(client.get("/api/runs/fake/msts", params={"limit": 0}), 422)
    assert "limit" in message and "greater than or equal to 1" in message
    assert "order" in _error(client.get("/api/runs/fake/msts", params={"order": "up"}), 422)


def test_one_mst_and_unknown_mst(client):
    assert client.get("/api/runs/fake/msts/3").json()["params"]["hidden"] == 32
    assert "has no MST 99" in _error(client.get("/api/runs/fake/msts/99"), 404)
    assert "mst_id" in _error(client.get("/api/runs/fake/msts/-1"), 422)


def test_curves_top_msts_chosen_ids_and_downsampling(client, store, make_run):
    curves = client.get("/api/runs/fake/curves", params={"top": 2}).json()
    assert curves["metric"] == "val_accuracy" and curves["epochs"] == [0, 1, 2]
    assert [s["mst_id"] for s in curves["series"]] == [0, 1]  # the two best
    assert curves["series"][0]["values"] == pytest.approx([0.5, 0.6, 0.7])
    assert curves["series"][0]["params"]["lr"] == pytest.approx(0.1)
    chosen = client.get("/api/runs/fake/curves", params={"mst_ids": "5,3", "metric": "val_loss"})
    assert [s["mst_id"] for s in chosen.json()["series"]] == [3, 5]
    assert chosen.json()["series"][0]["values"] == pytest.approx([1.2, 0.6, 0.4])
    make_run(store, "long", n_msts=1, n_epochs=30)
    long = client.get("/api/runs/long/curves", params={"max_points": 5}).json()
    assert long["epochs"] == [0, 7, 14, 22, 29]  # evenly spread, first and last kept
    assert "comma-separated" in _error(
        client.get("/api/runs/fake/curves", params={"mst_ids": "1,x"}), 422
    )


def test_curves_of_an_unknown_metric_are_a_404_naming_the_known_ones(client, store, make_run):
    message = _error(client.get("/api/runs/fake/curves", params={"metric": "bogus"}), 404)
    assert message == (
        "run 'fake' has no metric 'bogus'; its metrics are "
        "['train_accuracy', 'train_loss', 'val_accuracy', 'val_loss']"
    )
    make_run(store, "new", n_msts=1, n_epochs=0)  # no epoch yet: the run's metric only
    assert client.get("/api/runs/new/curves", params={"metric": "val_accuracy"}).status_code == 200
    message = _error(client.get("/api/runs/new/curves", params={"metric": "val_loss"}), 404)
    assert "its metrics are ['val_accuracy']" in message


def test_epoch_history_is_paginated(client):
    page = client.get("/api/runs/fake/epochs", params={"limit": 4, "offset": 2}).json()
    assert page["total"] == 18
    assert [(e["mst_id"], e["epoch"]) for e in page["items"]] == [(0, 2), (1, 0), (1, 1), (1, 2)]
    one = client.get("/api/runs/fake/epochs", params={"mst_id": 4}).json()
    assert one["total"] == 3 and one["items"][1]["metrics"]["val_accuracy"] == pytest.approx(0.56)


def test_events_after_an_id(client):
    events = client.get("/api/runs/fake/events", params={"limit": 3}).json()
    assert [e["kind"] for e in events] == ["started", "hopped", "hopped"]
    later = client.get("/api/runs/fake/events", params={"after_id": events[-1]["id"]}).json()
    assert later[0]["id"] == events[-1]["id"] + 1 and len(later) == 36 - 2


def test_timeline_visits_hops_and_utilisation(client):
    timeline = client.get("/api/runs/fake/timeline").json()
    assert timeline["n_workers"] == 2 and len(timeline["visits"]) == 36
    visit = timeline["visits"][0]
    assert visit["steps"] == 2 and visit["end"] - visit["start"] == pytest.approx(0.02)
    assert sum(v["hop"] for v in timeline["visits"]) == 18  # each MST's second shard
    busy = [w["busy_seconds"] for w in timeline["workers"]]
    assert sum(busy) == pytest.approx(72 * 0.01)
    for worker in timeline["workers"]:
        assert worker["utilisation"] == pytest.approx(
            worker["busy_seconds"] / timeline["wall_seconds"]
        )
    last = client.get("/api/runs/fake/timeline", params={"last": 5}).json()
    assert len(last["visits"]) == 5 and last["visits"][-1] == timeline["visits"][-1]


def test_resources_live_and_completed(client, store):
    live = client.get("/api/runs/fake/resources").json()
    assert live["source"] == "measured so far"
    assert live["compute_seconds"] == pytest.approx(0.72) and live["n_steps"] == 72
    assert (live["n_visits"], live["n_hops"], live["hop_bytes"]) == (36, 18, 1800)
    assert live["resident_shard_bytes"] == [1000, 1000] and live["data_copies"] == 1.0
    stats = {
        "n_workers": 2, "wall_seconds": 2.0, "total_seconds": 3.0, "compute_seconds": 3.0,
        "n_visits": 36, "n_hops": 18, "hop_bytes": 1800, "resident_shard_bytes": [1000, 1000],
        "dataset_bytes": 2000, "lower_bound_seconds": 1.5, "n_steps": 72, "record_seconds": 0.1,
    }  # fmt: skip
    from modelhopper.store import EventKind

    store.add_event("fake", EventKind.COMPLETED, detail=stats)
    done = client.get("/api/runs/fake/resources").json()
    assert done["source"] == "completed run" and done["efficiency"] == pytest.approx(0.75)
    assert done["lower_bound_seconds"] == 1.5


# -- commands ---------------------------------------------------------------------------
COMMANDS = [
    ("/api/runs/fake/msts/1/stop", None, "stop", {"mst_id": 1}),
    ("/api/runs/fake/msts/2/clone", {"changes": {"lr": 0.001}, "epochs": 4}, "clone",
     {"mst_id": 2, "changes": {"lr": 0.001}, "warm_start": True, "epochs": 4}),
    ("/api/runs/fake/msts/2/priority", {"priority": 7}, "priority", {"mst_id": 2, "priority": 7}),
    ("/api/runs/fake/msts", {"params": {"hidden": 64, "lr": 0.01}}, "add",
     {"params": {"hidden": 64, "lr": 0.01}, "epochs": None, "priority": 0}),
]  # fmt: skip


@pytest.mark.parametrize(("path", "body", "kind", "payload"), COMMANDS)
def test_commands_need_the_token(client, store, path, body, kind, payload):
    assert "needs the dashboard's token" in _error(client.post(path, json=body), 401)
    wrong = client.post(path, json=body, headers={"Authorization": "Bearer guess"})
    assert "not this dashboard's" in _error(wrong, 401)
    assert wrong.headers["www-authenticate"] == "Bearer"
    assert store.list_commands("fake") == []  # nothing queued


@pytest.mark.parametrize(("path", "body", "kind", "payload"), COMMANDS)
def test_commands_are_queued_in_the_store(client, store, auth, path, body, kind, payload):
    response = client.post(path, json=body, headers=auth)
    assert response.status_code == 202, response.text
    (command,) = store.list_commands("fake")
    assert (command.kind, command.payload, command.status) == (kind, payload, CommandStatus.PENDING)
    assert response.json()["id"] == command.id and response.json()["status"] == "pending"
    listed = client.get("/api/runs/fake/commands").json()
    assert [c["id"] for c in listed] == [command.id]
    assert client.get(f"/api/runs/fake/commands/{command.id}").json()["kind"] == kind
    assert "no command 999" in _error(client.get("/api/runs/fake/commands/999"), 404)


def test_resume_goes_through_the_store_for_a_stopped_mst(client, store, auth):
    assert "not stopped" in _error(client.post("/api/runs/fake/msts/0/resume", headers=auth), 409)
    store.update_mst("fake", 0, status="stopped")
    assert client.post("/api/runs/fake/msts/0/resume", headers=auth).status_code == 202
    assert [c.kind for c in store.list_commands("fake")] == ["resume"]


BAD = [
    ("/api/runs/fake/msts/1/clone", {"changes": {"lr": 5}}, 422, "is outside [0.0001, 0.1]"),
    ("/api/runs/fake/msts/1/clone", {"changes": {"hidden": 33}}, 422, "hidden"),
    ("/api/runs/fake/msts/1/clone", {"changes": {"depth": 3}}, 422, "unknown name 'depth'"),
    ("/api/runs/fake/msts/1/clone", {"changes": {}, "epochs": 0}, 422, "epochs"),
    ("/api/runs/fake/msts/1/clone", {"changes": {}, "extra": 1}, 422, "extra"),
    ("/api/runs/fake/msts/1/clone", {"changes": "__import__('os')"}, 422, "changes"),
    ("/api/runs/fake/msts", {"params": {"lr": 0.01}}, 422, "missing 'hidden'"),
    ("/api/runs/fake/msts", {}, 422, "params"),
    ("/api/runs/fake/msts/1/priority", {"priority": "high"}, 422, "priority"),
    ("/api/runs/fake/msts/1/priority", {"priority": 10**12}, 422, "priority"),
    ("/api/runs/fake/msts/99/stop", None, 404, "has no MST 99"),
    ("/api/runs/nope/msts/1/stop", None, 404, "no run named 'nope'"),
    ("/api/runs/nope/msts", {"params": {"lr": 0.01}}, 404, "no run named 'nope'"),
]


@pytest.mark.parametrize(("path", "body", "status", "message"), BAD)
def test_bad_commands_are_rejected_with_a_clear_message(
    client, store, auth, path, body, status, message
):
    assert message in _error(client.post(path, json=body, headers=auth), status)
    assert store.list_commands("fake") == []


def test_malformed_json_body_is_a_422(client, auth):
    response = client.post(
        "/api/runs/fake/msts/1/clone",
        content=b"{not json",
        headers={**auth, "Content-Type": "application/json"},
    )
    assert "JSON" in _error(response, 422)


def test_a_body_over_the_limit_is_a_413_before_it_is_read(client, store, auth):
    from modelhopper.server._app import MAX_BODY_BYTES

    assert MAX_BODY_BYTES == 2**20
    path = "/api/runs/fake/msts/1/clone"
    as_json = {**auth, "Content-Type": "application/json"}
    big = b'{"changes": {}, "pad": "' + b"x" * MAX_BODY_BYTES + b'"}'
    message = _error(client.post(path, content=big, headers=as_json), 413)
    assert message.startswith("the request body is larger than 1,048,576 bytes")

    def chunks():  # no Content-Length: the limit holds as the body streams in
        for _ in range(3):
            yield b"x" * (MAX_BODY_BYTES // 2)

    streamed = client.post(path, content=chunks(), headers=auth)
    assert "larger than 1,048,576 bytes" in _error(streamed, 413)
    assert store.list_commands("fake") == []
    at_limit = b'{"changes": {"lr": 0.001}}'.ljust(MAX_BODY_BYTES)  # JSON allows the spaces
    response = client.post(path, content=at_limit, headers=as_json)
    assert response.status_code == 202, response.text


def test_commands_reach_only_a_running_run(client, store, auth, make_run):
    make_run(store, "done", n_msts=2, status=RunStatus.COMPLETED)
    message = _error(client.post("/api/runs/done/msts/1/stop", headers=auth), 409)
    assert "run 'done' is completed" in message


# -- errors, pages, docs ---------------------------------------------------------------------
def test_unexpected_errors_are_json_without_a_traceback(store, token, monkeypatch):
    app = create_app(store, token=token)
    monkeypatch.setattr(app.state.reader, "list_runs", lambda: 1 / 0)
    with TestClient(app, raise_server_exceptions=False) as client:
        message = _error(client.get("/api/runs"), 500)
    assert message == "internal error (ZeroDivisionError); the dashboard's log has the details"


def test_unknown_path_is_a_json_404(client):
    assert "no such page or endpoint: /api/nothing" in _error(client.get("/api/nothing"), 404)


def test_pages_and_docs(client):
    assert "fake" in client.get("/").text
    page = client.get("/runs/fake")
    assert page.status_code == 200 and "val_accuracy" in page.text
    assert "no run named 'nope'" in _error(client.get("/runs/nope"), 404)
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert "/api/runs/{run}/msts/{mst_id}/clone" in paths
    assert client.get("/static/uPlot.iife.min.js").status_code == 200


def test_token_from_the_environment_or_random(monkeypatch):
    monkeypatch.setenv("MODELHOPPER_TOKEN", "from-env")
    assert new_token() == "from-env"
    monkeypatch.delenv("MODELHOPPER_TOKEN")
    assert new_token() != new_token() and len(new_token()) >= 40
    with pytest.raises(ConfigError, match="token must be a non-empty string"):
        create_app(None, token="")  # type: ignore[arg-type]


def test_missing_extra_names_the_install_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "fastapi" else real(name)
    )
    with pytest.raises(ConfigError, match=r"fastapi.*pip install 'modelhopper\[dashboard\]'"):
        require_dashboard()


def test_events_newest_and_without_visits(client, store):
    from modelhopper.store import EventKind

    store.add_event("fake", EventKind.MST_STOPPED, mst_id=2)
    newest = client.get("/api/runs/fake/events", params={"newest": True, "limit": 2}).json()
    assert [e["kind"] for e in newest] == ["hopped", "mst_stopped"]
    assert newest[0]["id"] < newest[1]["id"]  # still oldest first
    store.add_event("fake", EventKind.EPOCH_END, mst_id=2, detail={"epoch": 3})
    runs = client.get("/api/runs/fake/events", params={"skip_visits": True}).json()
    assert [e["kind"] for e in runs] == ["started", "mst_stopped"]
