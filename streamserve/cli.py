"""Command line: `streamserve serve`, `streamserve bench`, `streamserve client`, `streamserve plan`."""

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


def _turn(args: argparse.Namespace) -> tuple[str | None, str | None]:
    """TURN username and credential: flags, else STREAMSERVE_TURN_USERNAME / _CREDENTIAL, or a file."""
    username = args.turn_username or os.environ.get("STREAMSERVE_TURN_USERNAME") or None
    credential = args.turn_credential or os.environ.get("STREAMSERVE_TURN_CREDENTIAL") or None
    if args.turn_credential_file:
        path = Path(args.turn_credential_file)
        if not path.is_file():
            raise SystemExit(f"--turn-credential-file: {path} does not exist")
        credential = path.read_text().strip() or None
    return username, credential


def _pipeline_options(args: argparse.Namespace) -> tuple[tuple[str, str], ...]:
    """Model options as ServerConfig.pipeline_options (each goes to the pipelines whose constructor takes
    it): the voice pipeline's (docs/voice.md) and the video pipeline's checkpoint options (docs/video.md)."""
    names = ("llm_url", "llm_model", "llm_api_key", "asr_model", "asr_engine", "tts", "causal_weights", "checkpoint_key",
             "preset", "dtype")
    return tuple((n, getattr(args, n)) for n in names if getattr(args, n, None))


def _devices(text: str | None) -> tuple[str, ...]:
    """``--devices cuda:0,cuda:1`` -> ("cuda:0", "cuda:1"); an empty entry is an error."""
    if not text:
        return ()
    devices = tuple(d.strip() for d in text.split(","))
    if any(not d for d in devices):
        raise ValueError(f"--devices: empty entry in {text!r}")
    return devices


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    try:
        session = SessionConfig(latency_budget_s=args.latency_budget_ms / 1000.0)
        turn_username, turn_credential = _turn(args)
        return ServerConfig(
            host=args.host, port=args.port, pipeline=args.pipeline, device=args.device,
            log_level=args.log_level, max_sessions=args.max_sessions, max_batch=args.max_batch,
            adapt_batch=args.adapt_batch, spare_frames=args.spare_frames, model_process=args.model_process,
            tokens=_tokens(args), ice_servers=tuple(args.ice_server or ()), model=args.model,
            session=session, viewer_tokens=_viewer_tokens(args), limits=_limits(args),
            turn_username=turn_username, turn_credential=turn_credential,
            scheduler=args.scheduler, max_utilization=args.max_utilization,
            pipeline_options=_pipeline_options(args),
            devices=_devices(args.devices), kv_budget_mb=args.kv_budget_mb,
            record_dir=args.record_dir, record_max_bytes=int(args.record_max_mb * 1024 * 1024),
        )
    except ValueError as exc:
        raise SystemExit(f"streamserve serve: {exc}") from exc


def _serve(args: argparse.Namespace) -> int:
    from streamserve.pipelines import registry
    from streamserve.server import create_app
    from streamserve.serving import install_log_filter, serve

    config = config_from_args(args)
    if args.ray:
        from streamserve.cluster.launch import serve_cluster

        serve_cluster(args.ray, config, args.nodes)
        return 0
    if args.pp_stages is not None or args.pp_devices is not None:
        from streamserve.pipelines.video.parallel.pipeline import with_stages

        try:
            devices = _devices(args.pp_devices) or None
            registry.register(with_stages(args.pp_stages or len(devices or ()) or 2, devices), replace=True)
        except ValueError as exc:
            raise SystemExit(f"streamserve serve: {exc}") from exc
    if config.pipeline not in registry.available():
        raise SystemExit(f"streamserve serve: unknown pipeline {config.pipeline!r}; "
                         f"available: {', '.join(registry.available())}")
    if config.model is not None and not Path(config.model).exists():
        raise SystemExit(f"streamserve serve: --model {config.model} does not exist")
    if args.causal_weights and not Path(args.causal_weights).is_file():
        raise SystemExit(f"streamserve serve: --causal-weights {args.causal_weights} is not a file")
    logging.basicConfig(level=config.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    install_log_filter()
    shown = {k: v for k, v in dataclasses.asdict(config).items() if k not in ("tokens", "viewer_tokens", "turn_credential")}
    logging.getLogger("streamserve").info("starting with %s, %d token(s), %d viewer token(s)", shown,
                                          len(config.tokens), len(config.viewer_tokens))
    if not config.tokens and config.host not in ("127.0.0.1", "localhost", "::1"):
        logging.getLogger("streamserve").warning(
            "no --token: anyone who reaches %s:%d may open sessions (docs/security.md)", config.host, config.port)
    print(f"streamserve {streamserve.__version__}: open http://{config.host}:{config.port}/", flush=True)
    return serve(create_app(config), config)


BENCHMARKS = ("transport", "video", "attention", "serving", "multigpu", "voice")


def _bench(args: argparse.Namespace) -> int:
    root = Path(streamserve.__file__).resolve().parent.parent / "benchmarks"
    script = root / f"{args.name}.py"
    if not script.is_file():
        raise SystemExit(f"streamserve bench: {script} not found (benchmarks ship with the source checkout)")
    sys.argv = [str(script), *args.rest]
    runpy.run_path(str(script), run_name="__main__")
    return 0


def _drain(args: argparse.Namespace) -> int:
    import urllib.error
    import urllib.parse
    import urllib.request

    node = urllib.parse.quote(args.node, safe="")
    request = urllib.request.Request(f"{args.front.rstrip('/')}/v1/cluster/drain/{node}", method="POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as reply:  # noqa: S310 - an operator-given URL
            print(reply.read().decode())
            return 0
    except urllib.error.HTTPError as exc:
        print(exc.read().decode(), file=sys.stderr)
        return 1


def _client(args: argparse.Namespace) -> int:
    from streamserve.client import main_client

    return main_client(args)


def _plan(args: argparse.Namespace) -> int:
    from streamserve.planner import main_plan

    return main_plan(args)


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
    serve.add_argument("--devices", default=None, help="one engine per device, e.g. cuda:0,cuda:1 (or "
                       "cpu,cpu); new sessions go to the device with the most headroom")
    serve.add_argument("--kv-budget-mb", type=float, default=None, help="KV memory one engine may hold; "
                       "placement skips an engine that cannot hold a new session's cache (default: the "
                       "device's free memory)")
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    serve.add_argument("--model", default=None, help="model folder for pipelines that load checkpoints")
    serve.add_argument("--causal-weights", default=None, metavar="PT",
                       help="CausVid / StreamDiffusionV2 .pt for the --model Wan folder; selects the "
                       "streamdiffusionv2 stream preset (docs/video.md)")
    serve.add_argument("--checkpoint-key", default=None, choices=["generator", "generator_ema"],
                       help="which state dict of --causal-weights to load (default generator)")
    serve.add_argument("--preset", default=None, choices=["streamserve", "streamdiffusionv2"],
                       help="video stream rules, overriding the one the weights select")
    serve.add_argument("--dtype", default=None, choices=["float32", "float16", "bfloat16"],
                       help="video model precision (default: bfloat16 on CUDA and, for the demo model, on a "
                       "CPU with native bf16; else float32)")
    serve.add_argument("--token", action="append", help="operator/ingest (admin) bearer token, repeatable; "
                       "also STREAMSERVE_TOKENS=a,b. When set, opening a session needs one "
                       "(docs/security.md)")
    serve.add_argument("--tokens-file", default=None, help="file with one admin bearer token per line")
    serve.add_argument("--viewer-token", action="append", help="require this token (repeatable; also "
                       "STREAMSERVE_VIEWER_TOKENS=a,b) for WHEP, /view/NAME?token=... and stream stats")
    serve.add_argument("--ice-server", action="append", help="stun:/turn: URL announced to WHIP clients")
    serve.add_argument("--turn-username", default=None,
                       help="username for the turn:/turns: servers (or STREAMSERVE_TURN_USERNAME)")
    serve.add_argument("--turn-credential", default=None,
                       help="credential for the turn:/turns: servers (or STREAMSERVE_TURN_CREDENTIAL)")
    serve.add_argument("--turn-credential-file", default=None, help="file holding the TURN credential")
    serve.add_argument("--record-dir", default=None,
                       help="folder for session recordings (default: $TMPDIR/streamserve-recordings)")
    serve.add_argument("--record-max-mb", type=float, default=512.0, help="size cap of one recording (MiB)")
    serve.add_argument("--max-sessions", type=int, default=16)
    serve.add_argument("--max-batch", type=int, default=8)
    serve.add_argument("--no-adapt-batch", dest="adapt_batch", action="store_false",
                       help="slo: always form the largest video batch the group allows, not the largest "
                       "whose predicted latency fits the deadline (docs/serving.md)")
    serve.add_argument("--no-spare-frames", dest="spare_frames", action="store_false",
                       help="slo: serve a lowered frame-rate tier at exactly its rate, even when the device "
                       "has time to run the frames it skips (docs/serving.md)")
    serve.add_argument("--model-process", dest="model_process", action="store_true", default=True,
                       help="the video model runs in a process of its own, so the event loop's share of the "
                       "GIL does not slow its steps (the default; docs/architecture.md)")
    serve.add_argument("--in-process", dest="model_process", action="store_false",
                       help="the video model runs in the server's process (one process to debug or profile)")
    serve.add_argument("--latency-budget-ms", type=float, default=250.0,
                       help="per-frame deadline after arrival (default 250)")
    serve.add_argument("--scheduler", default="slo", choices=["slo", "edf", "fifo"],
                       help="slo: admission + degradation tiers (docs/serving.md); edf, fifo: baselines")
    serve.add_argument("--max-utilization", type=float, default=0.9,
                       help="admit sessions while the device's predicted busy fraction stays under this")
    limits = serve.add_argument_group("limits", "each also STREAMSERVE_<NAME> (e.g. STREAMSERVE_HEADER_TIMEOUT_S)")
    for name, text in LIMIT_FLAGS.items():
        limits.add_argument("--" + name.replace("_", "-"), dest=name, default=None, help=text)
    voice = serve.add_argument_group("voice pipeline (docs/voice.md)")
    voice.add_argument("--llm-url", default=None, help="OpenAI-compatible endpoint, e.g. http://127.0.0.1:8080/v1 "
                       "(vLLM, SGLang, llama.cpp, Ollama); default: the embedded small LM")
    voice.add_argument("--llm-model", default=None, help="a local Hugging Face causal-LM folder or .gguf file")
    voice.add_argument("--llm-api-key", default=None, help="bearer token for --llm-url")
    voice.add_argument("--asr-model", default=None, help="a CTranslate2 Whisper folder (default: tiny.en)")
    voice.add_argument("--asr-engine", default=None, choices=["torch", "faster-whisper"],
                       help="torch (default: encodes only the audio's length) or faster-whisper (30 s windows)")
    voice.add_argument("--tts", default=None, choices=["hibari", "espeak"], help="speech synthesizer")
    serve.add_argument("--pp-stages", type=int, default=None,
                       help="pipeline-parallel stages of the video-pp pipeline (default 2)")
    serve.add_argument("--pp-devices", default=None, help="video-pp stage devices, e.g. cuda:0,cuda:1")
    serve.add_argument("--ray", default=None, metavar="ADDRESS",
                       help="serve a cluster front over Ray (ADDRESS of a running cluster, or 'local')")
    serve.add_argument("--nodes", type=int, default=None, help="with --ray local: node servers to start")
    serve.set_defaults(func=_serve)

    from streamserve.planner import add_plan_arguments

    plan = sub.add_parser("plan", help="capacity planner: sessions per device, p99, behaviour at 150%% load")
    add_plan_arguments(plan)
    plan.set_defaults(func=_plan)

    drain = sub.add_parser("drain", help="stop placing sessions on a cluster node and end its sessions")
    drain.add_argument("node", help="node id, as listed by GET /v1/cluster/nodes")
    drain.add_argument("--front", default="http://127.0.0.1:8000", help="the cluster front's URL")
    drain.set_defaults(func=_drain)

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
