"""The ``riverbed`` command line: broker, worker, produce, tail, demo, top, and the history
commands history, replay, rollback and score (``riverbed/cli_history.py``). It composes
``riverbed.streams`` and ``riverbed.agents`` and sits above both."""

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
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from riverbed.streams.config import Settings, load_settings
from riverbed.streams.errors import BrokerError, ConfigError, RiverbedError, UsageError

if TYPE_CHECKING:
    from riverbed.streams.registry import RegistryClient

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
#: how long a command waits for the broker's first answer (TLS and SASL included)
PROBE_TIMEOUT_S = 3.0
#: how long a command (not the worker: it waits) waits out a schema-registry outage
REGISTRY_GIVE_UP_S = 30.0

F = TypeVar("F", bound=Callable[..., Any])


def fail(message: str, code: int) -> NoReturn:
    """Print ``error: message`` as ONE line on stderr and exit with ``code``."""
    sys.stderr.write(f"error: {' '.join(str(message).split())}\n")
    sys.stderr.flush()
    raise typer.Exit(code)


def one_line_errors(command: F, *, quiet_clients: bool = True) -> F:
    """Every user error of ``command`` becomes one stderr line, never a traceback:
    exit 2 for usage and configuration, 1 for runtime (broker, history). With
    ``quiet_clients``, the Kafka client's own connection-error logging is silenced (the
    command reports the resulting error itself)."""
    from aiokafka.errors import KafkaError

    from riverbed.streams.snapshots import SnapshotIntegrityError

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            with _quiet_kafka_clients() if quiet_clients else contextlib.nullcontext():
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
    from riverbed.schemas import load_schema

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
        _probe(settings)
    return settings


@contextlib.asynccontextmanager
async def _registry(settings: Settings) -> AsyncIterator[RegistryClient | None]:
    """The configured registry's client for one command (None: no registry), closed after."""
    from riverbed.streams.registry import RegistryClient

    if settings.registry.url is None:
        yield None
        return
    async with RegistryClient(settings.registry, give_up_after_s=REGISTRY_GIVE_UP_S) as client:
        yield client


def _probe(settings: Settings) -> Settings:
    """BrokerError (exit 1) unless a broker answers within PROBE_TIMEOUT_S over a
    connection made as the clients will make theirs (TLS, SASL: a refusal is one line)."""
    from riverbed.streams.probe import probe_now

    probe_now(settings.broker, PROBE_TIMEOUT_S)
    return settings


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise UsageError(message)


def _check_dataset(dataset: str) -> None:
    from riverbed.streams.datasets import check_dataset

    check_dataset(dataset)


def _check_fraction(name: str, value: float) -> None:
    _check(0.0 <= value <= 1.0, f"{name} must be between 0 and 1, got {value:g}")


def _logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # aiokafka logs every request at DEBUG, SASL authentication payloads (the password)
    # included: its connection logger never goes below INFO
    conn = logging.getLogger("aiokafka.conn")
    conn.setLevel(max(logging.INFO, logging.getLogger().getEffectiveLevel()))


@contextlib.contextmanager
def _quiet_kafka_clients() -> Iterator[None]:
    """aiokafka logs each failed connection attempt at ERROR (and asyncio reports a client
    left unclosed by a failed start when it is collected, maybe at exit); a command reports
    the one resulting error itself."""
    loggers = [logging.getLogger("aiokafka"), logging.getLogger("asyncio")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    yield  # on an error they stay quiet: a failed client may be collected after the line
    for logger, level in zip(loggers, levels, strict=True):
        logger.setLevel(level)


@app.command()
@one_line_errors
def broker(
    port: Annotated[int, typer.Option(help="TCP port; 0 picks a free one.")] = 9092,
    kafka: Annotated[bool, typer.Option(
        "--kafka", help="Apache Kafka 4 (KRaft) from its jars instead of the embedded broker: "
                        "durable, its log dir under --data-dir.")] = False,
    data_dir: Annotated[Path, typer.Option(help="Log dir of the --kafka broker (kept).")] = Path(
        ".riverbed-kafka"),
) -> None:
    """Run a broker on 127.0.0.1 until Ctrl-C: the embedded Tansu (memory-only), or with
    --kafka a durable Apache Kafka node."""
    from riverbed.streams.broker import EmbeddedBroker, LocalBroker

    _check(0 <= port <= 65535, f"--port must be between 0 and 65535, got {port}")
    if kafka:
        from riverbed.streams.kafka_broker import KafkaBroker, kafka_available

        missing = kafka_available()
        if missing is not None:
            raise BrokerError(f"--kafka: {missing}")
        chosen: LocalBroker = KafkaBroker(port=port or None, data_dir=data_dir.resolve())
        what = f"Apache Kafka (KRaft), log dir {data_dir}"
    else:
        chosen = EmbeddedBroker(port=port or None)
        what = "embedded broker, memory-only"
    stop = threading.Event()
    # explicit handlers: a shell starting us in the background ignores SIGINT (no
    # KeyboardInterrupt then), and Ctrl-C / kill must both stop the broker cleanly
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with chosen as b:  # type: ignore[attr-defined]
        err.print(f"{what}: listening on [bold]{b.bootstrap_servers}[/bold] (pid {b.pid});"
                  " Ctrl-C stops it", soft_wrap=True)
        while not stop.wait(0.5):
            if b.process is None or b.process.poll() is not None:
                code = b.process.returncode if b.process is not None else None
                raise BrokerError(f"the broker exited (code {code})")


def _worker(
    config: ConfigOption = DEFAULT_CONFIG, bootstrap: BootstrapOption = None,
    web_port: Annotated[int | None, typer.Option(help="Web/metrics port (127.0.0.1).")] = None,
    log_level: Annotated[str, typer.Option(help="Log level.")] = "warning",
) -> None:
    """Run a worker: consume events, predict, learn, publish predictions."""
    _check(web_port is None or 1 <= web_port <= 65535,
           f"--web-port must be between 1 and 65535, got {web_port}")
    _check(log_level.upper() in logging.getLevelNamesMapping(),
           f"unknown --log-level {log_level!r}")
    settings = _settings(config, bootstrap, probe=True)
    _logging(log_level)
    from riverbed.agents.worker import Worker

    code = asyncio.run(Worker(settings, web_port=web_port).run())
    if code != 0:  # a client thread still retrying a lost broker must not keep us alive
        logging.shutdown()
        sys.stderr.flush()
        os._exit(code)
    raise typer.Exit(code)


# the worker logs its own broker trouble (its reconnect policy decides what to say)
worker = app.command("worker")(one_line_errors(_worker, quiet_clients=False))


@app.command("produce")
@one_line_errors
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
    from riverbed.streams.produce import produce
    from riverbed.streams.topics import ensure_topics, riverbed_topics

    _check_dataset(dataset)
    _check(events >= 1, f"--events must be at least 1, got {events}")
    _check(rate >= 0, f"--rate must be >= 0 (0 = as fast as possible), got {rate:g}")
    _check_fraction("--label-fraction", label_fraction)
    _check_fraction("--bad-fraction", bad_fraction)
    _check(label_delay >= 0, f"--label-delay must be >= 0, got {label_delay:g}")
    settings = _settings(config, bootstrap, probe=True)

    async def run() -> Any:
        await ensure_topics(settings.broker, riverbed_topics(settings))
        async with _registry(settings) as registry:
            with Progress(TextColumn("producing"), BarColumn(), MofNCompleteColumn(),
                          TimeRemainingColumn(), console=err, transient=True,
                          disable=not err.is_terminal) as bar:
                task = bar.add_task("events", total=events)
                return await produce(settings, dataset, events, rate,
                                     label_fraction=label_fraction, bad_fraction=bad_fraction,
                                     seed=seed, keep_labels=False, label_delay_s=label_delay,
                                     registry=registry, on_progress=lambda n: bar.advance(task, n))

    report = asyncio.run(run())
    err.print(f"sent {report.sent} events ({report.bad} bad) to {settings.topics.events} "
              f"in {report.seconds:.2f}s ({report.sent / max(report.seconds, 1e-9):,.0f}/s)",
              soft_wrap=True)


@app.command()
@one_line_errors
def tail(
    topic: Annotated[str, typer.Argument(help="Topic to print.")],
    config: ConfigOption = DEFAULT_CONFIG, bootstrap: BootstrapOption = None,
    from_beginning: Annotated[bool, typer.Option(help="Start at the oldest record.")] = True,
    idle_timeout: Annotated[float, typer.Option(help="Stop after this many idle seconds.")] = 5.0,
    max_records: Annotated[
        int, typer.Option("--max", help="Stop after N records (0 = no limit).")] = 0,
) -> None:
    """Print the decoded records of TOPIC as JSON lines."""
    from riverbed.streams.tail import decoder_for
    from riverbed.streams.tail import tail as tail_topic

    _check(max_records >= 0, f"--max must be >= 0, got {max_records}")
    _check(idle_timeout > 0, f"--idle-timeout must be > 0, got {idle_timeout:g}")
    settings = _settings(config, bootstrap)
    decoder_for(settings, topic)  # an unknown topic is a usage error, before connecting
    _probe(settings)

    async def run() -> None:
        n = 0
        async with _registry(settings) as registry:
            async for _, decoded in tail_topic(settings, topic, from_beginning, idle_timeout,
                                               registry):
                sys.stdout.write(json.dumps(decoded, default=str) + "\n")
                n += 1
                if max_records and n >= max_records:
                    return

    with stdout_closed_is_the_end():
        asyncio.run(run())
        sys.stdout.flush()


def _demo_table(p: Any, note: str) -> Table:
    """The demo's live table; its numbers are those of ``p.summary()`` (the final table
    and the printed summary agree)."""
    summary = p.summary()
    table = Table(title="riverbed demo", show_header=True)
    for column in ("events sent", "predictions", "events/s", "accuracy", "model_seq",
                   "learned", "dead letters"):
        table.add_column(column, justify="right")
    table.add_row(f"{summary['events']:,}", f"{summary['predictions']:,}",
                  f"{summary['events_per_s']:,.0f}", f"{summary['accuracy']:.3f}",
                  f"{summary['model_seq']:,}", f"{summary['learned']:,}",
                  f"{summary['dead_letters']:,}")
    if note:
        table.caption = note
    return table


@app.command()
@one_line_errors
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
    from riverbed.streams.demo import run_demo

    _check_dataset(dataset)  # every check before anything starts
    _check(events >= 1, f"--events must be at least 1, got {events}")
    _check(rate >= 0, f"--rate must be >= 0 (0 = as fast as possible), got {rate:g}")
    _check_fraction("--bad-fraction", bad_fraction)
    _check(timeout > 0, f"--timeout must be > 0, got {timeout:g}")
    _check(label_delay >= 0, f"--label-delay must be >= 0, got {label_delay:g}")
    _check(scrape is None or not scrape.is_dir(), f"--scrape {scrape} is a directory")
    settings = _settings(config)
    console = Console(stderr=True)
    with Live(console=console, refresh_per_second=4, transient=False) as live:
        def tick(progress: Any, note: str) -> None:
            from rich.console import Group
            parts = [_demo_table(progress, note)]
            if progress.top is not None:
                parts.append(progress.top.table())
            live.update(Group(*parts), refresh=True)
        progress = asyncio.run(run_demo(settings, config, events, dataset, rate,
                                        bad_fraction, tick, timeout, label_delay, scrape))
        tick(progress, "done")  # the final table shows the numbers of the summary
    summary = progress.summary()
    if as_json:
        sys.stdout.write(json.dumps(summary) + "\n")
    else:
        for key, value in summary.items():
            sys.stdout.write(f"{key:>14}: {value}\n")
    ok = summary["predictions"] == summary["valid_events"] * len(settings.models)
    raise typer.Exit(0 if ok else 1)


@app.command()
@one_line_errors
def history(
    model: Annotated[str, typer.Argument(help="Model name.")],
    config: ConfigOption = DEFAULT_CONFIG, bootstrap: BootstrapOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines.")] = False,
) -> None:
    """Show a model's history: seq, time, kind, snapshots, fingerprints."""
    from riverbed.cli_history import history_command
    from riverbed.streams.replay import model_spec

    settings = _settings(config, bootstrap)
    model_spec(settings, model)
    history_command(_probe(settings), model, as_json)


@app.command("replay")
@one_line_errors
def replay_cmd(
    model: Annotated[str, typer.Argument(help="Model name.")],
    config: ConfigOption = DEFAULT_CONFIG, bootstrap: BootstrapOption = None,
    to_seq: Annotated[int | None, typer.Option(help="Rebuild the state at this seq.")] = None,
    to_time: Annotated[str | None, typer.Option(
        help="ISO time (UTC unless it has an offset): the state at that time.")] = None,
    lineage: LineageOption = None,
    from_genesis: Annotated[bool, typer.Option(help="Ignore snapshots.")] = False,
    verify: Annotated[bool, typer.Option(help="Check every recorded fingerprint.")] = False,
    output: Annotated[Path | None, typer.Option(help="Write the rebuilt model (pickle).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object.")] = False,
) -> None:
    """Rebuild a past model version; with --verify exit 1 on any mismatch (2: tampered)."""
    from riverbed.cli_history import check_target, parse_time, replay_command
    from riverbed.streams.replay import model_spec

    settings = _settings(config, bootstrap)
    model_spec(settings, model)
    check_target(to_seq, lineage)
    if to_time is not None:
        parse_time(to_time)
    _check(output is None or not output.is_dir(), f"--output {output} is a directory")
    raise typer.Exit(replay_command(_probe(settings), model, to_seq,
                                    to_time, from_genesis, verify, output, as_json, lineage))


@app.command()
@one_line_errors
def top(
    config: ConfigOption = DEFAULT_CONFIG, bootstrap: BootstrapOption = None,
    once: Annotated[bool, typer.Option(help="Print the current view and exit.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help=(
        "JSON rows: one line with --once, else one line each time new reports arrive."))] = False,
) -> None:
    """Live per-model view: events/s, accuracy, model_seq, pending labels, drift, lag."""
    from riverbed.streams.top import Fetched, TopView, fetches

    settings = _settings(config, bootstrap, probe=True)
    view = TopView(settings)

    async def run_once() -> None:
        async for fetched in fetches(settings, follow=False, idle_timeout_s=10):
            view.add_fetch(fetched)

    async def following() -> AsyncIterator[Fetched]:
        """Fetches until Ctrl-C or SIGTERM (each fetch waits a second at most). The signal
        sets a flag rather than cancelling the fetch in flight: the Kafka client can swallow
        a cancel, and a follow then outlived its Ctrl-C."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        async for fetched in fetches(settings, follow=True):
            yield fetched
            if stop.is_set():
                return

    async def run_json() -> None:
        # the backlog is read first: a line shows the view at the topic's end, never midway
        shown = False
        async for fetched in following():
            view.add_fetch(fetched)
            if fetched.caught_up and (fetched.reports or not shown):
                write_json(view.rows())
                shown = True

    async def run_live(live: Live) -> None:
        async for fetched in following():
            view.add_fetch(fetched)
            if fetched.caught_up:
                live.update(view.table())

    def write_json(rows: list[dict[str, Any]]) -> None:
        if view.skipped:
            sys.stderr.write(f"skipped {view.skipped:,} records on {settings.topics.metrics} "
                             "that are not MetricsReports\n")
        sys.stdout.write(json.dumps(rows) + "\n")
        sys.stdout.flush()

    if once:
        asyncio.run(run_once())
        if as_json:
            write_json(view.rows())
        else:
            Console().print(view.table())
        return
    with contextlib.suppress(KeyboardInterrupt), stdout_closed_is_the_end():
        if as_json:
            asyncio.run(run_json())
            return
        with Live(view.table(), console=Console(), refresh_per_second=2) as live:
            asyncio.run(run_live(live))


@contextlib.contextmanager
def stdout_closed_is_the_end() -> Iterator[None]:
    """A reader that closed the pipe (``| head -1``) ends the command quietly, exit 0."""
    try:
        yield
    except BrokenPipeError:
        # Python flushes stdout again at exit: point it at /dev/null so that fails silently
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


@app.command("rollback")
@one_line_errors
def rollback_cmd(
    model: Annotated[str, typer.Argument(help="Model name.")],
    to_seq: Annotated[int, typer.Option(help="Restore the state at this seq.")],
    reason: Annotated[str, typer.Option(help="Why (recorded in the history).")],
    lineage: LineageOption = None,
    config: ConfigOption = DEFAULT_CONFIG, bootstrap: BootstrapOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object.")] = False,
) -> None:
    """Roll a model back to seq N (of --lineage L); the rollback is itself a history event."""
    from riverbed.cli_history import check_target, rollback_command
    from riverbed.streams.replay import model_spec

    settings = _settings(config, bootstrap)
    model_spec(settings, model)
    check_target(to_seq, lineage)
    raise typer.Exit(rollback_command(_probe(settings), model, to_seq,
                                      reason, as_json, lineage))


@app.command()
@one_line_errors
def score(
    model: Annotated[str, typer.Argument(help="Model name.")],
    seq: Annotated[int | None, typer.Option(help="Model version (default: latest).")] = None,
    lineage: LineageOption = None,
    config: ConfigOption = DEFAULT_CONFIG, bootstrap: BootstrapOption = None,
) -> None:
    """Score JSON-lines events from stdin with the model as of --seq (and --lineage).

    A line that cannot be scored is reported on stderr with its number; exit 1 at the end."""
    from riverbed.cli_history import check_target, score_command
    from riverbed.streams.replay import model_spec

    settings = _settings(config, bootstrap)
    model_spec(settings, model)
    check_target(seq, lineage)
    raise typer.Exit(score_command(_probe(settings), model, seq,
                                   lineage))


def _click_exceptions() -> Any:
    try:  # typer >= 0.20 vendors click
        from typer._click import exceptions
    except ImportError:  # pragma: no cover - older typer on click
        from click import exceptions  # type: ignore[no-redef]
    return exceptions


def main() -> None:
    """Console-script entry point. A usage error the parser finds (an unknown option or
    command, a value of the wrong type, a missing argument) is one line too, exit 2."""
    exceptions = _click_exceptions()
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    try:
        code = app(standalone_mode=False)
    except exceptions.NoArgsIsHelpError:
        app()  # the help, as usual
    except exceptions.UsageError as exc:
        command = exc.ctx.command_path if exc.ctx is not None else "riverbed"
        sys.stderr.write(f"error: {' '.join(exc.format_message().split())} "
                         f"(see {command} --help)\n")
        sys.exit(2)
    except typer.Abort:
        sys.stderr.write("error: aborted\n")
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
