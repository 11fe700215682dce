#!/usr/bin/env bash
# Installs what win-automation and its tests need, idempotently, and fast when all is in place:
#   - Debian's openssh-server and chromium (the real sshd and browser the tests run);
#   - a virtualenv in .venv with the package and its test and benchmark extras;
#   - npm's playwright-core, at the Python playwright package's major.minor, in .node/.
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
command -v npm >/dev/null 2>&1 || missing+=(npm)
if [ ${#missing[@]} -gt 0 ]; then
  say "apt-get install ${missing[*]}"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

stamp=.venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)
if [ ! -f "$stamp" ]; then
  say "creating .venv with the package and its test extras"
  [ -x .venv/bin/python ] || python3 -m venv .venv
  .venv/bin/pip install -q --disable-pip-version-check -e '.[test,bench]' --config-settings editable_mode=compat 2> >(grep -v 'is ignored: it is neither' >&2)
  rm -f .venv/.installed-*
  touch "$stamp"
fi

minor=$(.venv/bin/python -c 'import importlib.metadata as m; print(".".join(m.version("playwright").split(".")[:2]))')
have=$(node -p 'require("./.node/node_modules/playwright-core/package.json").version' 2>/dev/null || true)
if [ "${have%.*}" != "$minor" ]; then
  say "npm install playwright-core@~$minor.0 into .node/"
  mkdir -p .node
  npm install --silent --no-audit --no-fund --prefix .node "playwright-core@~$minor.0" >/dev/null
fi
