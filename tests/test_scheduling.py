from __future__ import annotations

import re
from collections import defaultdict

import numpy as np
import pytest

from modelhopper.errors import ConfigError
from modelhopper.scheduling import (
    MOPScheduler,
    SchedulingPolicy,
    Step,
    StepKind,
    Visit,
    epoch_plan,
    first_shard,
    makespan_lower_bound,
    replicated_holdings,
    simulate,
)


def _unit_cost(mst_id: int, step: Step) -> float:
    return 1.0 if step.kind is StepKind.TRAIN else 0.2


def _scheduler(n_msts: int, n_workers: int, n_epochs: int, **kwargs) -> MOPScheduler:
    scheduler = MOPScheduler(n_workers, **kwargs)
    for mst in range(n_msts):
        scheduler.add_mst(mst, n_epochs)
    return scheduler


def _check_invariants(trace, n_workers: int, n_epochs: dict[int, int], holdings=None) -> None:
    """No overlap per worker or per MST; each epoch trains and evaluates on every shard once;
    every step runs on a worker that holds its shard."""
    held = holdings or [(w,) for w in range(n_workers)]
    by_worker = defaultdict(list)
    by_mst = defaultdict(list)
    for start, end, visit in trace:
        by_worker[visit.worker].append((start, end))
        by_mst[visit.mst_id].append((start, end))
        assert all(step.shard in held[visit.worker] for step in visit.steps)
        if holdings is None:
            assert sum(step.kind is StepKind.TRAIN for step in visit.steps) <= 1
    for intervals in [*by_worker.values(), *by_mst.values()]:
        intervals.sort()
        for (_, end), (start, _) in zip(intervals, intervals[1:], strict=False):
            assert start >= end - 1e-9
    steps = defaultdict(list)
    for _, _, visit in sorted(trace, key=lambda t: t[0]):
        for step in visit.steps:
            steps[visit.mst_id, step.epoch, step.kind].append(step.shard)
    for mst, epochs in n_epochs.items():
        for epoch in range(epochs):
            for kind in StepKind:
                assert sorted(steps[mst, epoch, kind]) == list(range(n_workers))


@pytest.mark.parametrize("n_shards", [1, 2, 3, 5])
def test_epoch_plan_visits_every_shard_once_and_chains(n_shards):
    start = 0
    for epoch in range(4):
        train, evaluation = epoch_plan(epoch, start, n_shards, seed=1)
        assert sorted(train) == sorted(evaluation) == list(range(n_shards))
        assert train[0] == start and evaluation[0] == train[-1]
        start = evaluation[-1]


@pytest.mark.parametrize(
    ("n_shards", "visits_per_epoch"),
    [(1, 1), (2, 3), (4, 7)],  # 2p - 1 visits: eval starts where training ended
)
def test_visits_merge_steps_on_the_same_shard(n_shards, visits_per_epoch):
    scheduler = _scheduler(1, n_shards, 1)
    visits = []
    while not scheduler.finished:
        (visit,) = scheduler.assign(range(n_shards))
        scheduler.complete(visit)
        visits.append(visit)
    assert len(visits) == visits_per_epoch
    assert [s.kind for v in visits for s in v.steps].count(StepKind.TRAIN) == n_shards


@pytest.mark.parametrize("policy", list(SchedulingPolicy))
@pytest.mark.parametrize(("n_msts", "n_workers", "n_epochs"), [(8, 2, 3), (5, 4, 2), (3, 3, 1)])
def test_simulated_runs_hold_the_invariants(policy, n_msts, n_workers, n_epochs):
    scheduler = _scheduler(n_msts, n_workers, n_epochs, policy=policy, seed=3)
    result = simulate(scheduler, _unit_cost)
    _check_invariants(result.trace, n_workers, dict.fromkeys(range(n_msts), n_epochs))
    assert scheduler.finished
    assert result.makespan >= result.lower_bound - 1e-9


def test_msts_at_different_epochs_run_side_by_side():
    # One MST is 10x slower: without an epoch barrier the fast ones run ahead.
    scheduler = _scheduler(4, 2, 3, seed=0)
    result = simulate(scheduler, lambda m, s: 10.0 if m == 0 else 1.0)
    concurrent_epochs = set()
    for start, end, visit in result.trace:
        for s2, e2, other in result.trace:
            if other.mst_id != visit.mst_id and s2 < end and start < e2:
                concurrent_epochs.add(visit.steps[0].epoch - other.steps[0].epoch)
    assert max(concurrent_epochs) >= 1


def test_balanced_workload_is_near_the_lower_bound():
    scheduler = _scheduler(8, 2, 3, seed=0)
    result = simulate(scheduler, _unit_cost)
    assert result.makespan <= 1.05 * result.lower_bound


def test_longest_remaining_beats_random_on_heterogeneous_work():
    sizes = np.random.default_rng(0).choice([1.0, 2.0, 5.0, 10.0], size=40)

    def cost(m: int, s: Step) -> float:
        return sizes[m] * (1.0 if s.kind is StepKind.TRAIN else 0.2)

    makespans = {}
    for policy in SchedulingPolicy:
        result = simulate(_scheduler(40, 8, 2, policy=policy, seed=1), cost)
        makespans[policy] = result.makespan / result.lower_bound
    assert makespans[SchedulingPolicy.LONGEST_REMAINING] <= makespans[SchedulingPolicy.RANDOM]
    assert makespans[SchedulingPolicy.LONGEST_REMAINING] < 1.15


def test_oldest_first_finishes_msts_early_in_id_order_and_keeps_workers_busy():
    sizes = np.random.default_rng(2).choice([1.0, 2.0, 5.0], size=24)

    def cost(m: int, s: Step) -> float:
        return sizes[m] * (1.0 if s.kind is StepKind.TRAIN else 0.2)

    def finish_times(result):
        ends: dict[int, float] = {}
        for _, end, visit in result.trace:
            ends[visit.mst_id] = max(end, ends.get(visit.mst_id, 0.0))
        return [ends[m] for m in sorted(ends)]

    oldest = simulate(_scheduler(24, 4, 3, policy="oldest_first", seed=1), cost)
    longest = simulate(_scheduler(24, 4, 3, seed=1), cost)
    early, late = finish_times(oldest), finish_times(longest)
    # Longest-remaining-work advances every MST together: none finishes until near the
    # end. Oldest-first finishes the first MSTs long before, as task-parallel workers do,
    # for a longer makespan (measured here: 220 vs 198, every MST done at 194-198).
    assert np.mean(early) < 0.9 * np.mean(late)
    assert min(early) < 0.35 * oldest.makespan and min(early) < 0.5 * min(late)
    assert np.corrcoef(range(24), early)[0, 1] > 0.8  # roughly in the order they came
    assert oldest.utilisation > 0.85 and oldest.makespan < 1.15 * longest.makespan


def test_oldest_first_lets_an_mst_that_only_evaluates_go_before_an_older_one_that_trains():
    # Two workers, four MSTs of one epoch; completions in a fixed order bring worker 0
    # free while MST 0 waits to train on it and MST 1 waits to evaluate there, the last
    # step of its epoch. The short visit that ends an epoch goes first (the procedure
    # hears sooner); by age alone MST 0 would have gone.
    scheduler = _scheduler(4, 2, 1, policy="oldest_first", seed=0)
    running = {v.mst_id: v for v in scheduler.assign([0, 1])}
    assert {m: v.worker for m, v in running.items()} == {1: 0, 0: 1}

    def complete_then_assign(mst_id: int) -> Visit:
        visit = running.pop(mst_id)
        scheduler.complete(visit, [1.0] * len(visit.steps))
        (new,) = scheduler.assign([visit.worker])
        running[new.mst_id] = new
        return new

    assert complete_then_assign(1).mst_id == 3  # MST 3 starts on worker 0
    assert complete_then_assign(0).mst_id == 1  # MST 1 trains and evaluates on worker 1
    assert complete_then_assign(1).mst_id == 2
    chosen = complete_then_assign(3)  # worker 0 frees: MST 0 trains there, MST 1 evaluates
    assert chosen.mst_id == 1
    assert [s.kind for s in chosen.steps] == [StepKind.EVAL]
    assert complete_then_assign(1).mst_id == 0  # its epoch done, then by age: MST 0 trains
    assert running[0].steps[0].kind is StepKind.TRAIN


def test_an_mst_is_never_on_two_workers_and_a_worker_never_runs_two():
    scheduler = _scheduler(3, 3, 1)
    visits = scheduler.assign([0, 1, 2])
    assert len({v.mst_id for v in visits}) == len(visits)
    with pytest.raises(ConfigError, match="worker 0 is busy"):
        scheduler.assign([visits[0].worker])
    assert scheduler.assign([]) == []


def test_stopped_mst_gets_no_more_visits_and_resume_continues():
    scheduler = _scheduler(2, 2, 2)
    scheduler.stop(0)
    seen = set()
    while not scheduler.finished:
        for visit in scheduler.assign([0, 1]):
            seen.add(visit.mst_id)
            scheduler.complete(visit)
    assert seen == {1}
    assert scheduler.remaining_steps(0) == 8
    scheduler.resume(0)
    assert not scheduler.finished


def test_extend_is_prefix_stable():
    short = _scheduler(1, 3, 1, seed=5)
    long = _scheduler(1, 3, 2, seed=5)
    short.extend(0, 2)
    assert list(short._msts[0].pending) == list(long._msts[0].pending)


def test_requeue_puts_the_steps_back_first():
    scheduler = _scheduler(1, 2, 1)
    (visit,) = scheduler.assign([0, 1])
    scheduler.requeue(visit)
    (again,) = scheduler.assign([0, 1])
    assert again == visit


def test_failed_mst_is_stopped():
    scheduler = _scheduler(2, 2, 1)
    visits = scheduler.assign([0, 1])
    scheduler.fail(visits[0])
    assert scheduler.is_stopped(visits[0].mst_id)


def test_priority_goes_first():
    scheduler = MOPScheduler(1)
    for mst in range(3):
        scheduler.add_mst(mst, 1)
    scheduler.set_priority(2, 5)
    (visit,) = scheduler.assign([0])
    assert visit.mst_id == 2


def test_same_seed_same_plan_and_choices_different_seed_different():
    def run(seed: int):
        result = simulate(_scheduler(6, 3, 2, policy="random", seed=seed), _unit_cost)
        return [(v.mst_id, v.worker, v.steps) for _, _, v in result.trace]

    assert run(0) == run(0)
    assert run(0) != run(1)


@pytest.mark.parametrize(
    ("work", "bound"),
    [
        ([[1, 1], [1, 1]], 2.0),  # total / p
        ([[5, 5], [1, 1]], 10.0),  # longest MST
        ([[4, 1], [4, 1]], 8.0),  # busiest shard
        (np.zeros((0, 2)), 0.0),
    ],
)
def test_makespan_lower_bound(work, bound):
    assert makespan_lower_bound(np.asarray(work, dtype=float)) == bound


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_bad_n_workers_is_rejected(bad):
    with pytest.raises(ConfigError, match=r"n_workers must be an integer >= 1, got"):
        MOPScheduler(bad)


def test_bad_policy_is_rejected():
    with pytest.raises(
        ConfigError, match=r"policy must be one of 'random', 'longest_remaining', 'oldest_first'"
    ):
        MOPScheduler(2, policy="fifo")


def test_unknown_mst_is_rejected():
    with pytest.raises(ConfigError, match=r"MST 9 is not scheduled"):
        MOPScheduler(2).stop(9)


def test_mark_done_skips_the_steps_a_resumed_run_already_ran():
    full = _scheduler(2, 2, 2, seed=4)
    done = []
    for _ in range(3):
        for visit in full.assign([0, 1]):
            full.complete(visit)
            done.append(visit)
    resumed = _scheduler(2, 2, 2, seed=4)
    for mst in (0, 1):
        resumed.mark_done(mst, [s for v in done if v.mst_id == mst for s in v.steps])
        assert list(resumed._msts[mst].pending) == list(full._msts[mst].pending)
    already = done[0].steps[0]
    with pytest.raises(ConfigError, match=f"the train step of epoch 0 on shard {already.shard} is"):
        resumed.mark_done(done[0].mst_id, [already])
    planned = resumed._msts[0].pending[0]
    with pytest.raises(ConfigError, match="a step is named twice"):
        resumed.mark_done(0, [planned, planned])


def _train_one_epoch(scheduler: MOPScheduler, mst: int) -> Step:
    """Run the MST's training steps of its next epoch alone; its first evaluation."""
    while True:
        (visit,) = scheduler.assign([scheduler._msts[mst].pending[0].shard])
        scheduler.complete(visit)
        if visit.steps[-1].kind is StepKind.EVAL:
            return visit.steps[-1]


def test_evaluations_between_the_first_and_last_go_to_whichever_worker_is_free():
    scheduler = _scheduler(1, 5, 2, seed=3)
    train, evaluation = epoch_plan(0, scheduler._msts[0].pending[0].shard, 5, 3)
    first = _train_one_epoch(scheduler, 0)
    assert (first.shard, first.position) == (train[-1], 0)  # with the last training step
    middle, last = evaluation[1:-1], evaluation[-1]
    assert scheduler.assign([last]) == []  # the planned last waits for the others
    taken = []
    for worker in reversed(middle):  # against the plan's order
        (visit,) = scheduler.assign([worker])
        assert visit.steps == (Step(StepKind.EVAL, 0, worker, evaluation.index(worker)),)
        taken.append(worker)
        scheduler.complete(visit)
    (visit,) = scheduler.assign([last])
    assert visit.steps == (Step(StepKind.EVAL, 0, last, 4),)  # the epoch ends there
    scheduler.complete(visit)
    (visit,) = scheduler.assign(range(5))  # the next epoch starts where the last eval ran
    assert visit.worker == last and visit.steps[0] == Step(StepKind.TRAIN, 1, last, 0)


def test_evaluations_run_out_of_plan_order_are_marked_done_on_resume():
    scheduler = _scheduler(1, 4, 2, seed=1)
    _train_one_epoch(scheduler, 0)
    _, evaluation = epoch_plan(0, first_shard_of(scheduler), 4, 1)
    (visit,) = scheduler.assign([evaluation[2]])  # the third planned, run second
    scheduler.complete(visit)
    ran = [s for s in _planned(_scheduler(1, 4, 2, seed=1)) if s not in scheduler._msts[0].pending]
    resumed = _scheduler(1, 4, 2, seed=1)
    resumed.mark_done(0, ran)
    assert list(resumed._msts[0].pending) == list(scheduler._msts[0].pending)
    (visit,) = resumed.assign([evaluation[1]])  # the one skipped over is still to run
    assert visit.steps == (Step(StepKind.EVAL, 0, evaluation[1], 1),)


def first_shard_of(scheduler: MOPScheduler) -> int:
    return _planned(_scheduler(1, scheduler.n_workers, 1, seed=scheduler.seed))[0].shard


def _planned(scheduler: MOPScheduler) -> list[Step]:
    return list(scheduler._msts[0].pending)


def test_an_mst_stopped_at_its_epoch_end_trains_no_further_step():
    def stop_zero(scheduler: MOPScheduler, mst_id: int, epoch: int) -> None:
        if mst_id == 0 and epoch == 0:
            scheduler.stop(0)

    result = simulate(_scheduler(4, 3, 3, seed=2), _unit_cost, on_epoch_end=stop_zero)
    steps = [s for _, _, v in result.trace if v.mst_id == 0 for s in v.steps]
    assert max(s.epoch for s in steps) == 0
    assert len(steps) == 2 * 3  # epoch 0's train and eval steps, nothing after


def test_plans_form_a_latin_square_so_balanced_work_keeps_workers_busy():
    result = simulate(_scheduler(64, 16, 2, seed=0), _unit_cost)
    assert result.makespan <= 1.02 * result.lower_bound


# -- replicas: a worker that holds other shards too ----------------------------------------
@pytest.mark.parametrize(
    ("n_workers", "replicas", "expected"),
    [(3, 1, [(0,), (1,), (2,)]), (3, 2, [(0, 2), (0, 1), (1, 2)]), (2, 2, [(0, 1), (0, 1)])],
)
def test_replicated_holdings_put_each_shard_on_consecutive_workers(n_workers, replicas, expected):
    holdings = replicated_holdings(n_workers, replicas)
    assert [tuple(h) for h in holdings] == expected
    for shard in range(n_workers):
        assert sum(shard in h for h in holdings) == replicas


def test_a_worker_holding_every_shard_runs_a_whole_epoch_in_one_visit():
    scheduler = MOPScheduler(3, holdings=replicated_holdings(3, 3), seed=4)
    scheduler.add_mst(0, 2)
    visits = []
    while not scheduler.finished:
        (visit,) = scheduler.assign([1])  # one worker: it can take every step
        scheduler.complete(visit)
        visits.append(visit)
    assert len(visits) == 2  # one per epoch: the procedure still decides at each epoch's end
    plan = MOPScheduler(3, seed=4)
    plan.add_mst(0, 2)
    planned = list(plan._state(0).pending)
    assert [s for v in visits for s in v.steps] == planned  # the same steps, in plan order


@pytest.mark.parametrize("policy", list(SchedulingPolicy))
@pytest.mark.parametrize(("n_workers", "replicas"), [(4, 2), (3, 3), (5, 3)])
def test_replicas_change_who_runs_a_step_never_the_training_order(policy, n_workers, replicas):
    holdings = replicated_holdings(n_workers, replicas)
    msts = dict.fromkeys(range(7), 3)
    result = simulate(
        _scheduler(7, n_workers, 3, policy=policy, seed=5, holdings=holdings),
        lambda m, s: (1.0 + m % 3) if s.kind is StepKind.TRAIN else 0.2,
    )
    _check_invariants(result.trace, n_workers, msts, holdings)
    alone = simulate(_scheduler(7, n_workers, 3, policy=policy, seed=5), _unit_cost)

    def train_order(trace):
        steps = defaultdict(list)
        for _, _, visit in sorted(trace, key=lambda t: t[0]):
            steps[visit.mst_id] += [s for s in visit.steps if s.kind is StepKind.TRAIN]
        return dict(steps)

    assert train_order(result.trace) == train_order(alone.trace)
    assert result.n_decisions < alone.n_decisions  # fewer, longer visits


@pytest.mark.parametrize(
    ("holdings", "message"),
    [([(0,)], "holdings needs 2 entries"), ([(), (0, 1)], "worker 0 holds shards []"),
     ([(0, 2), (1,)], "all in 0..1"), ([(0,), (0,)], "no worker holds shard(s) [1]")],
)  # fmt: skip
def test_bad_holdings_are_rejected(holdings, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        MOPScheduler(2, holdings=holdings)


@pytest.mark.parametrize("replicas", [0, 3, "2"])
def test_bad_replicas_are_rejected(replicas):
    with pytest.raises(ConfigError, match="replicas"):
        replicated_holdings(2, replicas)


# -- train_order="any": training takes the shards in the order workers come free ------------
def test_any_train_order_trains_on_an_idle_workers_shard_out_of_plan_order():
    scheduler = _scheduler(1, 4, 1, seed=5, train_order="any")
    plan = [s.shard for s in _planned(_scheduler(1, 4, 1, seed=5)) if s.kind is StepKind.TRAIN]
    assert scheduler.assign([plan[2]])[0].steps == (Step(StepKind.TRAIN, 0, plan[2], 0),)
    fixed = _scheduler(1, 4, 1, seed=5)
    assert fixed.assign([plan[2]]) == []  # the fixed order waits for the planned worker


@pytest.mark.parametrize("policy", list(SchedulingPolicy))
@pytest.mark.parametrize(("n_msts", "n_workers", "n_epochs"), [(8, 2, 3), (5, 4, 2), (12, 6, 2)])
def test_any_train_order_holds_the_invariants_and_numbers_positions_as_they_ran(
    policy, n_msts, n_workers, n_epochs
):
    scheduler = _scheduler(n_msts, n_workers, n_epochs, policy=policy, seed=3, train_order="any")
    result = simulate(scheduler, _unit_cost)
    _check_invariants(result.trace, n_workers, dict.fromkeys(range(n_msts), n_epochs))
    positions = defaultdict(list)
    for _, _, visit in sorted(result.trace, key=lambda t: t[0]):
        for step in visit.steps:
            if step.kind is StepKind.TRAIN:
                positions[visit.mst_id, step.epoch].append(step.position)
    assert all(p == list(range(n_workers)) for p in positions.values())
    assert scheduler.finished


def test_any_train_order_waits_less_on_heterogeneous_work_with_one_copy():
    """MSTs of very different speeds: in a fixed order fast ones queue behind slow ones
    for the same worker; taking any untrained shard keeps more workers busy."""
    rng = np.random.default_rng(0)
    speed = rng.uniform(1, 10, size=24)

    def cost(mst_id: int, step: Step) -> float:
        return float(speed[mst_id]) if step.kind is StepKind.TRAIN else 0.1

    makespans = {}
    for order in ("fixed", "any"):
        scheduler = _scheduler(24, 8, 2, seed=1, train_order=order)
        makespans[order] = simulate(scheduler, cost).makespan
    assert makespans["any"] < makespans["fixed"]


def test_any_train_order_resumes_an_epoch_with_the_shards_not_yet_trained_on():
    scheduler = _scheduler(1, 4, 2, seed=2, train_order="any")
    plan = [s.shard for s in _planned(_scheduler(1, 4, 2, seed=2)) if s.kind is StepKind.TRAIN]
    ran = []
    for worker in (plan[3], plan[1]):  # against the plan's order
        (visit,) = scheduler.assign([worker])
        scheduler.complete(visit)
        ran += visit.steps
    assert [(s.shard, s.position) for s in ran] == [(plan[3], 0), (plan[1], 1)]
    resumed = _scheduler(1, 4, 2, seed=2, train_order="any")
    resumed.mark_done(0, ran)
    assert list(resumed._msts[0].pending) == list(scheduler._msts[0].pending)
    rest = [s.shard for s in resumed._msts[0].pending if s.kind is StepKind.TRAIN and s.epoch == 0]
    assert rest == [plan[0], plan[2]]
    with pytest.raises(ConfigError, match="is not among its planned steps"):
        _scheduler(1, 4, 2, seed=2).mark_done(0, ran)  # a fixed order cannot adopt them


def test_bad_train_order_is_rejected():
    with pytest.raises(ConfigError, match="train_order must be 'fixed' .* or 'any'"):
        MOPScheduler(2, train_order="random")


def test_any_train_order_trains_on_every_untrained_shard_a_worker_holds_in_one_visit():
    scheduler = _scheduler(1, 2, 1, seed=3, n_shards=4, train_order="any")  # 0: {0, 2}
    (visit,) = scheduler.assign([0])
    assert [(s.shard, s.position) for s in visit.steps[:2]] in ([(0, 0), (2, 1)], [(2, 0), (0, 1)])
    assert all(s.kind is StepKind.TRAIN for s in visit.steps[:2])


def test_a_new_mst_starts_on_a_holder_of_its_first_shard() -> None:
    holdings = [(0, 2), (1, 3)]  # 4 logical shards on 2 workers
    fixed = MOPScheduler(2, holdings=holdings, n_shards=4, seed=5)
    for mst_id in range(8):
        shard = first_shard(mst_id, 4, 5)
        (worker,) = fixed.first_shard_holders(mst_id)
        assert shard in holdings[worker]
        fixed.add_mst(mst_id, 1)
        (visit,) = fixed.assign([worker])  # its plan starts there
        assert visit.steps[0].shard == shard
        fixed.complete(visit)


def _run_to_the_end(scheduler: MOPScheduler, workers: list[int]) -> list[Visit]:
    """Every visit, in the order assigned, each completed at once (unit step times)."""
    visits: list[Visit] = []
    while not scheduler.finished:
        taken = scheduler.assign(workers)
        assert taken, "nothing runnable, yet work is left"
        for visit in taken:
            scheduler.complete(visit, [1.0] * len(visit.steps))
        visits += taken
    return visits


def test_with_shared_validation_an_epoch_is_evaluated_where_its_training_ends():
    # One MST, 4 workers, 2 epochs: its training still walks the workers (one shard
    # each, in the plan's order), but each epoch's evaluations, on every shard, run in
    # the visit that trains its last shard, on that worker; without sharing, the
    # evaluations walk the workers again.
    shared = _run_to_the_end(_scheduler(1, 4, 2, shared_validation=True), [0, 1, 2, 3])
    walked = _run_to_the_end(_scheduler(1, 4, 2), [0, 1, 2, 3])
    train_order = [[s.shard for v in run for s in v.steps if s.kind is StepKind.TRAIN]
                   for run in (shared, walked)]  # fmt: skip
    assert train_order[0] == train_order[1]  # the same SGD: only where evaluation runs moves
    for epoch in (0, 1):
        ends = [v for v in shared if any(s.kind is StepKind.EVAL and s.epoch == epoch
                                         for s in v.steps)]  # fmt: skip
        assert len(ends) == 1
        (end,) = ends
        evaluated = sorted(s.shard for s in end.steps if s.kind is StepKind.EVAL)
        assert evaluated == [0, 1, 2, 3]
        last_trained = [s for s in end.steps if s.kind is StepKind.TRAIN][-1]
        assert last_trained.is_last(StepKind.TRAIN, 4) and end.worker == last_trained.shard
    assert len(shared) == 8 and len(walked) > len(shared)


def test_with_shared_validation_a_worker_that_left_evaluates_nothing():
    scheduler = _scheduler(2, 3, 1, shared_validation=True)
    scheduler.set_holdings(0, [0, 2])
    scheduler.set_holdings(2, [])  # worker 2 leaves; worker 0 takes its shard
    visits = _run_to_the_end(scheduler, [0, 1])
    assert all(v.worker in (0, 1) for v in visits)
    for mst in (0, 1):
        assert sorted(s.shard for v in visits if v.mst_id == mst
                      for s in v.steps if s.kind is StepKind.EVAL) == [0, 1, 2]  # fmt: skip


@pytest.mark.parametrize("policy", ["longest_remaining", "oldest_first"])
def test_each_visit_goes_to_the_mst_the_policy_names_among_many_waiting(policy) -> None:
    """Many MSTs waiting per worker, steps timed unequally: every visit goes to the MST
    with the most ``remaining_work`` (ties: the lower id), or, oldest first, to the first
    added (one only evaluating ahead of any training), among those waiting for the worker."""
    rng = np.random.default_rng(3)
    scheduler = MOPScheduler(4, policy=policy, seed=5)
    for mst in range(120):
        scheduler.add_mst(mst, int(rng.integers(1, 4)))
    speed = rng.uniform(0.2, 5.0, size=120)
    running: list[Visit] = []
    n_checked = 0
    while not scheduler.finished:
        idle = sorted(set(range(4)) - {v.worker for v in running})
        for worker in idle:
            waiting = [scheduler._msts[i] for i in scheduler._waiting[worker]]
            if not waiting:
                assert scheduler.assign([worker]) == []
                continue
            if policy == "longest_remaining":
                work = {s.mst_id: scheduler.remaining_work(s.mst_id) for s in waiting}
                expected = max(work, key=lambda i: (work[i], -i))
            else:
                evaluating = [s.mst_id for s in waiting if s.pending[0].kind is StepKind.EVAL]
                expected = min(evaluating or [s.mst_id for s in waiting])
            (visit,) = scheduler.assign([worker])
            assert visit.mst_id == expected
            running.append(visit)
            n_checked += 1
        done = running.pop(int(rng.integers(len(running))))
        scheduler.complete(done, [speed[done.mst_id]] * len(done.steps))
    assert n_checked > 400


@pytest.mark.parametrize("policy", ["longest_remaining", "oldest_first"])
def test_indexed_picks_are_those_of_a_pass_over_every_waiting_mst(policy) -> None:
    """The index behind the default policy and oldest first against the plain pass
    (``_pick``) at every decision: many MSTs on workers holding two shards each with
    replicas (an MST waits on several workers), step times from a few values (equal
    sums, and sums equal only after rounding), priorities changed, MSTs stopped,
    resumed, held and extended."""
    rng = np.random.default_rng(11)
    holdings = replicated_holdings(6, 2, 6)
    scheduler = MOPScheduler(6, policy=policy, seed=2, n_shards=6, holdings=holdings)
    chosen_by_pass = []
    choose = scheduler._choose

    def checked(worker):
        waiting = [scheduler._msts[i] for i in scheduler._waiting[worker]]
        got = choose(worker)
        assert (got is None) == (not waiting)
        if waiting:
            assert got is scheduler._pick(waiting), worker
            chosen_by_pass.append(got.mst_id)
        return got

    scheduler._choose = checked
    seconds = [0.1, 0.2, 0.3, 1 / 3, 0.7]
    for mst in range(60):
        scheduler.add_mst(mst, int(rng.integers(1, 4)), priority=int(rng.integers(0, 2)))
    running: list[Visit] = []
    held: set[int] = set()
    for _ in range(3000):
        if scheduler.finished and not held:
            break
        idle = sorted(set(range(6)) - {v.worker for v in running})
        running += scheduler.assign(idle)
        mst = int(rng.integers(60))
        state = scheduler._msts[mst]
        roll = rng.random()
        if roll < 0.05:
            scheduler.set_priority(mst, int(rng.integers(0, 3)))
        elif roll < 0.08 and not state.running and not state.stopped and mst not in held:
            scheduler.stop(mst)
            scheduler.resume(mst)
        elif roll < 0.11 and not state.running and mst not in held:
            scheduler.hold(mst)
            held.add(mst)
        elif roll < 0.16 and held:
            scheduler.unhold(held.pop())
        elif roll < 0.18 and not state.stopped:
            scheduler.extend(mst, state.n_epochs + 1)
        if running:
            done = running.pop(int(rng.integers(len(running))))
            scheduler.complete(done, [seconds[int(rng.integers(5))] for _ in done.steps])
    assert len(chosen_by_pass) > 1000


def test_the_pick_index_breaks_ties_that_only_rounding_makes_by_the_lower_id() -> None:
    """Two measured parts that differ but give the same work once the group's shared
    term is added: the lower id goes first, as the plain pass (max of work, then -id)."""
    from modelhopper._pick_index import PickIndex, file_in

    index = PickIndex()
    measured = {5: 2.0**-53, 2: 0.0, 9: -1.0}
    for mst, part in measured.items():
        file_in((index,), mst, ("group",), part, ties=True)
    work = {mst: 1.0 + part for mst, part in measured.items()}  # 1 + 2**-53 rounds to 1
    assert work[5] == work[2] == 1.0
    assert index.pick(work.__getitem__, lambda mst: 0) == 2
    index.discard(2)
    assert index.pick(work.__getitem__, lambda mst: 0) == 5
    index.discard(5)
    index.discard(9)
    assert index.pick(work.__getitem__, lambda mst: 0) is None and len(index) == 0


def test_the_pick_index_for_longest_remaining_work_relies_on_two_step_kinds() -> None:
    """``_work_parts`` orders a group by its measured part because, with two kinds, the
    work is one rounded sum of it and the group's shared term; a third kind needs a
    new argument there."""
    assert [kind.value for kind in StepKind] == ["train", "eval"]
