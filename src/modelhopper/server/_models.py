"""Request and response bodies of the REST API (pydantic): they are its OpenAPI schema."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, JsonValue

__all__ = [
    "AddIn",
    "CloneIn",
    "CommandOut",
    "CurvesOut",
    "EpochPage",
    "ErrorOut",
    "EventOut",
    "MSTOut",
    "MSTPage",
    "PriorityIn",
    "ResourcesOut",
    "RunDetailOut",
    "RunOut",
    "TimelineOut",
]

MAX_EPOCHS = 100_000
MAX_PRIORITY = 1_000_000
MAX_PARAMS = 200


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CloneIn(_In):
    """Clone an MST into a new one with some params changed (checked against the space)."""

    changes: dict[str, JsonValue] = Field(
        default_factory=dict, max_length=MAX_PARAMS, examples=[{"lr": 0.001}]
    )
    warm_start: bool = Field(True, description="start from the parent's latest weights")
    epochs: int | None = Field(
        None, ge=1, le=MAX_EPOCHS, description="epoch budget [default: the run's]"
    )


class AddIn(_In):
    """Add a new MST with these params (every sampled name of the space, within its domain)."""

    params: dict[str, JsonValue] = Field(max_length=MAX_PARAMS, examples=[{"lr": 0.01}])
    epochs: int | None = Field(
        None, ge=1, le=MAX_EPOCHS, description="epoch budget [default: the run's]"
    )
    priority: int = Field(0, ge=-MAX_PRIORITY, le=MAX_PRIORITY)


class PriorityIn(_In):
    priority: int = Field(
        ge=-MAX_PRIORITY, le=MAX_PRIORITY, description="higher runs first when several MSTs wait"
    )


class ErrorOut(BaseModel):
    error: str = Field(description="what was wrong and how to fix it")
    detail: list[dict[str, Any]] | None = Field(None, description="each invalid input, if any")


class RunOut(BaseModel):
    name: str
    status: str
    procedure: str
    metric: str
    direction: str
    n_msts: int
    n_workers: int
    created_at: datetime
    updated_at: datetime


class RunDetailOut(RunOut):
    spec: dict[str, Any]
    space: dict[str, Any]
    seed: int
    run_dir: str


class MSTOut(BaseModel):
    mst_id: int
    params: dict[str, Any]
    status: str
    parent: int | None
    warm_start: bool
    priority: int
    n_epochs: int = Field(description="the epoch budget planned")
    epochs_done: int
    last: float | None = Field(description="the run's metric at the last epoch")
    best: float | None = Field(description="the run's metric at the best epoch")
    best_epoch: int | None
    metrics: dict[str, float] = Field(description="every metric at the last epoch")
    error: str | None
    pareto: bool = Field(
        default=False,
        description="on the run's Pareto front (a run with several objectives): feasible, "
        "and no other MST is better on every objective at its last epoch",
    )


class MSTPage(BaseModel):
    run: str
    metric: str
    direction: str
    total: int = Field(description="MSTs that match the filters")
    n_msts: int = Field(description="MSTs in the run")
    offset: int
    limit: int
    items: list[MSTOut]


class SeriesOut(BaseModel):
    mst_id: int
    params: dict[str, Any]
    status: str
    values: list[float | None] = Field(description="the metric at each of `epochs`")


class CurvesOut(BaseModel):
    run: str
    metric: str
    direction: str
    n_msts: int
    epochs: list[int] = Field(description="0-based epochs shown (evenly spread if many)")
    series: list[SeriesOut]


class EpochOut(BaseModel):
    mst_id: int
    epoch: int
    metrics: dict[str, float | None]
    train_order: list[int]
    eval_order: list[int]
    train_seconds: float | None
    eval_seconds: float | None
    finished_at: datetime


class EpochPage(BaseModel):
    run: str
    total: int
    offset: int
    limit: int
    items: list[EpochOut]


class EventOut(BaseModel):
    id: int
    time: datetime
    kind: str
    mst_id: int | None
    worker: int | None
    detail: dict[str, Any]


class CommandOut(BaseModel):
    id: int
    kind: str
    payload: dict[str, Any]
    status: str = Field(description="pending until the run's driver applies or rejects it")
    created_at: datetime
    applied_at: datetime | None
    message: str | None


class VisitOut(BaseModel):
    mst_id: int
    worker: int
    epoch: int
    start: float = Field(description="seconds since the run's first sub-epoch started")
    end: float
    steps: int
    hop: bool = Field(description="the MST's state moved to this worker for the visit")


class WorkerOut(BaseModel):
    worker: int
    busy_seconds: float
    utilisation: float = Field(description="busy seconds / wall seconds")


class TimelineOut(BaseModel):
    run: str
    n_workers: int
    origin: datetime | None
    wall_seconds: float
    visits: list[VisitOut]
    workers: list[WorkerOut]


class ResourcesOut(BaseModel):
    run: str
    status: str
    source: str = Field(description="'completed run' (driver's figures) or 'measured so far'")
    n_workers: int
    compute_seconds: float
    wall_seconds: float
    efficiency: float = Field(description="compute seconds / workers / wall seconds")
    n_steps: int
    n_visits: int
    n_hops: int
    hop_bytes: int
    resident_shard_bytes: list[int] | None
    dataset_bytes: int | None
    data_copies: float | None
    lower_bound_seconds: float | None = None
