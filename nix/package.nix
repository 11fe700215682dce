# The win-automation package, built from pyproject.toml with nixpkgs' Python tooling.
# `nix build .#win-automation` (flake.nix) or `pkgs.callPackage ./nix/package.nix { }`.
#
# Two dependencies nixpkgs may not carry (or not at the pinned version) are built from their PyPI
# sdists here: hatchet-sdk (pinned to the minor pyproject.toml allows) and qemu.qmp. Version bounds
# of the others are relaxed to what the nixpkgs revision has (pythonRelaxDeps); the test suite needs
# sshd, QEMU and Chromium and is run by scripts/test.sh, not by this build.
{
  lib,
  python3Packages,
  fetchPypi,
}:
let
  py = python3Packages;
  project = (lib.importTOML ../pyproject.toml).project;

  hatchet-sdk = py.buildPythonPackage rec {
    pname = "hatchet-sdk";
    version = "1.43.1";
    pyproject = true;
    src = fetchPypi {
      pname = "hatchet_sdk";
      inherit version;
      hash = "sha256-XJmHrHZnHtudivf+mstaIizdzOfSGW95/tudzGEheoQ=";
    };
    build-system = [ py.hatchling ];
    dependencies = with py; [
      aiohttp
      grpcio
      grpcio-status
      grpcio-tools
      prometheus-client
      protobuf
      pydantic
      pydantic-settings
      python-dateutil
      tenacity
      typing-inspection
      urllib3
    ];
    pythonRelaxDeps = true;
    doCheck = false;
    pythonImportsCheck = [ "hatchet_sdk" ];
  };

  qemu-qmp = py.buildPythonPackage rec {
    pname = "qemu.qmp";
    version = "0.0.6";
    pyproject = true;
    src = fetchPypi {
      pname = "qemu_qmp";
      inherit version;
      hash = "sha256-o8Jdhx+rVJEisjQIEN4fmUgQAslCohMkdrBiqs2/bpI=";
    };
    build-system = with py; [
      setuptools
      setuptools-scm
      wheel
    ];
    doCheck = false;
    pythonImportsCheck = [ "qemu.qmp" ];
  };
in
py.buildPythonApplication {
  pname = project.name;
  inherit (project) version;
  pyproject = true;
  # The whole tree: win_automation/windows links to scripts/windows, which the wheel then carries.
  src = lib.cleanSource ../.;
  build-system = [ py.setuptools ];
  dependencies = with py; [
    hatchet-sdk
    paramiko
    httpx
    playwright
    pydantic
    tenacity
    typer
    rich
    qemu-qmp
  ];
  pythonRelaxDeps = true;
  doCheck = false;
  pythonImportsCheck = [
    "win_automation"
    "workflows"
  ];
  meta = {
    inherit (project) description;
    license = lib.licenses.mit;
    mainProgram = "win-automation";
    platforms = lib.platforms.linux;
  };
}
