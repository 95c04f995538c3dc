"""packaging/latentbridge.service stays runnable: its command line and environment are ones
`latentbridge serve` accepts, and it binds to loopback (no token needed)."""

import configparser
import shlex
from pathlib import Path

from latentbridge.cli import build_parser
from latentbridge.settings import Settings, load_settings

UNIT = Path(__file__).resolve().parents[2] / "packaging" / "latentbridge.service"


def _unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # systemd keys are case-sensitive
    parser.read_string(UNIT.read_text())
    return parser


def test_exec_start_is_a_valid_serve_command_on_loopback():
    unit = _unit()
    argv = shlex.split(unit["Service"]["ExecStart"].replace("%h", "/home/artist"))
    assert Path(argv[0]).name == "latentbridge" and argv[1] == "serve"
    args = build_parser().parse_args(argv[1:])  # exits (fails the test) on an unknown flag
    settings = load_settings(args, environ={})
    assert settings.host == "127.0.0.1" and settings.port == 7423
    assert settings.data_dir == Path("/home/artist/.local/share/latentbridge")


def test_environment_names_real_settings():
    environment = _unit()["Service"]["Environment"]  # the last one; all are checked below
    assert environment
    for line in UNIT.read_text().splitlines():
        if line.startswith("Environment=LATENTBRIDGE_"):
            name, value = line.removeprefix("Environment=LATENTBRIDGE_").split("=", 1)
            assert name.lower() in Settings.model_fields, name
            assert load_settings(environ={f"LATENTBRIDGE_{name}": value}).model_dump()[name.lower()] is not None
