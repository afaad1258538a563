"""bench/anytime.py's pieces: the peers' simulated clock is modelhopper's, to the second."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import modelhopper as mh

pytest.importorskip("onnxruntime")
sys.path.insert(0, str(Path(__file__).parent.parent / "bench"))

from _anytime_peers import Job, simulate  # noqa: E402
from anytime import (  # noqa: E402
    MH_METHODS,
    RESULTS,
    _procedure,
    distinct_runs,
    improvements,
    incumbent_at,
    kept_for,
    main,
    regret,
    sized_for,
)
from anytime_mo import fronts_kept, hypervolume  # noqa: E402
from anytime_mo import main as main_mo  # noqa: E402

from modelhopper.testing import (  # noqa: E402
    LCBench,
    SurrogateExecutor,
    surrogate_dataset,
    surrogate_estimator,
)

TASK = 3945
CONFIG = {"batch_size": 64, "learning_rate": 0.01, "momentum": 0.9, "weight_decay": 0.01,
          "num_layers": 3, "max_units": 256, "max_dropout": 0.2}  # fmt: skip


class _Fixed:
    """One configuration, trained whole, again and again; it hears every epoch."""

    def __init__(self, stop_after: int = 52) -> None:
        self.stop_after = stop_after
        self.asked = 0

    def ask(self) -> Job:
        self.asked += 1
        return Job(dict(CONFIG), 52, report_each=True)

    def report(self, job: Job, epoch: int, accuracy: float) -> bool:
        return epoch < self.stop_after

    def done(self, job: Job, accuracy: float) -> None:
        pass


@pytest.fixture(scope="module")
def bench() -> LCBench:
    return LCBench()


def test_the_peers_clock_is_the_surrogate_executors(bench: LCBench, tmp_path: Path) -> None:
    executor = SurrogateExecutor(task=TASK, bench=bench)
    space = {name: mh.choice([value]) for name, value in CONFIG.items()}
    mh.RandomSearch(surrogate_estimator, space, n_msts=1, epochs=52, seed=0).fit(
        surrogate_dataset(1), n_workers=1, executor=executor,
        store=f"sqlite:///{tmp_path}/runs.db", run_dir=tmp_path / "run", progress=False,
    )  # fmt: skip
    engine = [(executor.epoch_times[0, e], executor.epoch_accuracy[0, e]) for e in range(52)]
    heard = simulate(_Fixed(), bench, TASK, 1, stop_at=engine[-1][0])
    assert [t for t, _ in heard] == pytest.approx([t for t, _ in engine], rel=1e-12)
    assert [a for _, a in heard] == [a for _, a in engine]


def test_a_stopped_job_frees_its_worker_and_time_stops_at_stop_at(bench: LCBench) -> None:
    peer = _Fixed(stop_after=3)
    curve = bench.curves(TASK, [bench.config(CONFIG)])
    accuracy = [float(a) / 100 for a in curve["val_accuracy"][0, :3]]
    seconds = [float(s) for s in curve["epoch_seconds"][0, :3]]
    stop_at = 4.5 * sum(seconds)  # 4 whole jobs per worker, then part of a fifth
    heard = simulate(peer, bench, TASK, 2, stop_at=stop_at)
    # Each worker trains the 3-epoch job from epoch 1 again as soon as it stops.
    expected = sorted(
        (sum(seconds) * job + sum(seconds[: e + 1]), worker, job, e)
        for worker in range(2) for job in range(5) for e in range(3)
    )  # fmt: skip
    expected = [(t, accuracy[e]) for t, _, _, e in expected if t <= stop_at]
    assert heard == [(pytest.approx(t, rel=1e-12), a) for t, a in expected]
    assert peer.asked == 2 * 5
    assert incumbent_at(heard, 0.0) == -math.inf and regret(-math.inf, 1, 0) == 1.0
    assert incumbent_at(heard, stop_at) == max(accuracy)
    assert regret(max(accuracy), 1.0, 0.5) == pytest.approx((1 - max(accuracy)) / 0.5)


def test_hypervolume_is_the_area_the_front_dominates_in_the_normalised_box():
    box = {"worst": 0.5, "best": 0.9, "top": 0.9, "fastest": 1.0, "slowest": 11.0}
    assert hypervolume([], box) == 0.0
    assert hypervolume([(0.9, 1.0)], box) == pytest.approx(1.0)  # the ideal corner
    # (accuracy 0.7, 6 s): 0.5 of the accuracy span, from 0.5 of the seconds span on
    assert hypervolume([(0.7, 6.0)], box) == pytest.approx(0.5 * 0.5)
    two = [(0.7, 6.0), (0.8, 8.0)]  # a staircase: 0.5 x (0.7 - 0.5) + 0.75 x (1 - 0.7)
    assert hypervolume(two, box) == pytest.approx(0.5 * 0.2 + 0.75 * 0.3)
    assert hypervolume([*two, (0.6, 9.0)], box) == hypervolume(two, box)  # dominated
    assert hypervolume([(0.4, 2.0), (0.95, 12.0)], box) == 0.0  # outside the box


def test_only_a_rise_of_the_best_accuracy_is_kept_and_the_incumbent_is_unchanged():
    heard = [(3.0, 0.5), (1.0, 0.6), (2.0, 0.4), (4.0, 0.7), (4.0, 0.65), (5.0, 0.7)]
    kept = improvements(heard)
    assert kept == [(1.0, 0.6), (4.0, 0.7)]
    for moment in (0.5, 1.0, 2.5, 4.0, 9.0):
        assert incumbent_at(kept, moment) == incumbent_at(sorted(heard), moment)


def test_a_results_file_keeps_the_incumbent_at_each_moment_and_the_best():
    heard = [(1.0, 0.1), (2.0, 0.2), (3.0, 0.3), (4.0, 0.4), (9.0, 0.9)]
    kept = kept_for(heard, [0.5, 2.5, 3.0, 5.0])
    assert kept == [(2.0, 0.2), (3.0, 0.3), (4.0, 0.4), (9.0, 0.9)]
    for moment in (0.5, 2.5, 3.0, 5.0):
        assert incumbent_at(kept, moment) == incumbent_at(heard, moment)
    assert kept_for([], [1.0]) == []


# each benchmark: its main, its files' stem and two methods of the same algorithm
BENCHMARKS = {
    "regret": (main, "anytime", ["mh ASHA (stopping, oldest first)", "Syne Tune ASHA"]),
    "hypervolume": (main_mo, "anytime_mo",
                    ["mh MO-ASHA (stopping, oldest first)", "Syne Tune MOASHA"]),
}  # fmt: skip


def _measure(kind: str, tmp_path: Path, tag: str, *args: str, methods: list | None = None) -> dict:
    run, _, both = BENCHMARKS[kind]
    methods = methods or both
    common = ["--max-budget", "3", "--workers", "4", "--tasks", str(TASK), "--jobs", "1"]
    return run([*common, "--methods", *methods, "--out", str(tmp_path), "--tag", tag, *args])


@pytest.mark.parametrize("kind", BENCHMARKS)
def test_seeds_run_apart_and_merged_make_the_table_of_one_run(tmp_path: Path, kind: str) -> None:
    pytest.importorskip("syne_tune")
    run, stem, _ = BENCHMARKS[kind]
    together = _measure(kind, tmp_path, "both", "--seeds", "2")
    _measure(kind, tmp_path, "first", "--seeds", "1")
    _measure(kind, tmp_path, "second", "--seeds", "1", "--first-seed", "1")
    files = [str(tmp_path / f"{stem}_{tag}.json") for tag in ("first", "second")]
    merged = run(["--merge", *files, "--out", str(tmp_path), "--tag", "merged"])
    assert merged["seeds"] == 2 and (merged["first_seed"], merged["last_seed"]) == (0, 1)
    for key in ("table", "curves", "verdicts", "best_hypervolume"):
        assert merged.get(key) == together.get(key), key
    text = (tmp_path / f"{stem}_merged.md").read_text()
    assert "seeds 2 (0-1)" in text
    # the utilisation paragraph where the runs measured it, never an empty one
    assert ("worker utilisation" in text) == (kind == "regret")
    with pytest.raises(SystemExit, match="more than one file"):
        run(["--merge", files[0], files[0], "--out", str(tmp_path), "--tag", "twice"])
    ours = BENCHMARKS[kind][2][0]
    assert "Seeds per method" not in text  # every method ran the same seeds
    kept = run(["--merge", *files, "--methods", ours, "--out", str(tmp_path), "--tag", "ours"])
    table = kept["table"]["4"] if kind == "regret" else kept["table"]  # by workers, or not
    assert set(table) == {ours} and kept["seeds"] == 2
    with pytest.raises(SystemExit, match="no run of"):
        run(["--merge", *files, "--methods", "mh Nothing", "--out", str(tmp_path), "--tag", "x"])
    # a third seed of ours alone: the table says how many seeds each method has
    _measure(kind, tmp_path, "third", "--seeds", "1", "--first-seed", "2", methods=[ours])
    third = str(tmp_path / f"{stem}_third.json")
    uneven = run(["--merge", *files, third, "--out", str(tmp_path), "--tag", "uneven"])
    peer = BENCHMARKS[kind][2][1]
    assert uneven["seeds_per_method"] == {ours: 3, peer: 2}
    text = (tmp_path / f"{stem}_uneven.md").read_text()
    assert (
        f"Seeds per method (the merged files ran different seeds of each): {ours} 3, {peer} 2"
        in text
    )


def test_a_multi_objective_results_file_keeps_each_moments_front_and_its_hypervolume():
    rng = np.random.default_rng(0)
    heard = [(float(t), float(a), float(s)) for t, a, s in zip(
        rng.integers(0, 50, 300), rng.uniform(0.5, 0.9, 300).round(2),
        rng.uniform(1, 11, 300).round(1), strict=True)]  # fmt: skip
    # a slow, accurate point on every front from the start, heard again later; and one
    # after every moment
    heard += [(0.0, 0.93, 9.5), (49.0, 0.93, 9.5), (60.0, 0.95, 0.5)]
    box = {"worst": 0.5, "best": 0.9, "top": 0.95, "fastest": 1.0, "slowest": 11.0}
    moments = [5.0, 12.5, 30.0, 49.0]
    kept = fronts_kept(heard, moments)
    assert len(kept) < len(heard) / 5 and set(kept) <= set(heard)
    assert (60.0, 0.95, 0.5) in kept  # the end's front: HV* and the box read it
    assert (0.0, 0.93, 9.5) in kept and (49.0, 0.93, 9.5) not in kept  # the first heard
    for moment in [*moments, 100.0]:
        by_then = [(a, s) for t, a, s in heard if t <= moment]
        kept_then = [(a, s) for t, a, s in kept if t <= moment]
        assert hypervolume(kept_then, box) == hypervolume(by_then, box)
    assert fronts_kept([], moments) == []


def test_multi_objective_files_of_different_worker_counts_are_not_merged(tmp_path: Path) -> None:
    pytest.importorskip("syne_tune")
    _measure("hypervolume", tmp_path, "four", "--seeds", "1")
    _measure("hypervolume", tmp_path, "eight", "--seeds", "1", "--first-seed", "1",
             "--workers", "8")  # fmt: skip
    files = [str(tmp_path / f"anytime_mo_{tag}.json") for tag in ("four", "eight")]
    with pytest.raises(SystemExit, match="different numbers of workers"):
        main_mo(["--merge", *files, "--out", str(tmp_path), "--tag", "mixed"])


def test_a_matrix_cell_reads_the_run_sized_for_its_budget_and_each_run_once() -> None:
    def run(seed: int, budget: float, seconds: float, task: int = TASK) -> dict[str, Any]:
        return {"task": task, "seed": seed, "budget": budget, "real_seconds": seconds}

    runs = [run(0, 300, 9.0), run(0, 100, 3.0), run(1, 300, 8.0), run(0, 30, 1.0, task=7593)]
    assert sized_for(runs, 100) == [runs[1], runs[2]]  # seed 0: sized for 100, not 300
    assert sized_for(runs, 300) == [runs[0], runs[2]]
    assert sized_for(runs, 30) == [runs[1], runs[2], runs[3]]
    assert sized_for(runs, 1000) == []
    plain = [{"task": TASK, "seed": 0}]  # a run of one results file ran to every budget
    assert sized_for(plain, 300) == plain
    key = ("m", TASK, 0, 4)
    # a run read to 100 FTE in a merge, to 300 in its own file, and again to 100; another
    # run of the seed sized for 100: in any order, each is read once, the copy to 300
    copies = [run(0, 100, 3.0), run(0, 300, 3.0), run(0, 100, 3.0), run(0, 100, 1.0)]
    for order in (copies, copies[::-1]):
        assert distinct_runs(order, key) == [run(0, 100, 1.0), run(0, 300, 3.0)]
    with pytest.raises(SystemExit, match="more than one file to 100 FTE"):
        distinct_runs([*copies, run(0, 100, 2.0)], key)


@pytest.fixture(scope="module")
def budget_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Results files of different budgets: ours to 3 FTE (seed 0; its payload too); the
    peer and our seed 1 to 1 FTE; our seed 0 again, to 1 FTE."""
    pytest.importorskip("syne_tune")
    out = tmp_path_factory.mktemp("budgets")
    ours, peer = BENCHMARKS["regret"][2]
    long = _measure("regret", out, "long", "--seeds", "1", methods=[ours])  # to 3 FTE
    short = ["--seeds", "1", "--max-budget", "1"]
    _measure("regret", out, "short", *short, methods=[peer])
    _measure("regret", out, "second", *short, "--first-seed", "1", methods=[ours])
    _measure("regret", out, "again", *short, methods=[ours])
    paths = {tag: str(out / f"anytime_{tag}.json") for tag in ("long", "short", "second", "again")}
    return {"out": out, "long_run": long, **paths}


def test_files_run_to_different_budgets_merge_up_to_the_smaller(
    budget_files: dict[str, Any],
) -> None:
    ours, peer = BENCHMARKS["regret"][2]
    out = str(budget_files["out"])
    files = [budget_files["long"], budget_files["short"]]
    with pytest.raises(SystemExit, match="one --max-budget"):
        main(["--merge", *files, "--out", out, "--tag", "mixed"])
    past = r"past the budget these files ran to: .*short\.json \(1\)"
    with pytest.raises(SystemExit, match=past):
        main(["--merge", *files, "--up-to", "3", "--out", out, "--tag", "past"])
    with pytest.raises(SystemExit, match="--up-to must be one of those"):
        main(["--merge", files[0], "--up-to", "2.5", "--out", out, "--tag", "between"])
    with pytest.raises(SystemExit):  # argparse's usage error: --up-to reads files
        main(["--up-to", "1", "--out", out, "--tag", "nothing"])
    # read up to 1 FTE, the 3-FTE file says what it said at 1 FTE, exactly
    alone = main(["--merge", files[0], "--up-to", "1", "--out", out, "--tag", "alone"])
    at_one = [p for p in budget_files["long_run"]["curves"]["4"][ours] if p["budget"] == 1.0]
    assert alone["table"]["4"][ours]["1"] == {k: at_one[0][k] for k in ("mean", "se", "seeds")}
    assert max(p["budget"] for p in alone["curves"]["4"][ours]) == 1.0
    both = main(["--merge", *files, "--up-to", "1", "--out", out, "--tag", "both"])
    assert set(both["table"]["4"]) == {ours, peer} and both["max_budget"] == 1.0
    assert f"| {ours} | " in (budget_files["out"] / "anytime_both.md").read_text()


def test_a_matrix_reads_each_run_to_its_own_budget_and_counts_the_seeds_of_each_cell(
    budget_files: dict[str, Any],
) -> None:
    ours, peer = BENCHMARKS["regret"][2]
    out, folder = str(budget_files["out"]), budget_files["out"]
    files = [budget_files[tag] for tag in ("long", "short", "second")]
    whole = main(["--merge", *files, "--matrix", "--out", out, "--tag", "matrix"])
    rows = whole["table"]["4"]
    # ours: seeds 0 and 1 at 1 FTE, only seed 0 ran to 3; the peer never reached 3 FTE
    assert {b: cell["seeds"] for b, cell in rows[ours].items()} == {"1": 2, "3": 1}
    assert set(rows[peer]) == {"1"} and rows[peer]["1"]["seeds"] == 1
    assert whole["real_seconds"] == sum(run["real_seconds"] for run in whole["runs"])
    # at 1 FTE the matrix is the merge of the same runs up to 1 FTE, exactly
    capped = main(["--merge", *files, "--up-to", "1", "--out", out, "--tag", "capped"])
    assert {m: row["1"] for m, row in rows.items()} == {
        m: row["1"] for m, row in capped["table"]["4"].items()
    }
    text = (folder / "anytime_matrix.md").read_text()
    assert f"| {peer} | " in text and " (2) | " in text and text.count(" | - |") == 1
    # the verdict at 1 FTE, each side's mean with its seeds
    (verdict,) = whole["verdicts"]  # none at 3 FTE: the peer never got there
    means = f"{rows[ours]['1']['mean']:.4f} (2) | {rows[peer]['1']['mean']:.4f} (1) |"
    assert verdict.startswith(f"| 4 | {ours} | {peer} | 1 | {means}")
    assert not list(folder.glob("anytime_matrix_*.png"))  # no curves whose seeds change
    # our seed 0 run again, sized for 1 FTE: both runs are kept, each read where it counts
    again = main(["--merge", *files, budget_files["again"], "--matrix", "--out", out,
                  "--tag", "again"])  # fmt: skip
    assert {b: cell["seeds"] for b, cell in again["table"]["4"][ours].items()} == {"1": 2, "3": 1}
    mine = [(r["seed"], r["budget"]) for r in again["runs"] if r["method"] == ours]
    assert sorted(mine) == [(0, 1.0), (0, 3.0), (1, 1.0)]
    # one run read through two files (a file and a merge of it) counts once; two runs
    # of one method, task, seed and workers to one budget are an error
    twice = main(["--merge", *files, files[1], "--matrix", "--out", out, "--tag", "twice"])
    assert twice["table"] == whole["table"]
    other = json.loads(Path(files[1]).read_text())
    other["runs"] = [{**run, "real_seconds": run["real_seconds"] + 1} for run in other["runs"]]
    (folder / "other.json").write_text(json.dumps(other))
    with pytest.raises(SystemExit, match="more than one file to 1 FTE"):
        main(["--merge", *files, str(folder / "other.json"), "--matrix", "--out", out,
              "--tag", "clash"])  # fmt: skip
    with pytest.raises(SystemExit, match="no run of"):
        main(["--merge", *files, "--matrix", "--methods", "mh Nothing", "--out", out,
              "--tag", "x"])  # fmt: skip
    with pytest.raises(SystemExit, match="is a --matrix table"):
        main(["--merge", str(folder / "anytime_matrix.json"), "--out", out, "--tag", "x"])
    with pytest.raises(SystemExit):  # argparse's usage error: --matrix reads to each budget
        main(["--merge", *files, "--matrix", "--up-to", "1", "--out", out, "--tag", "x"])


def test_the_committed_matrix_is_what_its_results_files_make(tmp_path: Path) -> None:
    """bench/results/anytime_matrix.* is `make bench-anytime-matrix`'s output for the
    files committed beside it: a seed added to MATRIX_SOURCES without rewriting it fails."""
    committed = json.loads((RESULTS / "anytime_matrix.json").read_text())
    remade = main(["--matrix", "--out", str(tmp_path), "--tag", "matrix"])
    for key in ("table", "verdicts", "seeds_per_method", "real_seconds"):
        assert remade[key] == committed[key], key
    text = (RESULTS / "anytime_matrix.md").read_text()
    assert text.split("\n", 3)[3] == (tmp_path / "anytime_matrix.md").read_text().split("\n", 3)[3]


@pytest.mark.parametrize(
    "method", [m for m in MH_METHODS if m.startswith(("mh ASHA", "mh Hyperband"))]
)
def test_each_halving_method_builds_the_procedure_its_name_describes(method: str) -> None:
    """The words in brackets set the sampler, the mode, the bracket order and weights
    and the policy: a result row is the configuration it is named after."""
    settings = _procedure(method, seed=0, budget=30, n_workers=4).settings()
    sampler = next((s for s in ("kde", "tpe") if f"({s}," in method), "random")
    assert settings["sampler"] == sampler
    assert settings["mode"] == ("stopping" if "stopping" in method else "promotion")
    assert settings["policy"] == (
        "oldest_first" if "oldest first" in method else "longest_remaining"
    )
    if method.startswith("mh Hyperband"):
        assert settings["bracket_order"] == (
            "random" if "random brackets" in method else "interleaved"
        )
        weights = "equal_epochs" if "equal epochs" in method else "geometric"
        assert settings["bracket_weights"] == weights


def test_every_same_algorithm_pair_names_methods_the_benchmark_runs() -> None:
    """A verdict is only written for names in SAME_ALGORITHM: a misspelt one would drop
    its comparison from every table without a word."""
    import anytime
    import anytime_mo
    from _anytime_peers import MO_PEERS, PEERS

    for ours, peers in anytime.SAME_ALGORITHM.items():
        assert ours in anytime.MH_METHODS, ours
        assert set(peers) <= set(PEERS), peers
    for ours, peer in anytime_mo.SAME_ALGORITHM.items():
        assert ours in anytime_mo.MH_METHODS, ours
        assert peer in MO_PEERS, peer
