"""Static checks of docker-compose.yml and the Dockerfile.

No Docker engine is needed: the files themselves are read and checked against the outside
contract (environment variables, ports, CLI verbs), and each container command is parsed by the
project's own click CLI to prove it is a real verb.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import click
import pytest
import yaml
from click.testing import CliRunner

from channels.registry import channel_names

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"

# The environment table of the outside contract (CONTRACT.md, "Environment"), copied here
# because the handbook is not at a fixed path in CI. Variable -> documented default.
CONTRACT_ENV: dict[str, str] = {
    "OMNIPUSH_DATABASE_URL": "sqlite:///var/omnipush.db",
    "OMNIPUSH_AMQP_URL": "amqp://guest:guest@127.0.0.1:5672/%2F",
    "OMNIPUSH_REDIS_URL": "redis://127.0.0.1:6379/0",
    "OMNIPUSH_SECRET_KEY": "",
    "OMNIPUSH_API_BIND": "127.0.0.1:8080",
    "OMNIPUSH_GATEWAY_BIND": "127.0.0.1:8081",
    "OMNIPUSH_CONFIG": "omnipush.toml",
    "OMNIPUSH_SMTP_URL": "",
    "OMNIPUSH_SMTP_FROM": "omnipush@localhost",
    "OMNIPUSH_QUEUE_PREFIX": "omnipush",
    "OMNIPUSH_LOG_FORMAT": "",
}
# Variables omnipush reads beyond that table (README, "Configuration"), used in the compose file.
PROJECT_ENV: dict[str, str] = {
    # A relay, dispatcher, worker or callbacks process's GET /metrics (README, "Operations").
    "OMNIPUSH_METRICS_BIND": "per service, 127.0.0.1:9101 and up",
}

# Every verb a container may run (CONTRACT.md, "CLI"), as argv without the program name.
REAL_VERBS: frozenset[tuple[str, ...]] = frozenset(
    {
        ("db", "upgrade"),
        ("serve", "api"),
        ("serve", "relay"),
        ("serve", "dispatcher"),
        ("serve", "gateway"),
        ("serve", "callbacks"),
        *(("serve", "worker", "--channel", name) for name in channel_names()),
    }
)

# Services that must be there, with the command each runs.
EXPECTED_COMMANDS: dict[str, tuple[str, ...]] = {
    "migrate": ("omnipush", "db", "upgrade"),
    "api": ("omnipush", "serve", "api"),
    "relay": ("omnipush", "serve", "relay"),
    "dispatcher": ("omnipush", "serve", "dispatcher"),
    "worker-web": ("omnipush", "serve", "worker", "--channel", "web"),
    "callbacks": ("omnipush", "serve", "callbacks"),
    "gateway": ("omnipush", "serve", "gateway"),
}

# Infrastructure service -> (image prefix, a word its healthcheck must run).
INFRA: dict[str, tuple[str, str]] = {
    "rabbitmq": ("rabbitmq:3", "rabbitmq-diagnostics"),
    "redis": ("redis:7", "redis-cli"),
    "postgres": ("postgres:16", "pg_isready"),
}

# HTTP service -> the contract variable that names its bind address.
HTTP_SERVICES: dict[str, str] = {
    "api": "OMNIPUSH_API_BIND",
    "gateway": "OMNIPUSH_GATEWAY_BIND",
}

REQUIRED_ENV: tuple[str, ...] = (
    "OMNIPUSH_DATABASE_URL",
    "OMNIPUSH_AMQP_URL",
    "OMNIPUSH_REDIS_URL",
    "OMNIPUSH_SECRET_KEY",
)

TOP_LEVEL_PACKAGES: tuple[str, ...] = (
    "omnipush",
    "shared",
    "producer_api",
    "dispatcher",
    "channels",
    "ws_gateway",
)


# --- helpers ---------------------------------------------------------------------------------


def _compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert isinstance(data, dict), "docker-compose.yml must be a mapping"
    return data


def _services() -> dict[str, dict[str, Any]]:
    services = _compose().get("services")
    assert isinstance(services, dict), "docker-compose.yml has no services mapping"
    assert services, "docker-compose.yml has no services"
    return services


def _project_services() -> dict[str, dict[str, Any]]:
    """The services built from this repository (the ones that run omnipush)."""
    return {name: svc for name, svc in _services().items() if "build" in svc}


def _long_running_services() -> dict[str, dict[str, Any]]:
    return {name: svc for name, svc in _project_services().items() if name != "migrate"}


def _argv(command: str | list[str]) -> tuple[str, ...]:
    return tuple(command.split()) if isinstance(command, str) else tuple(command)


def _environment(service: Mapping[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        pairs = (item.split("=", 1) for item in env)
        return {pair[0]: (pair[1] if len(pair) > 1 else "") for pair in pairs}
    return {str(key): "" if value is None else str(value) for key, value in env.items()}


def _container_ports(service: Mapping[str, Any]) -> set[int]:
    ports: set[int] = set()
    for entry in service.get("ports") or []:
        if isinstance(entry, dict):
            ports.add(int(entry["target"]))
        else:
            ports.add(int(str(entry).split("/")[0].rsplit(":", 1)[-1]))
    return ports


def _port(bind: str) -> int:
    return int(bind.rsplit(":", 1)[1])


def _healthcheck_words(service: Mapping[str, Any]) -> str:
    test = (service.get("healthcheck") or {}).get("test")
    assert test, "no healthcheck test"
    return test if isinstance(test, str) else " ".join(str(part) for part in test)


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs with continuation lines joined and comments removed."""
    text = DOCKERFILE.read_text(encoding="utf-8")
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\s*\n", " ", "\n".join(lines))
    result = []
    for line in joined.splitlines():
        if line.strip():
            keyword, _, rest = line.strip().partition(" ")
            result.append((keyword.upper(), " ".join(rest.split())))
    return result


def _dockerfile_final_stage() -> list[tuple[str, str]]:
    instructions = _dockerfile_instructions()
    starts = [i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM"]
    assert starts, "the Dockerfile has no FROM"
    return instructions[starts[-1] :]


def _dockerfile_cmd() -> tuple[str, ...]:
    cmds = [args for keyword, args in _dockerfile_final_stage() if keyword == "CMD"]
    assert cmds, "the final stage has no CMD"
    return tuple(json.loads(cmds[-1]))


def _container_commands() -> Iterator[Any]:
    """Every command a container built from the project runs, as pytest params."""
    for name, service in sorted(_project_services().items()):
        label = f"compose:{name}"
        yield pytest.param(label, _argv(service.get("command") or []), id=label)
    yield pytest.param("Dockerfile:CMD", _dockerfile_cmd(), id="Dockerfile:CMD")


# --- the compose file ------------------------------------------------------------------------


def test_compose_file_parses_without_obsolete_version_key() -> None:
    data = _compose()
    assert "version" not in data, "the Compose spec has no `version:` key"
    assert _project_services(), "no service is built from the project"


@pytest.mark.parametrize(("name", "expected"), sorted(EXPECTED_COMMANDS.items()))
def test_expected_service_runs_expected_command(name: str, expected: tuple[str, ...]) -> None:
    services = _project_services()
    assert name in services, f"service {name!r} missing or not built from the project"
    assert _argv(services[name].get("command") or []) == expected


@pytest.mark.parametrize(("label", "argv"), list(_container_commands()))
def test_every_container_command_is_a_contract_verb(label: str, argv: tuple[str, ...]) -> None:
    assert argv[:1] == ("omnipush",), f"{label}: {argv} does not start with omnipush"
    assert argv[1:] in REAL_VERBS, f"{label}: {argv} is not one of {sorted(REAL_VERBS)}"


def test_there_is_a_worker_for_every_channel() -> None:
    workers = [
        _argv(svc["command"])
        for svc in _project_services().values()
        if _argv(svc.get("command") or [])[1:3] == ("serve", "worker")
    ]
    for name in channel_names():
        assert ("omnipush", "serve", "worker", "--channel", name) in workers


def test_provider_workers_read_the_mounted_configuration_file() -> None:
    services = _project_services()
    for name in ("worker-email", "worker-sms", "worker-push"):
        assert services[name]["profiles"] == ["providers"]
        assert services[name]["environment"]["OMNIPUSH_CONFIG"] == "/etc/omnipush/omnipush.toml"
        assert services[name]["environment"]["OMNIPUSH_SECRET_KEY"]


@pytest.mark.parametrize(("name", "bind_var"), sorted(HTTP_SERVICES.items()))
def test_http_service_publishes_contract_port_and_binds_all_interfaces(
    name: str, bind_var: str
) -> None:
    service = _services()[name]
    port = _port(CONTRACT_ENV[bind_var])
    assert port in _container_ports(service), f"{name} does not publish container port {port}"
    assert _environment(service).get(bind_var) == f"0.0.0.0:{port}"


@pytest.mark.parametrize(("name", "bind_var"), sorted(HTTP_SERVICES.items()))
def test_http_service_healthcheck_uses_python_on_healthz(name: str, bind_var: str) -> None:
    words = _healthcheck_words(_services()[name])
    port = _port(CONTRACT_ENV[bind_var])
    assert "python" in words, "the slim image has no curl or wget"
    assert f"127.0.0.1:{port}/healthz" in words


def test_every_project_service_gets_the_connection_settings() -> None:
    for name, service in _project_services().items():
        env = _environment(service)
        missing = [var for var in REQUIRED_ENV if not env.get(var)]
        assert not missing, f"{name} lacks {missing}"
        assert env["OMNIPUSH_DATABASE_URL"].startswith("postgresql+psycopg2://"), name
        assert "@postgres:5432/" in env["OMNIPUSH_DATABASE_URL"], name
        assert "@rabbitmq:5672/" in env["OMNIPUSH_AMQP_URL"], name
        assert env["OMNIPUSH_REDIS_URL"].startswith("redis://redis:6379/"), name


def _interpolate(value: str, host_env: Mapping[str, str]) -> str:
    """`value` as Compose reads it: `${VAR}`, `${VAR:-default}`, `${VAR:?error}` (which stops
    Compose with `error` when VAR is unset or empty) and `$$`."""

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, operator, argument = match.group("name"), match.group("op"), match.group("arg")
        found = host_env.get(name, "")
        if operator == ":?" and not found:
            raise ValueError(f"{name}: {argument}")
        if operator == ":-" and not found:
            return argument or ""
        return found

    return re.sub(r"\$\$|\$\{(?P<name>\w+)(?:(?P<op>:[-?])(?P<arg>[^}]*))?\}", substitute, value)


def test_compose_refuses_to_start_without_a_secret_key() -> None:
    for name, service in _project_services().items():
        value = _environment(service)["OMNIPUSH_SECRET_KEY"]
        with pytest.raises(ValueError, match="OMNIPUSH_SECRET_KEY") as refused:
            _interpolate(value, {})
        assert "32" in str(refused.value), f"{name}: the error does not say what a key needs"
        with pytest.raises(ValueError, match="OMNIPUSH_SECRET_KEY"):
            _interpolate(value, {"OMNIPUSH_SECRET_KEY": ""})


def test_the_secret_key_comes_from_the_host_with_no_default() -> None:
    key = secrets.token_urlsafe(48)
    for name, service in _project_services().items():
        value = _environment(service)["OMNIPUSH_SECRET_KEY"]
        assert _interpolate(value, {"OMNIPUSH_SECRET_KEY": key}) == key, name
    text = COMPOSE_FILE.read_text(encoding="utf-8")
    assert not re.search(r"OMNIPUSH_SECRET_KEY:?-", text), "the secret key has a default"
    assert "change-me" not in text


def test_only_contract_environment_variables_are_used() -> None:
    used = set(re.findall(r"\bOMNIPUSH_[A-Z0-9_]+\b", COMPOSE_FILE.read_text(encoding="utf-8")))
    assert used, "no OMNIPUSH_ variable in docker-compose.yml"
    known = CONTRACT_ENV.keys() | PROJECT_ENV.keys()
    assert used <= known, f"not in the contract: {sorted(used - known)}"


def test_the_services_without_http_serve_metrics_to_the_compose_network() -> None:
    for name, service in _long_running_services().items():
        if name not in HTTP_SERVICES:
            assert _environment(service).get("OMNIPUSH_METRICS_BIND") == "0.0.0.0:9100", name


@pytest.mark.parametrize(("name", "image_prefix", "probe"), [(k, *v) for k, v in INFRA.items()])
def test_infrastructure_service_has_image_and_healthcheck(
    name: str, image_prefix: str, probe: str
) -> None:
    service = _services()[name]
    assert str(service.get("image", "")).startswith(image_prefix)
    assert probe in _healthcheck_words(service)
    assert "build" not in service


def test_postgres_credentials_match_the_database_url() -> None:
    env = _environment(_services()["postgres"])
    assert (env["POSTGRES_USER"], env["POSTGRES_PASSWORD"], env["POSTGRES_DB"]) == (
        "omnipush",
        "omnipush",
        "omnipush",
    )


def test_project_services_wait_for_healthy_infrastructure_and_migrations() -> None:
    for name, service in _project_services().items():
        depends = service.get("depends_on") or {}
        assert isinstance(depends, dict), f"{name}: depends_on needs conditions"
        for infra in INFRA:
            condition = (depends.get(infra) or {}).get("condition")
            assert condition == "service_healthy", f"{name} -> {infra}: {condition}"
        if name != "migrate":
            condition = (depends.get("migrate") or {}).get("condition")
            assert condition == "service_completed_successfully", f"{name} -> migrate"


def test_migrate_is_one_shot_and_long_running_services_restart() -> None:
    services = _services()
    assert str(services["migrate"].get("restart", "no")) == "no"
    for name, service in _long_running_services().items():
        assert service.get("restart") in {"always", "unless-stopped", "on-failure"}, name


def test_all_project_services_share_one_build() -> None:
    builds = {json.dumps(svc["build"], sort_keys=True) for svc in _project_services().values()}
    assert len(builds) == 1, f"services are built differently: {builds}"
    build = _project_services()["api"]["build"]
    context = build if isinstance(build, str) else build.get("context", ".")
    dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
    assert (ROOT / context / dockerfile).resolve() == DOCKERFILE.resolve()


# --- the Dockerfile --------------------------------------------------------------------------


def test_dockerfile_final_stage_is_python_311_slim_and_installs_the_project() -> None:
    final = _dockerfile_final_stage()
    base = final[0][1].split()[0]
    assert re.fullmatch(r"python:3\.11[\w.-]*", base), base
    runs = " ".join(args for keyword, args in final if keyword == "RUN")
    assert re.search(r"pip install (--no-cache-dir )?-c constraints\.txt \.(\s|$)", runs), (
        "no `pip install -c constraints.txt .`: the image would not get the tested versions"
    )
    workdirs = [args for keyword, args in final if keyword == "WORKDIR"]
    assert workdirs, "the final stage has no WORKDIR"
    assert workdirs[-1] == "/app"


def test_dockerfile_runs_as_non_root_and_exposes_contract_ports() -> None:
    final = _dockerfile_final_stage()
    users = [args for keyword, args in final if keyword == "USER"]
    assert users, "the final stage runs as root"
    assert users[-1].split(":")[0] not in {"root", "0"}
    exposed = {int(p.split("/")[0]) for k, a in final if k == "EXPOSE" for p in a.split()}
    assert {_port(CONTRACT_ENV[var]) for var in HTTP_SERVICES.values()} <= exposed
    assert _dockerfile_cmd() == ("omnipush", "serve", "api")


def test_dockerfile_gets_the_browser_assets_with_the_sources_and_runs_no_npm() -> None:
    instructions = _dockerfile_instructions()
    assert not [args for keyword, args in instructions if keyword == "RUN" and "npm" in args]
    copied = {
        part.rstrip("/")
        for keyword, args in _dockerfile_final_stage()
        if keyword == "COPY"
        for part in args.split()[:-1]
    }
    assert "constraints.txt" in copied
    for asset in ("ws_gateway/static/socket.io.min.js", "producer_api/static/swagger-ui"):
        assert asset.split("/")[0] in copied, f"{asset} is not in the image's sources"
        assert (ROOT / asset).exists(), f"{asset} is missing from the repository"
    assert not (ROOT / ".dockerignore").exists() or "static" not in (
        ROOT / ".dockerignore"
    ).read_text(encoding="utf-8")


def test_dockerfile_copies_every_top_level_package() -> None:
    sources: set[str] = set()
    for keyword, args in _dockerfile_final_stage():
        if keyword == "COPY" and "--from=" not in args:
            parts = [p for p in args.split() if not p.startswith("--")]
            sources.update(p.rstrip("/") for p in parts[:-1])
    if "." in sources:
        return
    assert "pyproject.toml" in sources
    on_disk = {
        p.parent.name
        for p in ROOT.glob("*/__init__.py")
        if p.parent.name != "tests" and not p.parent.name.startswith(".")
    }
    missing = sorted((set(TOP_LEVEL_PACKAGES) | on_disk) - sources)
    assert not missing, f"the Dockerfile does not copy {missing}"


# --- the commands against the real CLI -------------------------------------------------------


@pytest.fixture(scope="module")
def cli() -> click.Command:
    try:
        from omnipush.cli import main
    except ImportError as exc:  # the verbs cannot be proved without the CLI
        pytest.fail(f"cannot import omnipush.cli.main to check the container commands: {exc}")
    assert isinstance(main, click.Command), "omnipush.cli.main is not a click command"
    return main


def _resolve(root: click.Command, args: list[str]) -> click.Context:
    """Resolve args down to the leaf command and parse its parameters, without invoking it."""
    command, name, parent = root, "omnipush", None
    while isinstance(command, click.Group):
        assert args, f"{name} needs a subcommand"
        ctx = click.Context(command, info_name=name, parent=parent)
        resolved, sub, args = command.resolve_command(ctx, args)
        assert resolved is not None
        assert sub is not None
        command, name, parent = sub, resolved, ctx
    return command.make_context(name, list(args), parent=parent)


@pytest.mark.parametrize(("label", "argv"), list(_container_commands()))
def test_container_command_is_accepted_by_the_cli(
    cli: click.Command, label: str, argv: tuple[str, ...]
) -> None:
    result = CliRunner().invoke(cli, [*argv[1:], "--help"])
    assert result.exit_code == 0, f"{label}: `{' '.join(argv)} --help` -> {result.output}"
    _resolve(cli, list(argv[1:]))  # raises click.UsageError on an unknown verb or option


@pytest.mark.parametrize(
    "bad_args",
    [["serve", "no-such-verb"], ["db", "no-such-verb"], ["no-such-verb"]],
)
def test_cli_check_rejects_unknown_verbs(cli: click.Command, bad_args: list[str]) -> None:
    with pytest.raises(click.UsageError):
        _resolve(cli, bad_args)
