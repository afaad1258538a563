"""The ``modelhopper`` command line: ``demo`` and ``run SPEC.py``."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import sys
import time
import traceback
from pathlib import Path
from types import ModuleType
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from modelhopper.errors import ConfigError, ModelHopperError

app = typer.Typer(
    help="Deep-learning model selection with Model Hopper Parallelism (MOP).",
    no_args_is_help=True,
    add_completion=False,
)
# Off a terminal rich assumes 80 columns; a results table needs more to stay readable.
console = Console(width=None if sys.stdout.isatty() else 140)

Workers = Annotated[int, typer.Option("--workers", "-w", help="worker processes")]
Shards = Annotated[
    int | None,
    typer.Option(
        "--shards",
        help="cut the data into this many shards (at least --workers; results then do not "
        "depend on the number of workers) [default: one per worker]",
    ),
]
RunDir = Annotated[Path | None, typer.Option(help="where shards and checkpoints go")]
Store = Annotated[
    str | None,
    typer.Option(help="SQLAlchemy URL of the store [default: sqlite file in ./modelhopper-runs]"),
]
RunName = Annotated[str | None, typer.Option(help="name of the run in the store")]
ExecutorName = Annotated[
    str, typer.Option("--executor", help="'local' (worker processes here) or 'ray'")
]
Address = Annotated[
    str | None,
    typer.Option(help="Ray cluster to join: 'auto' or 'ray://HEAD:10001' [default: start one]"),
]
CPUs = Annotated[float, typer.Option(help="Ray CPUs per worker (torch threads)")]
GPUs = Annotated[float, typer.Option(help="Ray GPUs per worker (it trains on its GPU)")]


def make_executor(name: str, address: str | None, cpus: float, gpus: float) -> Any:
    """The executor the command-line options name."""
    import modelhopper as mh

    if name == "local":
        if address is not None:
            raise mh.ConfigError("--address is for --executor ray; drop it or add --executor ray")
        return mh.LocalExecutor()
    if name == "ray":
        return mh.RayExecutor(address=address, resources_per_worker={"CPU": cpus, "GPU": gpus})
    raise mh.ConfigError(f"--executor must be 'local' or 'ray', got {name!r}")


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
    run_name: RunName = None,
    store: Store = None,
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
    data = mh.datasets.digits(seed=seed)
    _report(
        lambda: search.fit(
            data, n_workers=workers, run_dir=run_dir, run_name=run_name, store=store, progress=True
        )
    )


@app.command()
def run(
    spec: Annotated[Path, typer.Argument(help="a Python file defining `data` and `search`")],
    workers: Workers = 2,
    shards: Shards = None,
    run_dir: RunDir = None,
    run_name: RunName = None,
    store: Store = None,
    executor: ExecutorName = "local",
    address: Address = None,
    cpus_per_worker: CPUs = 1,
    gpus_per_worker: GPUs = 0,
) -> None:
    """Run the model selection that SPEC.py defines."""

    def fit() -> Any:
        runner = make_executor(executor, address, cpus_per_worker, gpus_per_worker)
        search, data = spec_objects(load_spec(spec), spec)
        return search.fit(
            data, n_workers=workers, n_shards=shards, run_dir=run_dir, run_name=run_name,
            store=store, progress=True, executor=runner,
        )  # fmt: skip

    _report(fit)


MSTArg = Annotated[int, typer.Argument(help="the MST's id")]
RunArg = Annotated[str, typer.Argument(help="the run's name")]
Settings = Annotated[
    list[str] | None, typer.Option("--set", help="param=value (value as JSON, else text)")
]


@app.command()
def resume(
    run_name: Annotated[str, typer.Argument(help="the run to continue")],
    mst: Annotated[int | None, typer.Argument(help="resume only this stopped MST")] = None,
    store: Store = None,
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers",
            "-w",
            help="continue on N workers, at most its shards [default: as many as it had]",
        ),
    ] = None,
    executor: ExecutorName = "local",
    address: Address = None,
    cpus_per_worker: CPUs = 1,
    gpus_per_worker: GPUs = 0,
) -> None:
    """Continue a run whose driver stopped (crash, kill); with MST, resume a stopped MST."""
    import modelhopper as mh

    if mst is not None:
        _send(store, run_name, "resume", {"mst_id": mst})
        return
    _report(lambda: mh.resume(run_name, store=store, progress=True, n_workers=workers,
        executor=make_executor(executor, address, cpus_per_worker, gpus_per_worker)))  # fmt: skip


@app.command()
def stop(run_name: RunArg, mst: MSTArg, store: Store = None) -> None:
    """Stop an MST of a running run (applied at the driver's next scheduling step)."""
    _send(store, run_name, "stop", {"mst_id": mst})


@app.command()
def clone(
    run_name: RunArg,
    mst: MSTArg,
    settings: Settings = None,
    warm_start: Annotated[bool, typer.Option(help="start from the MST's weights")] = True,
    epochs: Annotated[int | None, typer.Option(help="epochs for the clone")] = None,
    store: Store = None,
) -> None:
    """Clone an MST with some params changed (--set lr=0.001) into a new MST."""
    payload = {"mst_id": mst, "changes": parse_settings(settings), "warm_start": warm_start}
    _send(store, run_name, "clone", {**payload, "epochs": epochs})


@app.command()
def add(
    run_name: RunArg,
    settings: Settings = None,
    epochs: Annotated[int | None, typer.Option(help="epochs for the new MST")] = None,
    store: Store = None,
) -> None:
    """Add an MST with the given params (--set hidden=64 --set lr=0.01) to a running run."""
    _send(store, run_name, "add", {"params": parse_settings(settings), "epochs": epochs})


@app.command()
def priority(
    run_name: RunArg, mst: MSTArg, value: Annotated[int, typer.Argument()], store: Store = None
) -> None:
    """Set an MST's priority: higher runs first when several MSTs could use a worker."""
    _send(store, run_name, "priority", {"mst_id": mst, "priority": value})


@app.command()
def workers(
    run_name: RunArg,
    add: Annotated[int | None, typer.Option("--add", help="start N more workers")] = None,
    remove: Annotated[int | None, typer.Option("--remove", help="let worker W leave")] = None,
    store: Store = None,
) -> None:
    """Add workers to a running run, or let one leave (LocalExecutor): shards are re-homed
    and the run goes on, with the results a fixed pool would give."""
    if (add is None) == (remove is None):
        console.print("[red]error:[/] give exactly one of --add N or --remove W")
        raise typer.Exit(2)
    _send(store, run_name, "workers", {"add": add} if add is not None else {"remove": remove})


@app.command()
def status(
    run_name: RunArg,
    watch: Annotated[bool, typer.Option(help="refresh until the run ends")] = False,
    interval: Annotated[float, typer.Option(help="seconds between refreshes")] = 2.0,
    store: Store = None,
) -> None:
    """The MSTs of a run (finished or going on), sorted by the run's metric."""
    import modelhopper as mh

    def table() -> tuple[Table, bool]:
        result = _or_exit(lambda: mh.load_result(run_name, store=store))
        return results_table(result), result.status != "running"

    if not watch:
        console.print(table()[0])
        return
    from rich.live import Live

    with Live(table()[0], console=console, auto_refresh=False) as live:
        while True:
            current, finished = table()
            live.update(current, refresh=True)
            if finished:
                break
            time.sleep(interval)


def parse_settings(settings: list[str] | None) -> dict[str, Any]:
    """``name=value`` pairs; values parse as JSON (numbers, true, null...) or stay text."""
    parsed: dict[str, Any] = {}
    for item in settings or []:
        name, sep, raw = item.partition("=")
        if not sep or not name:
            console.print(f"[red]error:[/] --set needs name=value, got {item!r}")
            raise typer.Exit(2)
        try:
            parsed[name] = json.loads(raw)
        except json.JSONDecodeError:
            parsed[name] = raw
    return parsed


def _send(store: str | None, run_name: str, kind: str, payload: dict[str, Any]) -> None:
    """Queue a command, wait for the driver to apply it, print the outcome."""
    from modelhopper.commands import submit, wait_for
    from modelhopper.store import open_store

    db = _or_exit(lambda: open_store(store))
    command = _or_exit(lambda: submit(db, run_name, kind, payload))
    done = _or_exit(lambda: wait_for(db, run_name, command))
    console.print(done.message)


@app.command("ls")
def list_runs(store: Store = None) -> None:
    """List the runs in the store, newest first."""
    from modelhopper.store import open_store

    db = _or_exit(lambda: open_store(store))
    table = Table(title="runs")
    for column in ("name", "status", "procedure", "MSTs", "workers", "created"):
        table.add_column(column, no_wrap=True)
    for record in db.list_experiments():
        created = record.created_at.strftime("%Y-%m-%d %H:%M:%S") if record.created_at else ""
        n_msts = db.row_counts(record.name)["msts"]
        table.add_row(
            record.name,
            record.status.value,
            record.procedure,
            str(n_msts),
            str(record.n_workers),
            created,
        )
    console.print(table)


@app.command()
def show(run_name: Annotated[str, typer.Argument(help="the run to show")], store: Store = None):
    """A run's provenance, settings and MST table."""
    import modelhopper as mh

    result = _or_exit(lambda: mh.load_result(run_name, store=store))
    console.print(f"[bold]{result.name}[/] ({result.status}) in {result.run_dir}")
    console.print_json(data={"provenance": result.provenance})
    console.print(results_table(result))
    if result.stats is not None:
        console.print(_stats_line(result))


@app.command()
def export(
    run_name: Annotated[str, typer.Argument(help="the run to export")],
    fmt: Annotated[str, typer.Option("--format", help="csv, parquet or json")] = "csv",
    out: Annotated[Path, typer.Option(help="folder for the files")] = Path("."),
    mlflow: Annotated[str | None, typer.Option(help="also log to this MLflow tracking URI")] = None,
    store: Store = None,
) -> None:
    """Write a run's MSTs and per-epoch history as CSV, Parquet or JSON (and/or to MLflow)."""
    import modelhopper as mh
    from modelhopper.export import export_files, export_mlflow

    result = _or_exit(lambda: mh.load_result(run_name, store=store))
    paths = _or_exit(lambda: export_files(result, out, fmt))
    for path in paths:
        console.print(f"wrote {path}")
    if mlflow is not None:
        n = _or_exit(lambda: export_mlflow(result, mlflow))
        console.print(f"logged {n} MLflow runs to {mlflow}")


@app.command()
def dashboard(
    store: Store = None,
    host: Annotated[str, typer.Option(help="address to bind; 0.0.0.0 exposes it")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to listen on")] = 8265,
) -> None:
    """Serve the dashboard and REST API on the store (pip install 'modelhopper[dashboard]')."""
    from modelhopper.server import TOKEN_VARIABLE, new_token, require_dashboard, serve
    from modelhopper.store import open_store

    _or_exit(require_dashboard)
    db = _or_exit(lambda: open_store(store))
    token = new_token()
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    console.print(
        f"[bold]modelhopper dashboard[/] on {db.url}: http://{shown}:{port}/?token={token}"
    )
    console.print(
        f"commands (stop, clone, ...) need the token: Authorization: Bearer {token} "
        f"(set {TOKEN_VARIABLE} to choose it); Ctrl-C stops the server"
    )
    if host not in ("127.0.0.1", "localhost", "::1"):
        console.print(
            f"[yellow]note:[/] bound to {host}: anyone who reaches this port can read the runs"
        )
    serve(db, host=host, port=port, token=token)


@app.command()
def report(
    run_name: RunArg,
    out: Annotated[Path, typer.Option(help="the HTML file to write")] = Path("report.html"),
    store: Store = None,
) -> None:
    """Write a run's page as one self-contained HTML file (curves, timeline, MSTs)."""
    from modelhopper.server import require_report, write_report
    from modelhopper.store import open_store

    _or_exit(require_report)
    db = _or_exit(lambda: open_store(store))
    path = _or_exit(lambda: write_report(db, run_name, out))
    console.print(f"wrote {path}")


def _or_exit(action: Any) -> Any:
    try:
        return action()
    except ModelHopperError as e:
        # escape: a message such as pip install 'modelhopper[postgres]' is not rich markup
        console.print(f"[red]error:[/] {escape(str(e))}")
        raise typer.Exit(2) from None


def load_spec(path: Path) -> ModuleType:
    """Import SPEC.py as a module whose functions travel to workers by value."""
    import cloudpickle

    if not path.is_file():
        raise ConfigError(f"spec file {str(path)!r} does not exist; give the path to a .py file")
    # One module name per file: two specs named spec.py must not replace each other.
    digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:10]
    name = f"modelhopper_spec_{path.stem}_{digest}"
    module_spec = importlib.util.spec_from_file_location(name, path)
    if module_spec is None or module_spec.loader is None:
        raise ConfigError(f"cannot import {str(path)!r}; is it a Python file?")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    try:
        module_spec.loader.exec_module(module)
    except Exception as e:  # one line naming file:line, not a traceback through importlib
        del sys.modules[name]
        raise ConfigError(f"cannot load spec {path}: {_where(e, path)}") from None
    # Workers cannot import this file by name, so its functions are pickled by value.
    cloudpickle.register_pickle_by_value(module)
    return module


def _where(error: Exception, spec: Path) -> str:
    """``file:line: Error: message`` of an exception raised while importing a spec.

    For a syntax error, the line it is on; else the innermost line of the user's code
    (the spec or a module it imports), with the spec's line that led there.
    """
    if isinstance(error, SyntaxError):
        return f"{error.filename}:{error.lineno}: SyntaxError: {error.msg}"
    frames = [
        f for f in traceback.extract_tb(error.__traceback__) if not f.filename.startswith("<")
    ]
    lines = str(error).strip().splitlines()
    text = f"{type(error).__name__}: {lines[0] if lines else ''}".rstrip(": ")
    if not frames:
        return text
    inner, resolved = frames[-1], str(spec.resolve())
    where = f"{inner.filename}:{inner.lineno}: {text}"
    outer = [f for f in frames if str(Path(f.filename).resolve()) == resolved]
    if outer and outer[-1] is not inner:
        where += f" (imported from {outer[-1].filename}:{outer[-1].lineno})"
    return where


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


def _report(fit: Any) -> None:
    """Run a fit (or resume), then print the MST table and the run's figures."""
    result = _or_exit(fit)
    console.print(results_table(result))
    console.print(
        f"best MST {result.best.id}: {result.best.params} -> {result.metric} = "
        f"{result.best.metrics[result.metric]:.4f}"
    )
    console.print(_stats_line(result))


def _stats_line(result: Any) -> str:
    s = result.stats
    moved = f" ({s.shard_bytes_moved / 1e6:.1f} MB of them sent)" if s.shard_bytes_moved else ""
    return (
        f"run {result.name}: wall {s.wall_seconds:.1f} s, compute {s.compute_seconds:.1f} s on "
        f"{s.n_workers} workers, efficiency {s.efficiency:.2f} (busy {s.busy_share:.2f}); "
        f"{s.n_hops} hops moved "
        f"{s.hop_bytes / 1e6:.1f} MB; shards hold {s.data_copies:.2f} copies of the data{moved}; "
        f"run dir {result.run_dir}"
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
