"""RayExecutor on a real multi-node Ray cluster on loopback (head + worker nodes, one machine).

Each node is its own raylet and object store, so these tests see what a
cluster would: where shards live, state crossing nodes, an actor or a whole
node dying mid-run.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
import torch
from torch import nn

import modelhopper as mh
from modelhopper.store import EventKind, SQLStore

pytestmark = pytest.mark.slow

N_NODES = 3  # two for the workers, one spare to take over a dead node's shard
# Seconds for actors (and replacements) to start: each is a new process that imports
# torch, slow when another test file keeps both cores busy (the default is 120).
START_TIMEOUT = 600.0


def make_estimator(p):
    model = nn.Sequential(
        nn.Linear(64, p["hidden"]), nn.ReLU(), nn.Dropout(0.1), nn.Linear(p["hidden"], 10)
    )
    return mh.Estimator(
        model=model,
        optimizer=torch.optim.Adam(model.parameters(), lr=p["lr"]),
        loss=nn.CrossEntropyLoss(),
        metrics=["accuracy"],
        batch_size=16,
    )


def _search():
    space = {"hidden": mh.grid([32, 64]), "lr": mh.grid([1e-3, 3e-3])}
    return mh.GridSearch(
        make_estimator, space, epochs=3, metric="val_accuracy", direction="maximize", seed=5
    )


@pytest.fixture(scope="module")
def cluster(ray_cluster):
    return ray_cluster(n_nodes=N_NODES)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    folder = tmp_path_factory.mktemp("local")
    data = mh.datasets.digits(seed=0)
    return _search().fit(data, n_workers=2, run_dir=folder, progress=False,
                         executor=mh.LocalExecutor(threads_per_worker=1))  # fmt: skip


def _metrics(result: mh.Result) -> dict[int, list[dict]]:
    history = result.history().drop(columns=["train_seconds", "eval_seconds"])
    return {mst: rows.to_dict("records") for mst, rows in history.groupby("mst_id")}


def _fit(executor, tmp_path, name="run"):
    url = f"sqlite:///{tmp_path}/db.sqlite"
    data = mh.datasets.digits(seed=0)
    result = _search().fit(data, n_workers=2, executor=executor, run_name=name, store=url,
                           run_dir=tmp_path / "run", progress=False)  # fmt: skip
    return result, url


def test_each_node_holds_only_its_shard_and_state_crosses_nodes(cluster, reference, tmp_path):
    executor = mh.RayExecutor(resources_per_worker={"CPU": 1}, start_timeout=START_TIMEOUT)
    result, _ = _fit(executor, tmp_path)
    nodes = executor.worker_nodes
    head = cluster.head_node.node_id
    assert len(set(nodes)) == 2 and head not in nodes  # one worker per worker node
    shard_bytes = executor.resident_shard_bytes
    assert executor.shard_bytes_per_node() == {nodes[0]: shard_bytes[0], nodes[1]: shard_bytes[1]}
    assert sum(shard_bytes) == result.stats.dataset_bytes  # one copy across the cluster
    # With one worker per node, every hop is a state crossing from one node to the other.
    assert result.stats.n_hops > 0 and result.stats.hop_bytes > 0
    assert _metrics(result) == _metrics(reference)


def test_shards_shipped_once_to_nodes_that_cannot_read_the_path(reference, tmp_path, cluster):
    executor = mh.RayExecutor(data="ship", start_timeout=START_TIMEOUT)
    result, _ = _fit(executor, tmp_path)
    assert executor.shipped_bytes >= result.stats.dataset_bytes  # arrays plus shard.json
    assert result.stats.shard_bytes_moved == executor.shipped_bytes + executor.copied_bytes
    copies = executor.shard_paths
    assert all("modelhopper-shards" in path for path in copies)  # node-local copies, not ours
    assert not any(os.path.exists(path) for path in copies)  # removed at shutdown
    assert _metrics(result) == _metrics(reference)


def _image_estimator(p):
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 16), nn.ReLU(), nn.Linear(16, 10))
    return mh.Estimator(
        model=model, optimizer=torch.optim.SGD(model.parameters(), lr=p["lr"]),
        loss=nn.CrossEntropyLoss(), batch_size=32, eval_transform=lambda x: x.float() / 255,
        train_transform=mh.per_example(lambda x: x.flip(-1).float() / 255),
    )  # fmt: skip


def test_each_shard_is_built_on_its_workers_node_and_built_again_where_it_is_lost(
    cluster, tmp_path
):
    """An image folder on several nodes: each shard is built by a Ray task on the node its
    worker then runs on (nothing shipped, the driver writes no shard file); a replacement
    that finds its node's shard gone builds it again there; results equal a local run."""
    root = mh.datasets.fashion_mnist_folder(tmp_path / "images", limit=240)
    data = mh.Dataset.from_image_folder(root, fractions=(0.75, 0.25, 0.0))
    search = mh.GridSearch(_image_estimator, {"lr": mh.grid([0.05, 0.01])}, epochs=3, seed=3)
    local = search.fit(data, n_workers=2, run_dir=tmp_path / "local", progress=False,
                       executor=mh.LocalExecutor(threads_per_worker=1))  # fmt: skip

    executor = mh.RayExecutor(max_restarts=2, start_timeout=START_TIMEOUT)
    shard_0 = tmp_path / "run" / "shards" / "shard-0"

    def lose_shard_0_and_kill_its_worker(ex):
        # On one machine the nodes share a disk: deleting the folder is how worker 0's
        # node "lacks" its shard (its open memory maps stay valid until it dies).
        for file in shard_0.iterdir():
            if file.is_file():
                file.unlink()
        os.kill(ex.pids[0], signal.SIGKILL)

    killer = _Killer(executor, f"sqlite:///{tmp_path}/db.sqlite", 6,
                     lose_shard_0_and_kill_its_worker)  # fmt: skip
    killer.start()
    on_ray = search.fit(data, n_workers=2, executor=executor, run_name="run", keep_shards=True,
                        store=f"sqlite:///{tmp_path}/db.sqlite", run_dir=tmp_path / "run",
                        progress=False)  # fmt: skip
    killer.join(timeout=5)
    assert killer.done.is_set() and executor.restarts == [1, 0]
    head = cluster.head_node.node_id
    assert executor.build_nodes == executor.worker_nodes and head not in executor.build_nodes
    assert len(set(executor.worker_nodes)) == 2  # each shard on its own worker's node
    assert executor.shipped_bytes == 0 and executor.rebuilt_shards == 1
    assert (shard_0 / "train_x.arrow").is_file()  # built again, on worker 0's node
    assert on_ray.provenance["data_sha256"] == local.provenance["data_sha256"]
    assert _metrics(on_ray) == _metrics(local)


@pytest.fixture()
def add_node(cluster):
    """Adds a 1-CPU worker node to the cluster when called; after the test, those still
    there are removed as long as the cluster keeps the worker nodes it had before (a test
    may have removed one of those)."""
    before = len(cluster.worker_nodes)
    added = []

    def add():
        added.append(cluster.add_node(num_cpus=1, object_store_memory=80 * 2**20))
        cluster.wait_for_nodes()
        return added[-1]

    yield add
    for node in added:
        alive = {n.node_id for n in cluster.worker_nodes}
        if node.node_id in alive and len(alive) > before:
            cluster.remove_node(node)


@pytest.fixture(scope="module")
def four_shards(tmp_path_factory):
    """The fixed pool's run over 4 logical shards, on local processes."""
    folder = tmp_path_factory.mktemp("four-shards")
    return _search().fit(mh.datasets.digits(seed=0), n_workers=2, n_shards=4, run_dir=folder,
                         progress=False,
                         executor=mh.LocalExecutor(threads_per_worker=1, replicas=1))  # fmt: skip


def test_workers_join_on_a_new_node_and_leave_and_results_do_not_change(
    cluster, add_node, four_shards, tmp_path, monkeypatch, plan_metrics
):
    """4 logical shards on 2 nodes; mid-run a node joins the cluster and a third worker is
    added (Ray places it there, the only node with room), and worker 0 is removed later: the shards
    they gain are copied actor to actor (data='ship': no node reads the driver's folder),
    never sent again by the driver, and every epoch's metrics equal the fixed pool's."""
    from modelhopper import _driver
    from modelhopper.commands import submit

    data = mh.datasets.digits(seed=0)
    url = f"sqlite:///{tmp_path}/db.sqlite"
    store = SQLStore(url)
    commits: list[int] = []
    plan = {1: {"add": 1}, 6: {"remove": 0}}
    joined, shipped = [], []
    executor = mh.RayExecutor(data="ship", start_timeout=START_TIMEOUT)

    def steer() -> None:  # commands go in at chosen commits: they land mid-run, whatever the load
        commits.append(1)
        if (payload := plan.get(len(commits))) is not None:
            if "add" in payload:
                shipped.append(executor.shipped_bytes)
                joined.append(add_node())
            submit(store, "elastic", "workers", payload)

    monkeypatch.setitem(_driver.FAULTS, "record_committed", steer)
    monkeypatch.setattr(_driver, "COMMAND_POLL_SECONDS", 0.0)
    monkeypatch.setattr(_driver, "RECORD_INTERVAL_SECONDS", 0.0)
    result = _search().fit(data, n_workers=2, n_shards=4, executor=executor, store=url,
                           run_name="elastic", run_dir=tmp_path / "run",
                           progress=False)  # fmt: skip
    assert plan_metrics(result) == plan_metrics(four_shards)
    assert executor.worker_nodes[2] == joined[0].node_id  # the joiner went to the new node
    assert executor.resident_shard_bytes[0] == 0  # worker 0 left
    # The driver shipped the shards at the start only; re-homed ones went actor to actor.
    assert executor.shipped_bytes == shipped[0] and executor.copied_bytes > 0
    changes = [e.detail["workers"] for e in store.list_events("elastic")
               if e.kind is EventKind.WORKERS_CHANGED]  # fmt: skip
    assert changes == [[0, 1, 2], [1, 2]]
    assert {s.worker for s in store.list_steps("elastic")} == {0, 1, 2}
    store.close()


def test_the_pool_follows_nodes_that_join_and_leave_and_results_do_not_change(
    cluster, add_node, four_shards, tmp_path, monkeypatch, plan_metrics
):
    """follow_cluster=True: a node that joins mid-run gets a worker, pinned to it; when
    that node leaves, its worker leaves the run (not replaced elsewhere) and its shards
    come back from the source; every epoch's metrics equal the fixed pool's."""
    from modelhopper import _driver

    data = mh.datasets.digits(seed=0)
    url = f"sqlite:///{tmp_path}/db.sqlite"
    store = SQLStore(url)
    commits: list[int] = []
    joined: list = []
    left: list = []

    def steer() -> None:  # at chosen commits: the changes land mid-run, whatever the load
        commits.append(1)
        if len(commits) == 1:
            joined.append(add_node())
        trained_there = any(s.worker == 2 for s in store.list_steps("follow"))
        if joined and not left and len(commits) >= 6 and trained_there:
            cluster.remove_node(joined[0])
            left.append(joined[0])

    monkeypatch.setitem(_driver.FAULTS, "record_committed", steer)
    monkeypatch.setattr(_driver, "POOL_POLL_SECONDS", 0.0)
    monkeypatch.setattr(_driver, "RECORD_INTERVAL_SECONDS", 0.0)
    executor = mh.RayExecutor(data="ship", follow_cluster=True, start_timeout=START_TIMEOUT)
    result = _search().fit(data, n_workers=2, n_shards=4, executor=executor, store=url,
                           run_name="follow", run_dir=tmp_path / "run",
                           progress=False)  # fmt: skip
    assert plan_metrics(result) == plan_metrics(four_shards)
    assert left and executor.worker_nodes[2] == joined[0].node_id
    assert executor.restarts == [0, 0, 0]  # worker 2 left; nobody was started again
    assert executor.resident_shard_bytes[2] == 0
    changes = [e.detail for e in store.list_events("follow")
               if e.kind is EventKind.WORKERS_CHANGED]  # fmt: skip
    assert [(c["workers"], c["cause"]) for c in changes] == [
        ([0, 1, 2], "joined"), ([0, 1], "lost")
    ]  # fmt: skip
    assert result.stats.n_workers == 3
    store.close()


def test_a_dead_node_with_replicas_loses_no_shard_and_nothing_is_sent_again(
    cluster, add_node, reference, tmp_path
):
    """replicas=2: every shard lives on both workers, so the actor that replaces a dead
    node's copies its shards from the other holder; the driver sends nothing again."""
    add_node()  # room for the dead node's worker
    executor = mh.RayExecutor(data="ship", replicas=2, max_restarts=2,
                              start_timeout=START_TIMEOUT)  # fmt: skip
    shipped = []

    def remove_worker_0_node(ex):
        shipped.append(ex.shipped_bytes)
        cluster.remove_node(next(n for n in cluster.worker_nodes
                                 if n.node_id == ex.worker_nodes[0]))  # fmt: skip

    killer = _Killer(executor, f"sqlite:///{tmp_path}/db.sqlite", 8, remove_worker_0_node)
    killer.start()
    result, _ = _fit(executor, tmp_path)
    killer.join(timeout=5)
    assert killer.done.is_set() and executor.restarts[0] >= 1
    assert executor.shipped_bytes == shipped[0]  # no shard sent again after the start
    assert executor.copied_bytes >= result.stats.dataset_bytes  # the new actor's two shards
    assert list(result.stats.resident_shard_bytes) == [result.stats.dataset_bytes] * 2
    assert _metrics(result) == _metrics(reference)


class _Killer(threading.Thread):
    """Once the run has recorded ``after`` steps, kill worker 0's actor or its whole node."""

    def __init__(self, executor, url, after, kill):
        super().__init__(daemon=True)
        self.executor, self.url, self.after, self.kill = executor, url, after, kill
        self.done = threading.Event()

    def run(self):
        deadline = time.monotonic() + 300
        store = SQLStore(self.url)
        try:
            while time.monotonic() < deadline:
                try:
                    if len(store.list_steps("run")) >= self.after:
                        break
                except mh.StoreError:
                    pass  # the run is not recorded yet
                time.sleep(0.05)
            self.kill(self.executor)
            self.done.set()
        finally:
            store.close()


def test_a_killed_actor_is_replaced_on_its_node_and_results_do_not_change(
    cluster, reference, tmp_path
):
    executor = mh.RayExecutor(max_restarts=2, start_timeout=START_TIMEOUT)
    killer = _Killer(executor, f"sqlite:///{tmp_path}/db.sqlite", 8,
                     lambda ex: os.kill(ex.pids[0], signal.SIGKILL))  # fmt: skip
    killer.start()
    result, url = _fit(executor, tmp_path)
    killer.join(timeout=5)
    assert killer.done.is_set()
    nodes_before = executor.worker_nodes
    assert executor.restarts[0] == 1 and len(set(nodes_before)) == 2
    assert _metrics(result) == _metrics(reference)
    events = SQLStore(url).list_events("run")
    assert any(e.kind is EventKind.WORKER_RESTARTED and e.worker == 0 for e in events)


def test_a_dead_node_moves_its_shard_to_another_node_and_results_do_not_change(
    cluster, reference, tmp_path
):
    spare = cluster.add_node(num_cpus=1, object_store_memory=80 * 2**20)
    cluster.wait_for_nodes()
    executor = mh.RayExecutor(max_restarts=2, start_timeout=START_TIMEOUT)

    removed = []

    def remove_worker_0_node(ex):
        node = next(n for n in cluster.worker_nodes if n.node_id == ex.worker_nodes[0])
        removed.append(node.node_id)
        cluster.remove_node(node)

    killer = _Killer(executor, f"sqlite:///{tmp_path}/db.sqlite", 8, remove_worker_0_node)
    killer.start()
    result, _ = _fit(executor, tmp_path)
    killer.join(timeout=5)
    assert killer.done.is_set() and executor.restarts[0] >= 1
    # Worker 0 and its shard moved to the one node left with a free CPU.
    alive = {n.node_id for n in cluster.worker_nodes}
    assert removed[0] not in alive and spare.node_id in alive | set(removed)
    assert set(executor.worker_nodes) <= alive and len(set(executor.worker_nodes)) == 2
    assert executor.resident_shard_bytes == list(result.stats.resident_shard_bytes)
    assert _metrics(result) == _metrics(reference)
