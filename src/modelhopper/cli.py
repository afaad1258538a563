"""The ``modelhopper`` command line: ``demo`` and ``run SPEC.py``."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from modelhopper.errors import ConfigError, ModelHopperError

app = typer.Typer(
    help="Deep-learning model selection with Model Hopper Parallelism (MOP).",
    no_args_is_help=True,
    add_completion=False,
)
# Off a terminal rich assumes 80 columns; a results table needs more to stay readable.
console = Console(width=None if sys.stdout.isatty() else 140)

Workers = Annotated[int, typer.Option("--workers", "-w", help="worker processes, one shard each")]
RunDir = Annotated[Path | None, typer.Option(help="where shards and checkpoints go")]


def demo_space() -> dict[str, Any]:
    import modelhopper as mh

    return {
        "hidden": mh.choice([32, 64, 128]),
        "lr": mh.loguniform(1e-4, 3e-2),
        "l2": mh.choice([0.0, 1e-4]),
        "batch_size": mh.choice([32, 64]),
    }


def demo_estimator(p: dict[str, Any]):
    """An MLP for scikit-learn's 8x8 digits."""
    import torch
    from torch import nn

    import modelhopper as mh

    model = nn.Sequential(
        nn.Flatten(), nn.Linear(64, p["hidden"]), nn.ReLU(), nn.Linear(p["hidden"], 10)
    )
    return mh.Estimator(
        model=model,
        optimizer=torch.optim.Adam(model.parameters(), lr=p["lr"], weight_decay=p["l2"]),
        loss=nn.CrossEntropyLoss(),
        metrics=["accuracy"],
        batch_size=p["batch_size"],
    )


@app.command()
def demo(
    workers: Workers = 2,
    n_msts: Annotated[int, typer.Option(help="MSTs to draw")] = 8,
    epochs: Annotated[int, typer.Option(help="epochs per MST")] = 5,
    seed: Annotated[int, typer.Option(help="seed of the whole run")] = 0,
    run_dir: RunDir = None,
) -> None:
    """Random search over MLPs on the digits dataset (real data, a minute or less)."""
    import modelhopper as mh

    search = mh.RandomSearch(
        demo_estimator,
        demo_space(),
        n_msts=n_msts,
        epochs=epochs,
        metric="val_accuracy",
        direction="maximize",
        seed=seed,
    )
    console.print(
        f"[bold]modelhopper demo[/]: {n_msts} MSTs x {epochs} epochs on digits, "
        f"{workers} workers (MOP)"
    )
    _fit_and_report(search, mh.datasets.digits(seed=seed), workers, run_dir)


@app.command()
def run(
    spec: Annotated[Path, typer.Argument(help="a Python file defining `data` and `search`")],
    workers: Workers = 2,
    run_dir: RunDir = None,
) -> None:
    """Run the model selection that SPEC.py defines."""
    try:
        module = load_spec(spec)
        search, data = spec_objects(module, spec)
    except ModelHopperError as e:
        console.print(f"[red]error:[/] {e}")
        raise typer.Exit(2) from None
    _fit_and_report(search, data, workers, run_dir)


def load_spec(path: Path) -> ModuleType:
    """Import SPEC.py as a module whose functions travel to workers by value."""
    import cloudpickle

    if not path.is_file():
        raise ConfigError(f"spec file {str(path)!r} does not exist; give the path to a .py file")
    name = f"modelhopper_spec_{path.stem}"
    module_spec = importlib.util.spec_from_file_location(name, path)
    if module_spec is None or module_spec.loader is None:
        raise ConfigError(f"cannot import {str(path)!r}; is it a Python file?")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    module_spec.loader.exec_module(module)
    # Workers cannot import this file by name, so its functions are pickled by value.
    cloudpickle.register_pickle_by_value(module)
    return module


def spec_objects(module: ModuleType, path: Path) -> tuple[Any, Any]:
    import modelhopper as mh

    missing = [name for name in ("search", "data") if not hasattr(module, name)]
    if missing:
        raise ConfigError(
            f"{path} must define {' and '.join(missing)}: `data` (a modelhopper.Dataset or a "
            "function returning one) and `search` (e.g. mh.RandomSearch(make_estimator, space, "
            "n_msts=8, epochs=5))"
        )
    search, data = module.search, module.data
    data = data() if callable(data) else data
    if not isinstance(search, mh.BaseProcedure):
        raise ConfigError(
            f"`search` in {path} must be a procedure such as mh.GridSearch or mh.RandomSearch, "
            f"got {type(search).__name__}"
        )
    return search, data


def _fit_and_report(search: Any, data: Any, workers: int, run_dir: Path | None) -> None:
    try:
        result = search.fit(data, n_workers=workers, run_dir=run_dir, progress=True)
    except ModelHopperError as e:
        console.print(f"[red]error:[/] {e}")
        raise typer.Exit(2) from None
    console.print(results_table(result))
    s = result.stats
    console.print(
        f"best MST {result.best.id}: {result.best.params} -> {result.metric} = "
        f"{result.best.metrics[result.metric]:.4f}\n"
        f"wall {s.wall_seconds:.1f} s, compute {s.compute_seconds:.1f} s on {s.n_workers} workers, "
        f"efficiency {s.efficiency:.2f}; {s.n_hops} hops moved {s.hop_bytes / 1e6:.1f} MB; "
        f"shards hold {s.data_copies:.2f} copies of the data; run dir {result.run_dir}"
    )


def results_table(result: Any) -> Table:
    """MSTs sorted by the run's metric, best first."""
    frame = result.to_dataframe()
    table = Table(title=f"MSTs by {result.metric} ({result.direction})")
    params = [c for c in frame.columns if c.startswith("param_")]
    metrics = [c for c in ("train_loss", "val_loss", result.metric) if c in frame.columns]
    columns = ["mst_id", "status", *params, "epochs", *dict.fromkeys(metrics)]
    for column in columns:
        table.add_column(column.removeprefix("param_"), justify="right", no_wrap=True)
    for row in frame.to_dict("records"):
        table.add_row(*(_cell(row[c]) for c in columns))
    return table


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


if __name__ == "__main__":
    app()
