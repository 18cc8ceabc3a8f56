"""The limits and tokens are configurable from `streamserve serve` flags and the environment."""

from __future__ import annotations

import pytest

from streamserve.cli import build_parser, config_from_args


def config(argv: list[str]):  # type: ignore[no-untyped-def]
    return config_from_args(build_parser().parse_args(["serve", *argv]))


def test_flags_and_environment_set_the_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMSERVE_HEADER_TIMEOUT_S", "2.5")
    monkeypatch.setenv("STREAMSERVE_MAX_CONNECTIONS", "99")
    monkeypatch.setenv("STREAMSERVE_VIEWER_TOKENS", "v1, v2")
    cfg = config(["--max-input", "1280x720", "--max-connections", "50", "--viewer-token", "v0",
                  "--max-body-bytes", "65536"])
    limits = cfg.limits
    assert (limits.max_input_width, limits.max_input_height, limits.max_input_pixels) == (1280, 720, 921_600)
    assert limits.header_timeout_s == 2.5 and limits.max_connections == 50  # the flag wins over the env
    assert limits.max_body_bytes == 65536 and cfg.viewer_tokens == ("v0", "v1", "v2")


@pytest.mark.parametrize(("argv", "message"), [
    (["--max-input", "big"], "--max-input must be WIDTHxHEIGHT, got 'big'"),
    (["--header-timeout-s", "0"], "header_timeout_s must be in [0.1, 3600], got 0.0"),
    (["--max-connections", "many"], "max_connections must be an int, got 'many'"),
])
def test_bad_limits_are_refused_naming_the_value(argv: list[str], message: str) -> None:
    with pytest.raises(SystemExit, match=message.replace("[", r"\[").replace("]", r"\]").replace(".", r"\.")):
        config(argv)


def test_serve_help_lists_the_security_flags(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--help"])
    text = capsys.readouterr().out
    for flag in ("--token", "--viewer-token", "--max-body-bytes", "--max-patch-bytes", "--max-json-depth",
                 "--header-timeout-s", "--keep-alive-s", "--max-connections", "--max-input",
                 "--max-compression-ratio", "--decode-pixels-per-s", "STREAMSERVE_"):
        assert flag in text, flag
