"""The Nix files (flake.nix, nix/*.nix) with Debian's nix-bin, which has no nixpkgs: each parses
(`nix-instantiate --parse`, store and state under a temporary folder), Nix's own TOML reader takes
pyproject.toml the way nix/package.nix does, every module option is documented, and the pins
agree with pyproject.toml, the compose file and the README. What needs nixpkgs (building the
package, evaluating the module's types) is not checked here: README, "Run it as a service"."""

from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NIX_FILES = sorted([ROOT / "flake.nix", *(ROOT / "nix").glob("*.nix")])


@pytest.fixture(scope="module")
def nix_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    home = tmp_path_factory.mktemp("nix")
    (home / "nix.conf").write_text("build-users-group =\n")
    return {
        "PATH": "/usr/bin:/bin",
        "HOME": str(home),
        "NIX_STATE_DIR": str(home / "state"),
        "NIX_STORE_DIR": str(home / "store"),
        "NIX_LOG_DIR": str(home / "log"),
        "NIX_CONF_DIR": str(home),
    }


def nix(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["nix-instantiate", *args], env=env, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("path", NIX_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_nix_file_parses(nix_env: dict[str, str], path: Path) -> None:
    done = nix(nix_env, "--parse", str(path))
    assert done.returncode == 0, done.stderr


def test_a_syntax_error_is_reported_with_its_file_and_line(nix_env: dict[str, str], tmp_path: Path) -> None:
    broken = tmp_path / "module.nix"
    text = (ROOT / "nix" / "module.nix").read_text()
    broken.write_text(
        text.replace("cfg = config.services.win-automation;", "cfg = config.services.win-automation", 1)
    )
    done = nix(nix_env, "--parse", str(broken))
    assert done.returncode != 0
    assert re.search(rf"{re.escape(str(broken))}:\d+:\d+", done.stderr), done.stderr


def test_nix_reads_pyproject_as_package_nix_does(nix_env: dict[str, str]) -> None:
    read = f"builtins.fromTOML (builtins.readFile {ROOT}/pyproject.toml)"
    expr = f'let p = ({read}).project; in "${{p.name}} ${{p.version}}"'
    done = nix(nix_env, "--eval", "--expr", expr)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f'"{project["name"]} {project["version"]}"'


def _options(text: str) -> list[tuple[str, str]]:
    """(name, body) of each `name = mkOption { ... };` (bodies by brace matching)."""
    found = []
    for match in re.finditer(r"([\w-]+) = mkOption \{", text):
        depth, pos = 1, match.end()
        while depth:
            depth += {"{": 1, "}": -1}.get(text[pos], 0)
            pos += 1
        found.append((match.group(1), text[match.end() : pos]))
    return found


def test_every_module_option_is_documented() -> None:
    options = [
        opt
        for name in ("module", "vm", "hatchet")
        for opt in _options((ROOT / "nix" / f"{name}.nix").read_text())
    ]
    assert len(options) > 30
    undocumented = [name for name, body in options if not re.search(r"\n\s*description = ", body)]
    untyped = [name for name, body in options if not re.search(r"\btype = ", body)]
    assert undocumented == [] and untyped == []


def test_pins_agree_with_pyproject_the_compose_file_and_the_readme() -> None:
    package = (ROOT / "nix" / "package.nix").read_text()
    pyproject = (ROOT / "pyproject.toml").read_text()
    hatchet_sdk = re.search(r'pname = "hatchet-sdk";\s*version = "([\d.]+)"', package)
    qmp = re.search(r'pname = "qemu.qmp";\s*version = "([\d.]+)"', package)
    assert hatchet_sdk and qmp
    low, high = re.search(r'"hatchet-sdk>=([\d.]+),<([\d.]+)"', pyproject).groups()  # type: ignore[union-attr]
    assert (
        tuple(map(int, low.split(".")))
        <= tuple(map(int, hatchet_sdk.group(1).split(".")))
        < tuple(map(int, high.split(".")))
    )
    assert re.search(rf'"qemu\.qmp>={re.escape(qmp.group(1))}', pyproject)
    tag = re.search(r'default = "(v[\d.]+)";', (ROOT / "nix" / "hatchet.nix").read_text())
    compose = (ROOT / "deploy" / "hatchet-lite" / "docker-compose.yml").read_text()
    assert (
        tag
        and f"HATCHET_LITE_TAG:-{tag.group(1)}" in compose
        and f"`{tag.group(1)}`" in (ROOT / "README.md").read_text()
    )


def test_vm_forwards_are_bound_to_loopback_with_the_default_ports() -> None:
    vm = (ROOT / "nix" / "vm.nix").read_text()
    assert '"hostfwd=tcp:127.0.0.1:${toString f.host}-:${toString f.guest}"' in vm
    for host, guest in ((22555, 22), (7887, 7887), (7888, 7888), (9323, 9323)):
        assert f"forward {host} {guest};" in vm
    assert '"-qmp" "unix:${cfg.qmpSocket},server=on,wait=off"' in vm
