"""Command line: `streamserve serve`, `streamserve bench`, `streamserve client`."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import runpy
import sys
from pathlib import Path

import streamserve
from streamserve.core.config import ServerConfig, SessionConfig
from streamserve.core.limits import LimitsConfig


def _tokens(args: argparse.Namespace) -> tuple[str, ...]:
    tokens = list(args.token or [])
    env = os.environ.get("STREAMSERVE_TOKENS", "")
    tokens += [t.strip() for t in env.split(",") if t.strip()]
    if args.tokens_file:
        path = Path(args.tokens_file)
        if not path.is_file():
            raise SystemExit(f"--tokens-file: {path} does not exist")
        tokens += [line.strip() for line in path.read_text().splitlines()
                   if line.strip() and not line.lstrip().startswith("#")]
    return tuple(dict.fromkeys(tokens))


def _viewer_tokens(args: argparse.Namespace) -> tuple[str, ...]:
    env = os.environ.get("STREAMSERVE_VIEWER_TOKENS", "")
    tokens = [*(args.viewer_token or []), *(t.strip() for t in env.split(",") if t.strip())]
    return tuple(dict.fromkeys(tokens))


def _limits(args: argparse.Namespace) -> LimitsConfig:
    """The LimitsConfig of the limit flags (each also STREAMSERVE_<FLAG> in the environment)."""
    values = {name: getattr(args, name) for name in LIMIT_FLAGS if getattr(args, name, None) is not None}
    for name in LIMIT_FLAGS:
        env = os.environ.get(f"STREAMSERVE_{name.upper()}")
        if name not in values and env:
            values[name] = env
    out: dict[str, object] = {}
    for name, value in values.items():
        if name == "max_input":
            continue
        kind = type(getattr(LimitsConfig(), name))
        try:
            out[name] = kind(value)
        except ValueError:
            raise ValueError(f"{name} must be {'an int' if kind is int else 'a number'}, got {value!r}") from None
    if "max_input" in values:
        width, _, height = str(values["max_input"]).lower().partition("x")
        if not (width.isdigit() and height.isdigit()):
            raise ValueError(f"--max-input must be WIDTHxHEIGHT, got {values['max_input']!r}")
        out.update(max_input_width=int(width), max_input_height=int(height),
                   max_input_pixels=int(width) * int(height))
    return LimitsConfig(**out)  # type: ignore[arg-type]


# Limit flags: LimitsConfig field -> help. `max_input` (WxH) sets width, height and pixels at once.
LIMIT_FLAGS = {
    "max_body_bytes": "largest request body in bytes (default 262144); bigger ones get 413 as they stream",
    "max_patch_bytes": "largest trickle-ICE PATCH body in bytes (default 16384)",
    "max_json_depth": "deepest JSON nesting accepted in bodies and query values (default 16)",
    "header_timeout_s": "seconds a connection may take to send a complete request head (default 10)",
    "keep_alive_s": "seconds an idle keep-alive connection stays open (default 5)",
    "max_connections": "open connections (HTTP and WebSocket) at most (default 1024)",
    "max_input": "largest WebSocket video input, WIDTHxHEIGHT (default 1920x1080 pixels, 1920 a side)",
    "max_compression_ratio": "largest decoded/JPEG size ratio of a WebSocket input frame (default 1000)",
    "decode_pixels_per_s": "decode budget per WebSocket session, pixels/s (default 1920*1080*60)",
}


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    try:
        session = SessionConfig(latency_budget_s=args.latency_budget_ms / 1000.0)
        return ServerConfig(
            host=args.host, port=args.port, pipeline=args.pipeline, device=args.device,
            log_level=args.log_level, max_sessions=args.max_sessions, max_batch=args.max_batch,
            tokens=_tokens(args), ice_servers=tuple(args.ice_server or ()), model=args.model,
            session=session, viewer_tokens=_viewer_tokens(args), limits=_limits(args),
        )
    except ValueError as exc:
        raise SystemExit(f"streamserve serve: {exc}") from exc


def _serve(args: argparse.Namespace) -> int:
    from streamserve.pipelines import registry
    from streamserve.server import create_app
    from streamserve.serving import install_log_filter, serve

    config = config_from_args(args)
    if config.pipeline not in registry.available():
        raise SystemExit(f"streamserve serve: unknown pipeline {config.pipeline!r}; "
                         f"available: {', '.join(registry.available())}")
    if config.model is not None and not Path(config.model).exists():
        raise SystemExit(f"streamserve serve: --model {config.model} does not exist")
    logging.basicConfig(level=config.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    install_log_filter()
    shown = {k: v for k, v in dataclasses.asdict(config).items() if k not in ("tokens", "viewer_tokens")}
    logging.getLogger("streamserve").info("starting with %s, %d token(s), %d viewer token(s)", shown,
                                          len(config.tokens), len(config.viewer_tokens))
    if not config.tokens and config.host not in ("127.0.0.1", "localhost", "::1"):
        logging.getLogger("streamserve").warning(
            "no --token: anyone who reaches %s:%d may open sessions (docs/security.md)", config.host, config.port)
    print(f"streamserve {streamserve.__version__}: open http://{config.host}:{config.port}/", flush=True)
    return serve(create_app(config), config)


BENCHMARKS = ("transport", "video", "attention")


def _bench(args: argparse.Namespace) -> int:
    root = Path(streamserve.__file__).resolve().parent.parent / "benchmarks"
    script = root / f"{args.name}.py"
    if not script.is_file():
        raise SystemExit(f"streamserve bench: {script} not found (benchmarks ship with the source checkout)")
    sys.argv = [str(script), *args.rest]
    runpy.run_path(str(script), run_name="__main__")
    return 0


def _client(args: argparse.Namespace) -> int:
    from streamserve.client import main_client

    return main_client(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="streamserve", description="Real-time generation server for "
                                     "live video and voice.")
    parser.add_argument("--version", action="version", version=f"streamserve {streamserve.__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the server")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    serve.add_argument("--pipeline", default="video", help="default pipeline for new sessions")
    serve.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    serve.add_argument("--model", default=None, help="model folder for pipelines that load checkpoints")
    serve.add_argument("--token", action="append", help="operator/ingest (admin) bearer token, repeatable; "
                       "also STREAMSERVE_TOKENS=a,b. When set, opening a session needs one "
                       "(docs/security.md)")
    serve.add_argument("--tokens-file", default=None, help="file with one admin bearer token per line")
    serve.add_argument("--viewer-token", action="append", help="require this token (repeatable; also "
                       "STREAMSERVE_VIEWER_TOKENS=a,b) for WHEP, /view/NAME?token=... and stream stats")
    serve.add_argument("--ice-server", action="append", help="stun:/turn: URL announced to WHIP clients")
    serve.add_argument("--max-sessions", type=int, default=16)
    serve.add_argument("--max-batch", type=int, default=8)
    serve.add_argument("--latency-budget-ms", type=float, default=250.0,
                       help="per-frame deadline after arrival (default 250)")
    limits = serve.add_argument_group("limits", "each also STREAMSERVE_<NAME> (e.g. STREAMSERVE_HEADER_TIMEOUT_S)")
    for name, text in LIMIT_FLAGS.items():
        limits.add_argument("--" + name.replace("_", "-"), dest=name, default=None, help=text)
    serve.set_defaults(func=_serve)

    bench = sub.add_parser("bench", help="run a benchmark script from benchmarks/")
    bench.add_argument("name", choices=BENCHMARKS)
    bench.add_argument("rest", nargs=argparse.REMAINDER, help="arguments for the benchmark")
    bench.set_defaults(func=_bench)

    from streamserve.client import add_client_arguments

    client = sub.add_parser("client", help="convert a video file through a pipeline (WebSocket API)")
    add_client_arguments(client)
    client.set_defaults(func=_client)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
