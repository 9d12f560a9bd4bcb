"""The ``riverbed`` command line: broker, worker, produce, tail, demo."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from streams.config import Settings, load_settings
from streams.errors import BrokerError, ConfigError, RiverbedError, UsageError

app = typer.Typer(help="riverbed: online learning on Kafka streams.", no_args_is_help=True,
                  add_completion=False, pretty_exceptions_enable=False)
err = Console(stderr=True)

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "config" / "riverbed.toml"
ConfigOption = Annotated[Path, typer.Option("--config", "-c", help="riverbed TOML config.")]
BootstrapOption = Annotated[
    str | None,
    typer.Option("--bootstrap", "-b", help="Kafka bootstrap servers (overrides config)."),
]
LineageOption = Annotated[int | None, typer.Option(
    help="Model lineage (0 = before any rollback; default: the live lineage).")]
#: how long a command waits for a TCP connection to the broker before giving up
PROBE_TIMEOUT_S = 3.0

F = TypeVar("F", bound=Callable[..., Any])


def fail(message: str, code: int) -> NoReturn:
    """Print ``error: message`` as ONE line on stderr and exit with ``code``."""
    sys.stderr.write(f"error: {' '.join(str(message).split())}\n")
    sys.stderr.flush()
    raise typer.Exit(code)


def one_line_errors(command: F) -> F:
    """Every user error of ``command`` becomes one stderr line, never a traceback:
    exit 2 for usage and configuration, 1 for runtime (broker, history)."""
    from aiokafka.errors import KafkaError

    from streams.snapshots import SnapshotIntegrityError

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except (typer.Exit, typer.Abort):
            raise
        except (ConfigError, UsageError) as exc:
            fail(str(exc), 2)
        except SnapshotIntegrityError as exc:
            fail(f"integrity error: {exc}", 2)
        except RiverbedError as exc:
            fail(str(exc), 1)
        except KafkaError as exc:
            fail(f"broker error: {exc}", 1)
        except (TimeoutError, ConnectionError) as exc:
            fail(f"broker did not answer: {exc or type(exc).__name__}", 1)
        except KeyboardInterrupt:
            fail("interrupted", 130)
    return run  # type: ignore[return-value]


def _settings(config: Path, bootstrap: str | None = None, *, probe: bool = False) -> Settings:
    """Load and check the config (ConfigError: exit 2); with ``probe``, make sure a broker
    answers on the bootstrap servers within PROBE_TIMEOUT_S (BrokerError: exit 1)."""
    from schemas import load_schema
    from streams.broker import probe_bootstrap

    if config.is_dir():
        raise ConfigError("path", f"{config} is a directory, not a TOML config file")
    try:
        settings = load_settings(config)
    except OSError as exc:
        raise ConfigError("path", f"cannot read {config}: {exc.strerror or exc}") from None
    try:
        load_schema(settings.event.schema, settings.base_dir)
    except OSError as exc:
        raise ConfigError("event.schema", f"cannot read schema {settings.event.schema!r}: "
                          f"{exc.strerror or exc}") from None
    except ValueError as exc:
        raise ConfigError("event.schema",
                          f"{settings.event.schema!r} is not JSON: {exc}") from None
    if bootstrap:
        settings = settings.with_bootstrap(bootstrap)
    if probe:
        probe_bootstrap(settings.broker.bootstrap_servers, PROBE_TIMEOUT_S)
    return settings


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise UsageError(message)


def _check_dataset(dataset: str) -> None:
    from streams.datasets import DATASET_SCHEMAS

    _check(dataset in DATASET_SCHEMAS,
           f"unknown dataset {dataset!r}; choose from {', '.join(sorted(DATASET_SCHEMAS))}")


def _check_fraction(name: str, value: float) -> None:
    _check(0.0 <= value <= 1.0, f"{name} must be between 0 and 1, got {value:g}")


def _logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@contextlib.contextmanager
def _quiet_kafka_clients() -> Iterator[None]:
    """aiokafka logs each failed connection attempt at ERROR; a command reports the one
    resulting error itself."""
    logger = logging.getLogger("aiokafka")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


@app.command()
def broker(port: Annotated[int, typer.Option(help="TCP port; 0 picks a free one.")] = 9092) -> None:
    """Run the embedded broker (Tansu, memory-only) on 127.0.0.1 until Ctrl-C."""
    from streams.broker import EmbeddedBroker

    stop = threading.Event()
    # explicit handlers: a shell starting us in the background ignores SIGINT (no
    # KeyboardInterrupt then), and Ctrl-C / kill must both stop the broker cleanly
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with EmbeddedBroker(port=port or None) as b:
        err.print(f"embedded broker listening on [bold]{b.bootstrap_servers}[/bold] (pid {b.pid});"
                  " memory-only, Ctrl-C stops it")
        try:
            while not stop.wait(0.5):
                if b.process is None or b.process.poll() is not None:
                    err.print("[red]broker exited[/red]")
                    raise typer.Exit(1)
        except KeyboardInterrupt:
            pass


@app.command()
def worker(
    config: ConfigOption = DEFAULT_CONFIG, bootstrap: BootstrapOption = None,
    web_port: Annotated[int | None, typer.Option(help="Web/metrics port (127.0.0.1).")] = None,
    log_level: Annotated[str, typer.Option(help="Log level.")] = "warning",
) -> None:
    """Run a worker: consume events, predict, learn, publish predictions."""
    from agents.worker import Worker

    _logging(log_level)
    settings = _settings(config, bootstrap)
    try:
        code = asyncio.run(Worker(settings, web_port=web_port).run())
    except RiverbedError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    raise typer.Exit(code)


@app.command("produce")
def produce_cmd(
    config: ConfigOption = DEFAULT_CONFIG, bootstrap: BootstrapOption = None,
    dataset: Annotated[str, typer.Option(help="agrawal, agrawal-drift or phishing.")] = "agrawal",
    events: Annotated[int, typer.Option("--events", "-n", help="Number of events.")] = 10_000,
    rate: Annotated[float, typer.Option(help="Events per second; 0 = as fast as possible.")] = 0,
    label_fraction: Annotated[float, typer.Option(help="Share of events sent with label.")] = 1.0,
    bad_fraction: Annotated[float, typer.Option(help="Share of deliberately bad events.")] = 0.0,
    seed: Annotated[int, typer.Option(help="Dataset seed.")] = 7,
    label_delay: Annotated[float, typer.Option(
        help="Send labels separately, each after a random delay up to this many seconds.")] = 0,
) -> None:
    """Stream a River dataset into the events topic as Avro events."""
    from streams.produce import produce
    from streams.topics import ensure_topics, riverbed_topics

    settings = _settings(config, bootstrap)

    async def run() -> Any:
        await ensure_topics(settings.broker.bootstrap_servers, riverbed_topics(settings))
        with Progress(TextColumn("producing"), BarColumn(), MofNCompleteColumn(),
                      TimeRemainingColumn(), console=err) as bar:
            task = bar.add_task("events", total=events)
            return await produce(settings, dataset, events, rate, label_fraction=label_fraction,
                                 bad_fraction=bad_fraction, seed=seed, keep_labels=False,
                                 label_delay_s=label_delay,
                                 on_progress=lambda n: bar.advance(task, n))

    report = asyncio.run(run())
    err.print(f"sent {report.sent} events ({report.bad} bad) to {settings.topics.events} "
              f"in {report.seconds:.2f}s ({report.sent / max(report.seconds, 1e-9):,.0f}/s)")


@app.command()
def tail(
    topic: Annotated[str, typer.Argument(help="Topic to print.")],
    config: ConfigOption = DEFAULT_CONFIG, bootstrap: BootstrapOption = None,
    from_beginning: Annotated[bool, typer.Option(help="Start at the oldest record.")] = True,
    idle_timeout: Annotated[float, typer.Option(help="Stop after this many idle seconds.")] = 5.0,
    max_records: Annotated[
        int, typer.Option("--max", help="Stop after N records (0 = no limit).")] = 0,
) -> None:
    """Print the decoded records of TOPIC as JSON lines."""
    from streams.tail import tail as tail_topic

    settings = _settings(config, bootstrap)

    async def run() -> None:
        n = 0
        async for _, decoded in tail_topic(settings, topic, from_beginning, idle_timeout):
            sys.stdout.write(json.dumps(decoded, default=str) + "\n")
            n += 1
            if max_records and n >= max_records:
                return

    try:
        asyncio.run(run())
    except RiverbedError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None


def _demo_table(p: Any, note: str) -> Table:
    table = Table(title="riverbed demo", show_header=True)
    for column in ("events sent", "predictions", "events/s", "accuracy", "model_seq",
                   "learned", "dead letters"):
        table.add_column(column, justify="right")
    elapsed = max((p.last_output or p.started) - p.started, 1e-9)
    table.add_row(f"{p.events:,}", f"{p.predictions:,}", f"{p.predictions / elapsed:,.0f}",
                  f"{p.accuracy:.3f}", f"{p.model_seq:,}", f"{p.learned:,}", f"{p.dead_letters:,}")
    if note:
        table.caption = note
    return table


@app.command()
def demo(
    config: ConfigOption = DEFAULT_CONFIG,
    events: Annotated[int, typer.Option("--events", "-n", help="Events to stream.")] = 20_000,
    dataset: Annotated[str, typer.Option(help="agrawal, agrawal-drift or phishing.")] = "agrawal",
    rate: Annotated[float, typer.Option(help="Events per second; 0 = as fast as possible.")] = 0,
    bad_fraction: Annotated[float, typer.Option(help="Share of deliberately bad events.")] = 0.01,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
    timeout: Annotated[float, typer.Option(help="Give up after this many seconds.")] = 300,
    label_delay: Annotated[float, typer.Option(
        help="Delayed-label mode: labels follow events after up to this many seconds.")] = 0,
    scrape: Annotated[Path | None, typer.Option(
        help="Save the worker's /metrics exposition, scraped at the end of the run.")] = None,
) -> None:
    """Embedded broker + worker + producer, with live progress and a summary."""
    from streams.demo import run_demo

    settings = _settings(config)
    console = Console(stderr=True)
    with Live(console=console, refresh_per_second=4, transient=False) as live:
        def tick(progress: Any, note: str) -> None:
            from rich.console import Group
            parts = [_demo_table(progress, note)]
            if progress.top is not None:
                parts.append(progress.top.table())
            live.update(Group(*parts))
        try:
            progress = asyncio.run(run_demo(settings, config, events, dataset, rate,
                                            bad_fraction, tick, timeout, label_delay, scrape))
        except RiverbedError as exc:
            err.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(1) from None
    summary = progress.summary()
    if as_json:
        sys.stdout.write(json.dumps(summary) + "\n")
    else:
        for key, value in summary.items():
            sys.stdout.write(f"{key:>14}: {value}\n")
    ok = summary["predictions"] == summary["valid_events"] * len(settings.models)
    raise typer.Exit(0 if ok else 1)


@app.command()
def history(
    model: Annotated[str, typer.Argument(help="Model name.")],
    config: ConfigOption = DEFAULT_CONFIG, bootstrap: BootstrapOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines.")] = False,
) -> None:
    """Show a model's history: seq, time, kind, snapshots, fingerprints."""
    from streams.cli_history import history_command

    history_command(_settings(config, bootstrap), model, as_json)


@app.command("replay")
def replay_cmd(
    model: Annotated[str, typer.Argument(help="Model name.")],
    config: ConfigOption = DEFAULT_CONFIG, bootstrap: BootstrapOption = None,
    to_seq: Annotated[int | None, typer.Option(help="Rebuild the state at this seq.")] = None,
    to_time: Annotated[str | None, typer.Option(help="ISO time: the state at that time.")] = None,
    from_genesis: Annotated[bool, typer.Option(help="Ignore snapshots.")] = False,
    verify: Annotated[bool, typer.Option(help="Check every recorded fingerprint.")] = False,
    output: Annotated[Path | None, typer.Option(help="Write the rebuilt model (pickle).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object.")] = False,
) -> None:
    """Rebuild a past model version; with --verify exit 1 on any mismatch (2: tampered)."""
    from streams.cli_history import replay_command

    raise typer.Exit(replay_command(_settings(config, bootstrap), model, to_seq, to_time,
                                    from_genesis, verify, output, as_json))


@app.command()
def top(
    config: ConfigOption = DEFAULT_CONFIG, bootstrap: BootstrapOption = None,
    once: Annotated[bool, typer.Option(help="Print the current view and exit.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="With --once: JSON rows.")] = False,
) -> None:
    """Live per-model view: events/s, accuracy, model_seq, pending labels, drift, lag."""
    from streams.top import TopView, reports

    settings = _settings(config, bootstrap)
    view = TopView(settings)

    async def run_once() -> None:
        async for report in reports(settings, follow=False, idle_timeout_s=10):
            view.add(report)

    async def run_live(live: Live) -> None:
        async for report in reports(settings, follow=True):
            view.add(report)
            live.update(view.table())

    if once:
        asyncio.run(run_once())
        if as_json:
            sys.stdout.write(json.dumps(view.rows()) + "\n")
        else:
            Console().print(view.table())
        return
    with Live(view.table(), console=Console(), refresh_per_second=2) as live:
        try:
            asyncio.run(run_live(live))
        except KeyboardInterrupt:
            pass


@app.command("rollback")
def rollback_cmd(
    model: Annotated[str, typer.Argument(help="Model name.")],
    to_seq: Annotated[int, typer.Option(help="Restore the state at this seq.")],
    reason: Annotated[str, typer.Option(help="Why (recorded in the history).")],
    config: ConfigOption = DEFAULT_CONFIG, bootstrap: BootstrapOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object.")] = False,
) -> None:
    """Roll a model back to seq N; the rollback is itself a history event."""
    from streams.cli_history import rollback_command

    raise typer.Exit(rollback_command(_settings(config, bootstrap), model, to_seq, reason,
                                      as_json))


@app.command()
def score(
    model: Annotated[str, typer.Argument(help="Model name.")],
    seq: Annotated[int | None, typer.Option(help="Model version (default: latest).")] = None,
    config: ConfigOption = DEFAULT_CONFIG, bootstrap: BootstrapOption = None,
) -> None:
    """Score JSON-lines events from stdin with the model as of --seq."""
    from streams.cli_history import score_command

    raise typer.Exit(score_command(_settings(config, bootstrap), model, seq))


def main() -> None:
    """Console-script entry point."""
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    app()


if __name__ == "__main__":
    main()
