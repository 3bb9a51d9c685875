"""Every example under deploy/ is checked as far as this machine can: files parse, every
``p2pdist ...`` command line in them uses subcommands and flags that exist (parsed by the
CLI's own click objects), nginx accepts the proxy config (``nginx -t``), systemd accepts the
units (``systemd-analyze verify``), and the container image builds where podman (or a docker
daemon) works here. What cannot be checked here skips with the reason."""

from __future__ import annotations

import configparser
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import click
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from p2pdist.cli.app import cli

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
UNITS = sorted((DEPLOY / "systemd").glob("*.service")) + sorted(
    (DEPLOY / "systemd").glob("*.timer")
)
K8S = sorted((DEPLOY / "k8s").glob("*.yaml"))
NGINX = DEPLOY / "nginx" / "p2pdist-tracker.conf"
CONTAINERFILE = DEPLOY / "Containerfile"
DEPLOY_DOC = ROOT / "docs" / "DEPLOY.md"


def check_command(argv: list[str]) -> None:
    """Parse ``p2pdist ARGS`` with the real CLI. Raises click's UsageError for an unknown
    command, option or bad value."""
    assert Path(argv[0]).name == "p2pdist", argv
    args = list(argv[1:])
    command: click.Command = cli
    ctx = click.Context(cli, info_name="p2pdist")
    while isinstance(command, click.Group):  # the groups take no options of their own here
        assert args, f"p2pdist {argv[1:]}: a group without a command"
        name, args = args[0], args[1:]
        sub = command.get_command(ctx, name)
        assert sub is not None, f"p2pdist has no command {name!r} ({argv})"
        command = sub
        ctx = click.Context(command, info_name=name, parent=ctx)
    command.make_context(ctx.info_name, list(args), parent=ctx.parent)


def unit_commands(path: Path) -> list[list[str]]:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(path)
    out = []
    for section in parser.sections():
        for key in ("ExecStart", "ExecStartPre", "ExecStartPost"):
            line = parser[section].get(key)
            if line and "p2pdist" in Path(shlex.split(line)[0]).name:
                out.append(shlex.split(line.replace("%I", "org/gpt").replace("%i", "org-gpt")))
    return out


def k8s_commands(docs: list[dict]) -> list[list[str]]:
    out = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if "containers" in node:
                out.extend(c["command"] for c in node["containers"] if "command" in c)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(docs)
    return out


def guide_commands() -> list[list[str]]:
    """The ``p2pdist ...`` lines of docs/DEPLOY.md's code blocks (continuations joined)."""
    out = []
    for block in re.findall(r"```(?:bash|sh|console)?\n(.*?)```", DEPLOY_DOC.read_text(), re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #", 1)[0].strip()  # indented blocks in lists too
            if line.startswith("p2pdist "):
                out.append(shlex.split(line))
    return out


def containerfile_command() -> list[str]:
    text = CONTAINERFILE.read_text()
    (cmd,) = re.findall(r"^CMD (\[.*\])$", text, re.M)
    import json

    return json.loads(cmd)


# ------------------------------------------------------------------------------------------


def test_the_command_checker_catches_mistakes() -> None:
    check_command(["p2pdist", "seed", "--metrics-port", "9101"])
    for bad in (["p2pdist", "seeed"], ["p2pdist", "seed", "--metric-port", "1"],
                ["p2pdist", "tracker", "serve", "--port", "seventy"]):  # fmt: skip
        with pytest.raises((click.UsageError, AssertionError)):
            check_command(bad)


@pytest.mark.parametrize("path", UNITS, ids=lambda p: p.name)
def test_systemd_units_parse_and_their_commands_exist(path: Path) -> None:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(path)
    assert "Unit" in parser and "Description" in parser["Unit"]
    main = "Service" if path.suffix == ".service" else "Timer"
    assert main in parser, f"{path.name}: no [{main}] section"
    if path.suffix == ".service":
        commands = unit_commands(path)
        assert commands, f"{path.name}: no p2pdist command"
        for argv in commands:
            check_command(argv)
    if "Install" in parser:
        assert parser["Install"].get("WantedBy")


def test_systemd_analyze_accepts_the_units(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed here")
    binary = Path(sys.executable).with_name("p2pdist")
    for unit in UNITS:
        text = unit.read_text().replace("/opt/p2pdist/bin/p2pdist", str(binary))
        (tmp_path / unit.name).write_text(text)
    instance = tmp_path / "p2pdist-follow@org-gpt.service"
    instance.write_text((tmp_path / "p2pdist-follow@.service").read_text())
    names = [p for p in sorted(tmp_path.iterdir()) if p.name != "p2pdist-follow@.service"]
    out = subprocess.run(
        [analyze, "verify", "--man=no", *map(str, names)],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    if out.returncode != 0 and "Failed to " in out.stderr and "bus" in out.stderr.lower():
        pytest.skip(f"systemd-analyze cannot run here: {out.stderr.strip().splitlines()[0]}")
    # A missing user p2pdist is this host's business, not the files'; anything else said
    # about a unit is a problem (systemd-analyze exits 0 on unknown keys, so read its words).
    problems = [
        line
        for line in out.stderr.splitlines()
        if re.search(r"p2pdist[-\w@]*\.(service|timer)", line)
        and not re.search(r"\b(user|group)\b", line, re.I)
    ]
    assert not problems, out.stderr


@pytest.mark.parametrize("path", K8S, ids=lambda p: p.name)
def test_kubernetes_manifests_parse_and_their_commands_exist(path: Path) -> None:
    yaml = pytest.importorskip("yaml", reason="PyYAML (the test extra) is not installed")
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert docs
    for doc in docs:
        assert {"apiVersion", "kind", "metadata"} <= set(doc), doc
        assert doc["metadata"]["name"]
    commands = k8s_commands(docs)
    assert commands
    for argv in commands:
        check_command(argv)
    for doc in docs:
        if doc["kind"] in ("Deployment", "DaemonSet"):
            spec = doc["spec"]
            assert spec["selector"]["matchLabels"].items() <= (
                spec["template"]["metadata"]["labels"].items()
            )


def test_the_tracker_service_reaches_the_port_the_tracker_listens_on() -> None:
    yaml = pytest.importorskip("yaml", reason="PyYAML (the test extra) is not installed")
    docs = list(yaml.safe_load_all((DEPLOY / "k8s" / "tracker.yaml").read_text()))
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    service = next(d for d in docs if d["kind"] == "Service")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    argv = container["command"]
    port = int(argv[argv.index("--port") + 1])
    assert port == container["ports"][0]["containerPort"]
    assert service["spec"]["ports"][0]["targetPort"] == container["ports"][0]["name"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]


def _certificate(tmp_path: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tracker.example")])
    now = __import__("datetime").datetime.now(__import__("datetime").timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now).not_valid_after(now + __import__("datetime").timedelta(days=1))
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    crt, pem = tmp_path / "tracker.crt", tmp_path / "tracker.key"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return crt, pem


def test_nginx_accepts_the_proxy_config(tmp_path: Path) -> None:
    nginx = shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )
    if nginx is None:
        pytest.skip("nginx is not installed here (Debian: nginx-light)")
    crt, key = _certificate(tmp_path)
    site = NGINX.read_text()
    assert "/etc/ssl/p2pdist/tracker.crt" in site and "/etc/ssl/p2pdist/tracker.key" in site
    site = site.replace("/etc/ssl/p2pdist/tracker.crt", str(crt))
    site = site.replace("/etc/ssl/p2pdist/tracker.key", str(key))
    (tmp_path / "site.conf").write_text(site)
    (tmp_path / "nginx.conf").write_text(
        f"pid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log;\nevents {{}}\n"
        f"http {{\n  access_log off;\n  client_body_temp_path {tmp_path}/body;\n"
        f"  proxy_temp_path {tmp_path}/proxy;\n  include {tmp_path}/site.conf;\n}}\n"
    )
    out = subprocess.run(
        [nginx, "-t", "-q", "-c", str(tmp_path / "nginx.conf"), "-p", str(tmp_path),
         "-e", str(tmp_path / "error.log")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "proxy_pass http://p2pdist_tracker" in site and "server 127.0.0.1:6969" in site


def test_the_nginx_upstream_is_the_trackers_address() -> None:
    """nginx proxies to the address the systemd unit makes the tracker listen on, and the
    tracker trusts forwarded headers from exactly there."""
    (argv,) = unit_commands(DEPLOY / "systemd" / "p2pdist-tracker.service")
    host, port = argv[argv.index("--host") + 1], argv[argv.index("--port") + 1]
    assert f"server {host}:{port};" in NGINX.read_text()
    assert argv[argv.index("--trusted-proxy") + 1] == f"{host}/32"


def test_containerfile_copies_what_exists_and_runs_a_real_command() -> None:
    text = CONTAINERFILE.read_text()
    for line in re.findall(r"^COPY (?!--from)(.+)$", text, re.M):
        *sources, _ = line.split()
        for source in sources:
            assert (ROOT / source).exists(), source
    check_command(containerfile_command())
    ignore = (ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignore  # else the build context is gigabytes


def _container_engine() -> tuple[str | None, str]:
    podman = shutil.which("podman")
    if podman:
        out = subprocess.run([podman, "info"], capture_output=True, text=True, timeout=60)
        if out.returncode == 0:
            return podman, ""
        reason = f"podman does not work here: {(out.stderr.strip() or 'podman info failed').splitlines()[-1]}"
    else:
        reason = "podman is not installed here"
    docker = shutil.which("docker")
    if docker:
        out = subprocess.run([docker, "info"], capture_output=True, text=True, timeout=60)
        if out.returncode == 0:
            return docker, ""
        reason += "; docker has no daemon to talk to"
    return None, reason


@pytest.mark.slow
def test_container_image_builds(tmp_path: Path) -> None:
    engine, reason = _container_engine()
    if engine is None:
        pytest.skip(f"image not built: {reason}")
    tag = "localhost/p2pdist-deploy-test:latest"
    try:
        build = subprocess.run(
            [engine, "build", "-f", str(CONTAINERFILE), "-t", tag, str(ROOT)],
            capture_output=True, text=True, timeout=1800,
        )  # fmt: skip
        if build.returncode != 0 and re.search(r"(?i)network|resolve|pull|registry", build.stderr):
            pytest.skip(f"image not built: base image unreachable ({build.stderr.strip()[-200:]})")
        assert build.returncode == 0, build.stderr[-2000:]
        run = subprocess.run(
            [engine, "run", "--rm", "--network=none", tag, "p2pdist", "tracker", "serve", "--help"],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert run.returncode == 0 and "--data" in run.stdout, run.stderr
        torch = subprocess.run(
            [engine, "run", "--rm", "--network=none", tag, "python", "-c", "import torch"],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert torch.returncode != 0  # the image is the torch-free install
    finally:
        subprocess.run([engine, "rmi", "-f", tag], capture_output=True, timeout=300)


def test_every_command_line_in_the_examples_parses() -> None:
    """Units, manifests and the guide: every ``p2pdist`` line is one the real CLI takes."""
    commands = [c for u in UNITS if u.suffix == ".service" for c in unit_commands(u)]
    yaml = pytest.importorskip("yaml", reason="PyYAML (the test extra) is not installed")
    for path in K8S:
        commands += k8s_commands(list(yaml.safe_load_all(path.read_text())))
    commands += guide_commands()
    assert any("--trusted-proxy" in c for c in commands)  # the nginx set-up is among them
    for argv in commands:
        check_command(argv)


def test_the_deploy_guides_commands_exist() -> None:
    commands = guide_commands()
    assert len(commands) >= 5
    for argv in commands:
        check_command(argv)


def test_every_example_is_named_in_the_deploy_guide() -> None:
    guide = DEPLOY_DOC.read_text()
    for path in [*UNITS, *K8S, NGINX, CONTAINERFILE]:
        assert str(path.relative_to(ROOT)) in guide, path
