"""The ``diffviews`` command.

    diffviews build-demo [--data-dir DIR] [--models digits shapes] [--num-samples N] [--force]
    diffviews extract --data-dir DIR --model NAME --layers L1 [L2 ...]
    diffviews viz [--data-dir DIR] [--model NAME] [--port N] [--device D] [--share]
    diffviews bench [--quick] [--json PATH] [--markdown PATH] [--data-dir DIR] [--model NAME]
    diffviews soak [--sessions 8] [--duration 300] [--abusive 1] [--json PATH] [--data-dir DIR]

Subcommands live in ``COMMANDS``; add one with the ``command`` decorator:

    def _my_args(p: argparse.ArgumentParser) -> None: p.add_argument(...)

    @command("my-cmd", "one-line help", _my_args)
    def my_cmd(args: argparse.Namespace) -> int: ...

Bad input (unknown model or layer, a broken data folder) ends with exit code 2 and a
one-line message; set DIFFVIEWS_DEBUG=1 to see the traceback instead.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass

from .data.layout import DataLayoutError, default_data_dir

USAGE_ERROR = 2


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int | None]
    #: pass options this parser does not know on to ``run`` as ``args.extra`` (else they are an error)
    passthrough: bool = False


COMMANDS: dict[str, Command] = {}


def command(name: str, help: str, add_arguments: Callable[[argparse.ArgumentParser], None],
            passthrough: bool = False):
    """Register the decorated ``run(args) -> exit code`` as subcommand ``name``."""

    def register(run: Callable[[argparse.Namespace], int | None]):
        COMMANDS[name] = Command(name, help, add_arguments, run, passthrough)
        return run

    return register


def _add_data_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", default=None,
                   help=f"data directory (default: $DIFFVIEWS_DATA_DIR or {default_data_dir()})")


def _add_threads(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads during extraction (default: torch's own choice)")


def _data_dir(args: argparse.Namespace):
    return args.data_dir if args.data_dir is not None else default_data_dir()


# ---- build-demo --------------------------------------------------------------------------

def _build_demo_args(p: argparse.ArgumentParser) -> None:
    from .demo import DEMO_MODELS

    _add_data_dir(p)
    p.add_argument("--models", nargs="+", default=list(DEMO_MODELS), metavar="MODEL",
                   help=f"demo models to build (default: {' '.join(DEMO_MODELS)})")
    p.add_argument("--num-samples", type=int, default=None, help="real images per model (default: 1000)")
    p.add_argument("--noise-levels", type=float, nargs="+", default=None, metavar="PCT",
                   help="noise levels in %% (default: the model's, e.g. 85 70 55 40)")
    p.add_argument("--layers", nargs="+", default=None, help="layers to record (default: the model's default layer)")
    p.add_argument("--seed", type=int, default=0, help="sample choice and noise seed (default: 0)")
    p.add_argument("--device", default="cpu", help="torch device for extraction (default: cpu)")
    p.add_argument("--force", action="store_true", help="rebuild every part, even the valid ones")
    _add_threads(p)


@command("build-demo", "build the bundled demo models' data (images, metadata, activations, maps)", _build_demo_args)
def build_demo_cmd(args: argparse.Namespace) -> int:
    from .data.build import build_demo

    built = build_demo(_data_dir(args), models=args.models, layers=args.layers, num_samples=args.num_samples,
                       noise_levels=args.noise_levels, seed=args.seed, device=args.device, force=args.force,
                       progress=not args.quiet, threads=args.threads)
    for model, paths in built.items():
        print(f"{model}: {paths.root}")
    return 0


# ---- extract ---------------------------------------------------------------------------

def _extract_args(p: argparse.ArgumentParser) -> None:
    _add_data_dir(p)
    p.add_argument("--model", required=True, help="model folder inside the data directory")
    p.add_argument("--layers", nargs="+", required=True, metavar="LAYER", help="layers to extract and map")
    p.add_argument("--device", default="cpu", help="torch device for extraction (default: cpu)")
    p.add_argument("--force", action="store_true", help="re-extract and refit even valid layers")
    _add_threads(p)


@command("extract", "record more layers' activations and maps for a built model", _extract_args)
def extract_cmd(args: argparse.Namespace) -> int:
    from .data.build import build_layers

    paths = build_layers(_data_dir(args), args.model, args.layers, device=args.device, force=args.force,
                         progress=not args.quiet, threads=args.threads)
    print(f"{args.model}: {', '.join(args.layers)} in {paths.root}")
    return 0


# ---- viz -----------------------------------------------------------------------------

def _viz_args(p: argparse.ArgumentParser) -> None:
    _add_data_dir(p)
    p.add_argument("--model", default=None, help="model shown first (default: the first one found)")
    p.add_argument("--port", type=int, default=None, help="port to serve on (default: 7860)")
    p.add_argument("--device", default=None, help="torch device for generation (default: cuda if available)")
    p.add_argument("--share", action="store_true", help="create a public Gradio share link")


@command("viz", "serve the interactive app (other options, e.g. --host, go to the app unchanged)", _viz_args,
         passthrough=True)
def viz_cmd(args: argparse.Namespace) -> int:
    from .visualization.app import main as app_main

    argv = ["--data-dir", str(_data_dir(args))]
    for flag, value in (("--model", args.model), ("--port", args.port), ("--device", args.device)):
        if value is not None:
            argv += [flag, str(value)]
    if args.share:
        argv.append("--share")
    return app_main(argv + args.extra) or 0


# ---- bench ---------------------------------------------------------------------------

def _bench_args(p: argparse.ArgumentParser) -> None:
    from .bench.runner import SECTIONS

    _add_data_dir(p)
    p.add_argument("--quick", action="store_true", help="a tiny, fast run (a smoke test: its timings mean nothing)")
    p.add_argument("--json", default=None, metavar="PATH", help="write the results as JSON to PATH")
    p.add_argument("--markdown", default=None, metavar="PATH", help="also write the markdown table to PATH")
    p.add_argument("--model", default=None, help="model measured (default: digits when present, else the first)")
    p.add_argument("--second-model", default=None,
                   help="the other model of the memory test (default: another model, else a copy of --model)")
    p.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=SECTIONS, metavar="SECTION",
                   help=f"measure only these (default: all of {' '.join(SECTIONS)})")


@command("bench", "measure map fits, layer switches, callbacks, generation, memory, start-up and scale",
         _bench_args)
def bench_cmd(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .bench.report import markdown, write_json
    from .bench.runner import SECTIONS, BenchOptions, run

    command_line = ["diffviews bench"] + (["--quick"] if args.quick else [])
    for flag, value in (("--data-dir", args.data_dir), ("--model", args.model),
                        ("--second-model", args.second_model), ("--json", args.json)):
        if value is not None:
            command_line.append(f"{flag} {value}")
    if list(args.sections) != list(SECTIONS):
        command_line.append("--sections " + " ".join(args.sections))
    options = BenchOptions(Path(_data_dir(args)), model=args.model, second_model=args.second_model,
                           quick=args.quick, sections=tuple(args.sections), command=" ".join(command_line))
    results = run(options)
    table = markdown(results)
    print(table, end="")
    if args.json is not None:
        write_json(results, Path(args.json))
    if args.markdown is not None:
        Path(args.markdown).write_text(table)
    failed = results["meta"]["failed_sections"]
    if failed:
        print(f"diffviews bench: failed sections: {', '.join(failed)} (see their 'error' in the results)",
              file=sys.stderr)
        return 1
    return 0


def _soak_args(p: argparse.ArgumentParser) -> None:
    _add_data_dir(p)
    p.add_argument("--sessions", type=int, default=8, help="well-behaved visitor sessions (default 8)")
    p.add_argument("--duration", type=float, default=300.0, help="seconds of the run (default 300)")
    p.add_argument("--abusive", type=int, default=1,
                   help="abusive visitors: REST bypass, oversized uploads, queue flooding (default 1)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the visitors (default 0)")
    p.add_argument("--json", default=None, metavar="PATH", help="write the report as JSON to PATH")


@command("soak", "drive many sessions against the app on a scratch copy of the data; report errors, "
                 "cross-session effects, latency, RSS and disk", _soak_args)
def soak_cmd(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from .bench.soak import SoakOptions, markdown, run_soak

    if args.sessions < 1 or not args.duration > 0 or args.abusive < 0:
        raise ValueError(f"--sessions must be >= 1, --duration > 0 and --abusive >= 0; got {args.sessions}, "
                         f"{args.duration:g}, {args.abusive}")
    report = run_soak(SoakOptions(Path(_data_dir(args)), sessions=args.sessions, duration=args.duration,
                                  abusive=args.abusive, seed=args.seed))
    print(markdown(report), end="")
    if args.json is not None:
        Path(args.json).write_text(json.dumps(report, indent=2, default=str) + "\n")
    bad = report["errors"] or report["cross_session_effects"] or not report["app_alive_at_end"]
    return 1 if bad else 0


# ---- entry point -----------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="diffviews", description="Look inside diffusion image models.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for cmd in COMMANDS.values():
        p = sub.add_parser(cmd.name, help=cmd.help, description=cmd.help)
        cmd.add_arguments(p)
        p.add_argument("-q", "--quiet", action="store_true", help="no progress bars or build log")
        p.set_defaults(run=cmd.run)
    return parser


def _configure_logging(quiet: bool) -> None:
    logger = logging.getLogger("diffviews")
    if quiet:
        logger.setLevel(logging.WARNING)
        return
    logger.setLevel(logging.INFO)
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (it may be replaced after set-up)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not COMMANDS[args.command].passthrough:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.extra = extra
    _configure_logging(args.quiet)
    try:
        return int(args.run(args) or 0)
    except (DataLayoutError, ValueError, KeyError, FileNotFoundError) as exc:
        if os.environ.get("DIFFVIEWS_DEBUG"):
            raise
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
        print(f"diffviews {args.command}: error: {' '.join(str(msg).splitlines())}", file=sys.stderr)
        return USAGE_ERROR


if __name__ == "__main__":
    sys.exit(main())
