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


def _voice_options(args: argparse.Namespace) -> tuple[tuple[str, str], ...]:
    """The voice pipeline's model options (docs/voice.md), as ServerConfig.pipeline_options."""
    names = ("llm_url", "llm_model", "llm_api_key", "asr_model", "tts")
    return tuple((n, getattr(args, n)) for n in names if getattr(args, n, None))


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    try:
        session = SessionConfig(latency_budget_s=args.latency_budget_ms / 1000.0)
        return ServerConfig(
            host=args.host, port=args.port, pipeline=args.pipeline, device=args.device,
            log_level=args.log_level, max_sessions=args.max_sessions, max_batch=args.max_batch,
            tokens=_tokens(args), ice_servers=tuple(args.ice_server or ()), model=args.model,
            session=session, pipeline_options=_voice_options(args),
        )
    except ValueError as exc:
        raise SystemExit(f"streamserve serve: {exc}") from exc


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from streamserve.pipelines import registry
    from streamserve.server import create_app

    config = config_from_args(args)
    if config.pipeline not in registry.available():
        raise SystemExit(f"streamserve serve: unknown pipeline {config.pipeline!r}; "
                         f"available: {', '.join(registry.available())}")
    if config.model is not None and not Path(config.model).exists():
        raise SystemExit(f"streamserve serve: --model {config.model} does not exist")
    logging.basicConfig(level=config.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    shown = {k: v for k, v in dataclasses.asdict(config).items() if k != "tokens"}
    logging.getLogger("streamserve").info("starting with %s, %d token(s)", shown, len(config.tokens))
    print(f"streamserve {streamserve.__version__}: open http://{config.host}:{config.port}/", flush=True)
    uvicorn.run(create_app(config), host=config.host, port=config.port, log_level=config.log_level)
    return 0


BENCHMARKS = ("transport", "video", "attention", "voice")


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
    serve.add_argument("--token", action="append", help="bearer token for ingest (repeatable); "
                       "also STREAMSERVE_TOKENS=a,b")
    serve.add_argument("--tokens-file", default=None, help="file with one bearer token per line")
    serve.add_argument("--ice-server", action="append", help="stun:/turn: URL announced to WHIP clients")
    serve.add_argument("--max-sessions", type=int, default=16)
    serve.add_argument("--max-batch", type=int, default=8)
    serve.add_argument("--latency-budget-ms", type=float, default=250.0,
                       help="per-frame deadline after arrival (default 250)")
    voice = serve.add_argument_group("voice pipeline (docs/voice.md)")
    voice.add_argument("--llm-url", default=None, help="OpenAI-compatible endpoint, e.g. http://127.0.0.1:8080/v1 "
                       "(vLLM, SGLang, llama.cpp, Ollama); default: the embedded small LM")
    voice.add_argument("--llm-model", default=None, help="a local Hugging Face causal-LM folder or .gguf file")
    voice.add_argument("--llm-api-key", default=None, help="bearer token for --llm-url")
    voice.add_argument("--asr-model", default=None, help="a CTranslate2 Whisper folder (default: tiny.en)")
    voice.add_argument("--tts", default=None, choices=["hibari", "espeak"], help="speech synthesizer")
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
