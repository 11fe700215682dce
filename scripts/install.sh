#!/usr/bin/env bash
# Installs what win-automation and its tests need, idempotently, and fast when all is in place:
#   - Debian's openssh-server, chromium and fonts-liberation (the real sshd, and the browser the
#     tests' Playwright server drives, run by the playwright wheel's own Node and playwright-core);
#   - Debian's qemu-system-x86 and qemu-utils (a real QEMU for the QMP tests) and nix-bin
#     (`nix-instantiate --parse` checks every nix/*.nix file);
#   - a virtualenv in .venv with the package and its test and benchmark extras, every Python
#     package at its version in constraints.txt;
#   - npm's playwright-core of the minor before the wheel's, in .cache/playwright-core-previous/
#     (the tests' version-mismatch server; npm only downloads it, the wheel's Node runs it).
# Run as root on Debian (or with sudo available). `scripts/test.sh` calls it first.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf 'install: %s\n' "$*" >&2; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
command -v python3 >/dev/null 2>&1 || missing+=(python3)
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || missing+=(python3-venv)
[ -x /usr/sbin/sshd ] || missing+=(openssh-server)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
[ -d /usr/share/fonts/truetype/liberation ] || missing+=(fonts-liberation)
command -v npm >/dev/null 2>&1 || missing+=(npm)
command -v qemu-system-x86_64 >/dev/null 2>&1 || missing+=(qemu-system-x86)  # the QMP tests' real QEMU
command -v qemu-img >/dev/null 2>&1 || missing+=(qemu-utils)
command -v pkill >/dev/null 2>&1 || missing+=(procps)  # the posix stand-in VM's kills (pkill -s), the tests' pgrep
command -v nix-instantiate >/dev/null 2>&1 || missing+=(nix-bin)  # parses nix/*.nix (no nixpkgs)
ldconfig -p 2>/dev/null | grep -q 'libatomic\.so\.1 ' || missing+=(libatomic1)  # the playwright wheel's Node needs it
if [ ${#missing[@]} -gt 0 ]; then
  say "apt-get install ${missing[*]}"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# pip copies the command script into .venv/bin at install: a change to it needs an install too
stamp=.venv/.installed-$(cat pyproject.toml constraints.txt scripts/win-automation | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ]; then
  say "creating .venv with the package and its test extras"
  [ -x .venv/bin/python ] || python3 -m venv .venv
  .venv/bin/pip install -q --disable-pip-version-check -c constraints.txt -e '.[test,bench]' --config-settings editable_mode=compat 2> >(grep -v 'is ignored: it is \(neither\|either\)' >&2)
  # Bytecode for every module now, as pip compiles a package it installs: a __pycache__ folder
  # made later, by the first run that imports from its folder, changes the folder's mtime, which
  # is part of the warm CLI process's key (win_automation/cli/server_key.py): that server would
  # find itself stale and leave.
  .venv/bin/python -m compileall -q win_automation workflows >/dev/null
  rm -f .venv/.installed-*
  touch "$stamp"
fi

previous=$(.venv/bin/python -c 'import importlib.metadata as m; a, b = m.version("playwright").split(".")[:2]; print(f"{a}.{int(b) - 1}")')
dest=.cache/playwright-core-previous
have=$(sed -n 's/^  "version": "\(.*\)",$/\1/p' "$dest/node_modules/playwright-core/package.json" 2>/dev/null || true)
if [ "${have%.*}" != "$previous" ]; then
  say "npm install playwright-core@~$previous.0 into $dest/ (the tests' version-mismatch server)"
  mkdir -p "$dest"
  npm install --silent --no-audit --no-fund --prefix "$dest" "playwright-core@~$previous.0" >/dev/null
fi
rm -rf .node  # the npm playwright-core of earlier versions: Debian 12's Node 18 cannot run it
