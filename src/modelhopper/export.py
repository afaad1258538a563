"""Export a run: MSTs and per-epoch history as files, or one MLflow run per MST."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pandas as pd

from modelhopper.errors import ConfigError
from modelhopper.result import Result

__all__ = ["FORMATS", "export_files", "export_mlflow"]

FORMATS = ("csv", "parquet", "json")


def _frames(result: Result) -> dict[str, pd.DataFrame]:
    history = result.history()
    for column in ("train_order", "eval_order"):  # lists do not fit CSV cells
        if column in history:
            history[column] = history[column].map(json.dumps)
    return {"msts": result.to_dataframe(), "history": history}


def export_files(result: Result, out: str | os.PathLike, fmt: str = "csv") -> list[Path]:
    """Write ``<run>-msts.<fmt>`` and ``<run>-history.<fmt>`` into ``out``."""
    if fmt not in FORMATS:
        raise ConfigError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for kind, frame in _frames(result).items():
        path = folder / f"{result.name}-{kind}.{fmt}"
        if fmt == "csv":
            frame.to_csv(path, index=False)
        elif fmt == "parquet":
            frame.to_parquet(path, index=False)
        else:
            frame.to_json(path, orient="records", indent=2)
        paths.append(path)
    return paths


def export_mlflow(result: Result, tracking_uri: str) -> int:
    """One MLflow run per MST (params, per-epoch metrics, status) under an experiment named
    after the run. Needs ``pip install 'modelhopper[mlflow]'``."""
    try:
        from mlflow.entities import Metric, Param, RunTag
        from mlflow.tracking import MlflowClient
    except ImportError as e:
        raise ConfigError("MLflow export needs mlflow: pip install 'modelhopper[mlflow]'") from e
    client = MlflowClient(tracking_uri=tracking_uri)
    experiment = client.get_experiment_by_name(result.name)
    experiment_id = (
        experiment.experiment_id if experiment else client.create_experiment(result.name)
    )
    now = int(time.time() * 1000)
    for mst in result.msts:
        run = client.create_run(experiment_id, run_name=f"mst-{mst.id}")
        params = [Param(k, _param(v)) for k, v in mst.params.items()]
        metrics = [
            Metric(key, float(value), now, row["epoch"])
            for row in mst.history
            for key, value in row.items()
            if isinstance(value, float) and not key.endswith("_seconds")
        ]
        tags = [
            RunTag("modelhopper.status", mst.status.value),
            RunTag("modelhopper.mst_id", str(mst.id)),
        ]
        client.log_batch(run.info.run_id, metrics=metrics, params=params, tags=tags)
        status = "FAILED" if mst.status.value == "failed" else "FINISHED"
        client.set_terminated(run.info.run_id, status=status)
    return len(result.msts)


def _param(value: Any) -> str:
    return json.dumps(value) if not isinstance(value, str) else value
