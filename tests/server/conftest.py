from __future__ import annotations

import shutil

import pytest

pytest.importorskip("fastapi", reason="the dashboard extra is not installed")

from fastapi.testclient import TestClient  # noqa: E402

import modelhopper as mh  # noqa: E402
from modelhopper.server import create_app  # noqa: E402
from modelhopper.store import (  # noqa: E402
    EpochRecord,
    EventKind,
    ExperimentRecord,
    MSTRecord,
    RunStatus,
    SQLStore,
    StepRecord,
)

TOKEN = "test-token"
SPACE = {"hidden": mh.choice([32, 64, 128]), "lr": mh.loguniform(1e-4, 1e-1), "batch_size": 32}


def make_run(
    store: SQLStore,
    name: str = "fake",
    *,
    n_msts: int = 6,
    n_epochs: int = 3,
    n_workers: int = 2,
    status: RunStatus = RunStatus.RUNNING,
) -> None:
    """A recorded run as the driver writes one: MSTs, visits (steps + events), epochs."""
    space = mh.Space(SPACE)
    store.create_experiment(
        ExperimentRecord(
            name=name, status=status, procedure="RandomSearch",
            spec={"metric": "val_accuracy", "direction": "maximize", "epochs": n_epochs},
            space=space.to_dict(), seed=0, n_workers=n_workers, run_dir=f"/tmp/{name}",
            provenance={"seed": 0, "host": "test"},
        )
    )  # fmt: skip
    store.add_msts(
        name,
        [
            MSTRecord(mst_id=i, params={"hidden": [32, 64, 128][i % 3], "lr": 10 ** -(1 + i % 3),
                      "batch_size": 32}, seed=i, status="running", n_epochs=n_epochs)
            for i in range(n_msts)
        ],
    )  # fmt: skip
    store.add_event(name, EventKind.STARTED, detail={"shard_bytes": [1000] * n_workers})
    for epoch in range(n_epochs):
        for mst in range(n_msts):
            for shard in range(n_workers):
                worker = (shard + mst) % n_workers
                steps = [
                    StepRecord(mst, epoch, kind, shard, shard, worker, 10, 5.0, {"accuracy": 7.0},
                               0.01)
                    for kind in ("train", "eval")
                ]  # fmt: skip
                last = shard == n_workers - 1
                epochs = []
                if last:
                    value = 0.5 + 0.1 * epoch - 0.01 * mst
                    metrics = {"train_loss": 1.0 / (epoch + 1), "val_loss": 1.2 / (epoch + 1),
                               "train_accuracy": value + 0.05, "val_accuracy": value}  # fmt: skip
                    epochs = [EpochRecord(mst, epoch, metrics, list(range(n_workers)),
                                          list(range(n_workers)), 0.02, 0.02)]  # fmt: skip
                hop = {"worker": worker, "steps": 2, "hop": shard > 0, "bytes": 100 * (shard > 0)}
                store.record_visit(name, mst, steps, epochs, {}, [(EventKind.HOPPED, hop)])


def make_two_objective_run(store: SQLStore, name: str = "mo") -> None:
    """A run on two objectives under a constraint: MST 1 is infeasible, 2 is beaten by 3,
    so its Pareto front is MSTs 0 and 3."""
    objectives = {"val_accuracy": "maximize", "val_size": "minimize"}
    store.create_experiment(ExperimentRecord(
        name=name, status=RunStatus.RUNNING, procedure="ASHA",
        spec={"metric": "val_accuracy", "direction": "maximize", "objectives": objectives,
              "constraints": ["val_size <= 350"]},
        space={}, seed=0, n_workers=1, run_dir=f"/tmp/{name}",
    ))  # fmt: skip
    rows = [(0.6, 50), (0.9, 400), (0.7, 300), (0.8, 100)]
    store.add_msts(name, [MSTRecord(mst_id=i, params={"i": i}, seed=i, status="running",
                                    n_epochs=1) for i in range(len(rows))])  # fmt: skip
    for i, (accuracy, size) in enumerate(rows):
        epoch = EpochRecord(i, 0, {"val_accuracy": accuracy, "val_size": size}, [0], [0], 0, 0)
        step = StepRecord(i, 0, "eval", 0, 0, 0, 10, 5.0, {}, 0.01)
        store.record_visit(name, i, [step], [epoch], {}, [(EventKind.EPOCH_END, {"epoch": 0})])


@pytest.fixture(name="make_two_objective_run")
def _make_two_objective_run_fixture():
    return make_two_objective_run


@pytest.fixture(name="make_run")
def _make_run_fixture():
    return make_run


@pytest.fixture
def token():
    return TOKEN


@pytest.fixture(scope="session")
def _recorded(tmp_path_factory):
    """The fake run, recorded once; each test gets its own copy of the database file."""
    path = tmp_path_factory.mktemp("dashboard") / "dash.db"
    with SQLStore(f"sqlite:///{path}") as db:
        make_run(db)
    return path


@pytest.fixture
def store(tmp_path, _recorded):
    shutil.copy(_recorded, tmp_path / "dash.db")
    with SQLStore(f"sqlite:///{tmp_path}/dash.db") as db:
        yield db


@pytest.fixture
def client(store):
    with TestClient(create_app(store, token=TOKEN)) as c:
        yield c


@pytest.fixture
def auth():
    return {"Authorization": f"Bearer {TOKEN}"}
