"""Command line: ``sipserver run | init | check-config | agents | models | reload | gen-secret |
hash-password``.

Run ``sipserver <command> --help`` for the options of each command.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence

from sipserver import __version__
from sipserver.config import (
    Config,
    ConfigError,
    CustomModel,
    config_dir,
    embedded_config_path,
    generate_secret,
    load_config,
    srtp_warnings,
)
from sipserver.data_dir import DataDirError
from sipserver.pipeline.knowledge import knowledge_base_warnings
from sipserver.pipeline.providers.base import ProviderError

__all__ = ["main"]

_CONFIG_HELP = (
    "YAML configuration file (default: the embedded demo config, which runs offline on "
    "loopback ports; also settable with SIPSERVER_CONFIG)"
)


def _config_path(path: str | None) -> str | None:
    return path or os.environ.get("SIPSERVER_CONFIG") or None


def _load(path: str | None) -> Config:
    return load_config(_config_path(path))


def _cmd_run(args: argparse.Namespace) -> int:
    from sipserver.connections import raise_open_file_limit
    from sipserver.observability import configure_logging, get_logger
    from sipserver.server import Server

    configure_logging(args.log_format, args.log_level)
    os.umask(0o077)  # state files (bindings, pid, sockets, SQLite's -wal/-shm) are private
    log = get_logger("sipserver.cli")
    # Connections are file descriptors: take the hard limit (distributions start at a soft
    # 1,024); the automatic connection caps are shares of it.
    soft_before, soft, hard = raise_open_file_limit()
    log.info("open_files_limit", soft=soft, hard=hard, soft_before=soft_before)
    try:
        config = _load(args.config)
    except ConfigError as exc:
        print(f"configuration error in {args.config or embedded_config_path()}:", file=sys.stderr)
        for line in exc.errors:
            print(f"  {line}", file=sys.stderr)
        return 2
    log.info("config_loaded", source=str(args.config or embedded_config_path()))
    try:
        server = Server(config, config_path=_config_path(args.config))
    except (ProviderError, OSError) as exc:  # OSError: a voice file that cannot be read
        print(f"cannot start: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(server.run())
    except DataDirError as exc:  # raised by start() before anything is bound; names the key
        print(f"cannot start: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        log.error("startup_failed", error=str(exc))
        return 1
    except KeyboardInterrupt:
        pass
    return 0


def _cmd_check_config(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.file)
    except ConfigError as exc:
        print(f"{args.file}: {len(exc.errors)} error(s)", file=sys.stderr)
        for line in exc.errors:
            print(f"  {line}", file=sys.stderr)
        return 1
    warnings = knowledge_base_warnings(config, config_dir(args.file)) + srtp_warnings(config)
    for line in warnings:
        print(f"  warning: {line}", file=sys.stderr)
    counted = f", {len(warnings)} warning(s)" if warnings else ""
    print(
        f"{args.file}: OK ({len(config.agents)} agent(s), {len(config.models)} model(s), "
        f"{len(config.users)} user(s){counted})"
    )
    return 0


def _cmd_agents(args: argparse.Namespace) -> int:
    try:
        config = _load(args.config)
    except ConfigError as exc:
        for line in exc.errors:
            print(line, file=sys.stderr)
        return 1
    public_url = config.server.public_url
    for agent in config.agents:
        print(f"{agent.slug}  ({agent.name})")
        if agent.sip.enabled:
            numbers = ", ".join(agent.sip.numbers) or "-"
            print(f"  sip numbers      {numbers}")
            print(f"  sip username     {agent.sip.username}")
            allowed = ", ".join(agent.sip.allowed_ips) or "any address"
            print(f"  sip allowed from {allowed}")
        else:
            print("  sip              disabled")
        urls = agent.urls(public_url)
        for key, label in (
            ("websocket", "websocket"),
            ("twilio_webhook", "twilio webhook"),
            ("listens", "listens webhook"),
        ):
            if key in urls:
                print(f"  {label:<16} {urls[key]}")
        if config.server.demo_page and "websocket" in urls:
            print(f"  {'browser demo':<16} {public_url.rstrip('/')}/demo/{agent.slug}")
        print()
    return 0


def _credential_status(config: Config, name: str | None, needs: Sequence[str]) -> str:
    """Whether credential ``name`` resolves and has the keys in ``needs`` (never its values)."""
    if name is None:
        return "none"
    entry = config.credentials.get(name)
    if entry is None:
        return f"{name} (missing)"
    absent = [key for key in needs if not entry.get(key)]
    return f"{name} (ok)" if not absent else f"{name} (no {', '.join(absent)})"


def _stage_line(config: Config, model: CustomModel, stage: str) -> str:
    spec = getattr(model, stage)
    options = spec.options
    details = [f"{key}={options[key]}" for key in ("model", "base_url", "voice") if key in options]
    own = options.get("credential")
    name = own if isinstance(own, str) else model.credential
    if spec.provider == "local":
        status = "not needed"
    elif spec.provider == "openai" and name is None:
        has_url = "base_url" in options
        status = "none (server without keys)" if has_url else "missing (openai needs an api_key)"
    else:
        status = _credential_status(config, name, ("api_key",))
    shown = " ".join([spec.provider, *details])
    return f"  {stage:<4} {shown}  [credential: {status}]"


def _cmd_models(args: argparse.Namespace) -> int:
    try:
        config = _load(args.config)
    except ConfigError as exc:
        for line in exc.errors:
            print(line, file=sys.stderr)
        return 1
    used: dict[str, list[str]] = {}
    for agent in config.agents:
        if agent.realtime.model is not None:
            used.setdefault(agent.realtime.model, []).append(agent.slug)
    if not config.models:
        print("no models configured")
    for name, model in config.models.items():
        agents = ", ".join(used.get(name, [])) or "no agent"
        print(f"{name}  (type {model.type}; used by {agents})")
        if isinstance(model, CustomModel):
            for stage in ("stt", "llm", "tts"):
                print(_stage_line(config, model, stage))
        else:
            status = _credential_status(config, model.credential, ("api_key", "api_secret"))
            print(f"  stt  {model.stt}")
            print(f"  llm  {model.llm}")
            print(f"  tts  {model.tts}")
            print(f"  credential {status}")
            if not _livekit_installed():
                print("  client     not installed: pip install 'sipserver[livekit]'")
        print()
    return 0


def _livekit_installed() -> bool:
    from sipserver.pipeline.providers.inference import livekit_available

    return livekit_available()


def _cmd_reload(args: argparse.Namespace) -> int:
    import signal
    import time

    from sipserver.reload import read_result, result_path
    from sipserver.server import pid_file_path

    source = _config_path(args.config) or str(embedded_config_path())
    try:
        config = _load(args.config)
    except ConfigError as exc:
        # Refuse before signalling: the running server would keep its config anyway, but the
        # operator should see why here rather than in its log.
        print(f"{source}: {len(exc.errors)} error(s); nothing reloaded", file=sys.stderr)
        for line in exc.errors:
            print(f"  {line}", file=sys.stderr)
        return 1
    base = config_dir(_config_path(args.config))
    for line in knowledge_base_warnings(config, base) + srtp_warnings(config):
        print(f"warning: {line}", file=sys.stderr)
    pid_file = pid_file_path(config)
    results = result_path(config)
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError) as exc:
        print(f"no running sipserver found through {pid_file}: {exc}", file=sys.stderr)
        return 1
    previous = read_result(results)
    last = previous[1] if previous is not None and previous[0] == pid else 0
    try:
        os.kill(pid, signal.SIGHUP)
    except OSError as exc:
        print(
            f"cannot signal sipserver (pid {pid}) found through {pid_file}: {exc}", file=sys.stderr
        )
        return 1
    print(f"sent SIGHUP to sipserver (pid {pid}); it re-reads {source}")
    deadline = time.monotonic() + args.timeout
    while (found := read_result(results)) is None or found[0] != pid or found[1] <= last:
        if time.monotonic() > deadline:
            print(
                f"sipserver (pid {pid}) reported no reload result in {results} within "
                f"{args.timeout:g} s; see its log (config_reloaded / config_reload_failed)",
                file=sys.stderr,
            )
            return 1
        time.sleep(0.1)
    result = found[2]
    if not result.applied:
        print("nothing reloaded; the server keeps its configuration:", file=sys.stderr)
        for line in result.errors:
            print(f"  {line}", file=sys.stderr)
        return 1
    print(f"applied: {', '.join(result.changed) or 'no changes'}")
    for note in result.notes:
        print(f"  {note}")
    if result.restart_needed:
        print(
            "NOT applied, needs a restart (the server keeps the old values): "
            + ", ".join(result.restart_needed)
        )
        return 3
    return 0


def _cmd_init(args: argparse.Namespace) -> int:
    from pathlib import Path

    from sipserver.console.starter import CONFIG_NAME, StarterExists, write_starter

    directory = Path(args.dir)
    try:
        written = write_starter(directory, force=args.force)
    except StarterExists as exc:
        print(f"sipserver init: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"sipserver init: cannot write to {directory}: {exc}", file=sys.stderr)
        return 1
    for path in written:
        print(f"wrote {path}")
    config = directory / CONFIG_NAME
    print(
        f"\nNext: edit {config} (replace the demo passwords and users), check it with "
        f"`sipserver check-config {config}`, then start `sipserver run -c {config}`: "
        "the console at /dashboard can then save changes to it."
    )
    return 0


def _cmd_gen_secret(args: argparse.Namespace) -> int:
    print(generate_secret(args.length))
    return 0


def _cmd_hash_password(args: argparse.Namespace) -> int:
    import getpass

    from sipserver.listens.passwords import hash_password

    if sys.stdin.isatty():
        password = getpass.getpass("password: ")
        if getpass.getpass("again: ") != password:
            print("the passwords differ", file=sys.stderr)
            return 1
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if len(password) < args.min_length:
        print(f"the password must have at least {args.min_length} characters", file=sys.stderr)
        return 1
    print(hash_password(password))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``sipserver`` command."""
    parser = argparse.ArgumentParser(
        prog="sipserver",
        description="SIP server that puts realtime AI voice agents on phone lines.",
    )
    parser.add_argument("--version", action="version", version=f"sipserver {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser(
        "run",
        help="start the server",
        description=(
            "Start the SIP edge (registrar), HTTP (server.http) and the media workers; "
            "/metrics and /status are on the admin listener (server.admin_http, "
            "127.0.0.1:8081 by default). The open-file soft limit is raised to the hard limit "
            "first (connections are files; the automatic connection caps are shares of it)."
        ),
    )
    run.add_argument("-c", "--config", help=_CONFIG_HELP)
    run.add_argument(
        "--log-format",
        choices=("auto", "console", "json"),
        default="auto",
        help="log rendering: console on a TTY and JSON otherwise by default",
    )
    run.add_argument(
        "--log-level",
        choices=("debug", "info", "warning", "error"),
        default="info",
        help="minimum log level (default: info)",
    )
    run.set_defaults(func=_cmd_run)

    init = sub.add_parser(
        "init",
        help="write the embedded default config (and its knowledge base) to DIR to start from",
        description=(
            "Write the embedded default configuration to DIR/sipserver.yaml (mode 0600, it "
            "holds the demo passwords), with the files it refers to (the demo agent's "
            "knowledge base under DIR/kb/demo/). Nothing is overwritten unless --force: when a "
            "file exists, nothing is written. Then run `sipserver run -c DIR/sipserver.yaml`; "
            "a server started without -c runs on the embedded default, whose console is "
            "read-only."
        ),
    )
    init.add_argument(
        "dir", metavar="DIR", nargs="?", default=".", help="target directory (default: .)"
    )
    init.add_argument("--force", action="store_true", help="overwrite files that exist")
    init.set_defaults(func=_cmd_init)

    check = sub.add_parser(
        "check-config",
        help="validate a configuration file",
        description=(
            "Validate FILE and print every error with its key path; exit 1 on errors. Warnings "
            "(knowledge base patterns that match no file, relative paths being taken from "
            "FILE's directory) are printed too and do not fail the check."
        ),
    )
    check.add_argument("file", metavar="FILE", help="YAML configuration file")
    check.set_defaults(func=_cmd_check_config)

    agents = sub.add_parser(
        "agents",
        help="list agents with their SIP numbers and URLs",
        description=(
            "Print each agent's SIP numbers and credentials user, and its websocket, Twilio "
            "webhook and AI Listens URLs built from server.public_url."
        ),
    )
    agents.add_argument("-c", "--config", help=_CONFIG_HELP)
    agents.set_defaults(func=_cmd_agents)

    models = sub.add_parser(
        "models",
        help="list the realtime voice models with their providers and credentials",
        description=(
            "Print each configured model: its type, the agents using it, the provider and "
            "model of each stage (model-ID strings for livekit_inference) and whether the "
            "credential it names resolves and has the keys it needs. Secrets are never printed."
        ),
    )
    models.add_argument("-c", "--config", help=_CONFIG_HELP)
    models.set_defaults(func=_cmd_models)

    reload = sub.add_parser(
        "reload",
        help="validate the config, make the running server re-read it, print what it applied",
        description=(
            "Validate the configuration, send SIGHUP to the server running it (found through "
            "<data_dir>/sipserver.pid) and print its result (from <data_dir>/"
            "reload-result.json): what was applied and which server keys need a restart. "
            "Agents, credentials, models, users, public_host, domains, realm, digest and "
            "registrar settings change at once; listen addresses, HTTP, store, data_dir, "
            "nonce_ttl, the ban policy and (once workers run) server.workers and server.media "
            "need a restart. An invalid file changes nothing. Exit status: 0 applied, 3 applied "
            "except the keys that need a restart, 1 nothing applied (invalid file, no server, "
            "no answer)."
        ),
    )
    reload.add_argument("-c", "--config", help=_CONFIG_HELP)
    reload.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        help="seconds to wait for the server's result (default 30)",
    )
    reload.set_defaults(func=_cmd_reload)

    gen = sub.add_parser(
        "gen-secret",
        help="print a new random URL-safe secret",
        description="Print a new URL-safe random secret for websocket.secret or passwords.",
    )
    gen.add_argument(
        "--length", type=int, default=43, help="characters (>= 32, default 43 = 256 bits)"
    )
    gen.set_defaults(func=_cmd_gen_secret)

    hashing = sub.add_parser(
        "hash-password",
        help="print the scrypt hash of a dashboard password (for users[].password_hash)",
        description=(
            "Read a password (prompted twice on a terminal, else the first line of stdin) and "
            "print its scrypt hash for users[].password_hash."
        ),
    )
    hashing.add_argument(
        "--min-length",
        type=int,
        default=8,
        help="shortest password accepted (default 8; logins are scrypt-hashed and throttled)",
    )
    hashing.set_defaults(func=_cmd_hash_password)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``sipserver`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "gen-secret" and args.length < 32:
        parser.error("--length must be at least 32")
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
