#!/usr/bin/env bash
# test/deps.sh — installs everything rtsub's build, tests, demo and
# benchmarks need on Debian 12 (bookworm).  Owned by the test harness.
#
# Idempotent: when every package is already installed it does nothing (no
# apt-get update).  Needs root to install; as a non-root user it only
# reports what is missing.  Also installs the Node test dependencies
# (npm ci --prefix test) when test/package.json exists.
set -euo pipefail

TOP=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

PACKAGES=(
	build-essential make gcc pkg-config
	postgresql-15 postgresql-client-15 postgresql-server-dev-15 postgresql-15-wal2json
	libwebsockets-dev libmsgpack-dev libjwt-dev
	perl libipc-run-perl
	python3 python3-msgpack
	util-linux procps
)
# Node is needed only once there are Node tests / clients (test/package.json).
# A node already on PATH (e.g. from nodesource, which bundles npm) is kept.
if [ -f "$TOP/test/package.json" ] && ! command -v node >/dev/null 2>&1; then
	PACKAGES+=(nodejs npm ca-certificates)
fi

# The JavaScript client's browser tests (clients/js/test/browser) drive Debian's
# Chromium with playwright-core.
if [ -f "$TOP/clients/js/package.json" ]; then
	PACKAGES+=(chromium)
	command -v node >/dev/null 2>&1 || PACKAGES+=(nodejs npm ca-certificates)
fi

missing=()
for p in "${PACKAGES[@]}"; do
	status=$(dpkg-query -W -f='${db:Status-Abbrev}' "$p" 2>/dev/null || true)
	case "$status" in
		ii*) ;;
		*) missing+=("$p") ;;
	esac
done

if [ ${#missing[@]} -gt 0 ]; then
	if [ "$(id -u)" != 0 ]; then
		echo "deps.sh: missing Debian packages: ${missing[*]}" >&2
		echo "deps.sh: run as root to install them:  sudo bash test/deps.sh" >&2
		exit 1
	fi
	echo "deps.sh: installing: ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -q
	apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# Node test dependencies
if [ -f "$TOP/test/package.json" ]; then
	if ! command -v npm >/dev/null 2>&1; then
		echo "deps.sh: npm not found (install nodejs/npm, as root: bash test/deps.sh)" >&2
		exit 1
	fi
	lock=$TOP/test/package-lock.json
	mods=$TOP/test/node_modules
	if [ ! -d "$mods" ] || { [ -f "$lock" ] && [ "$lock" -nt "$mods" ]; } ||
	   [ "$TOP/test/package.json" -nt "$mods" ]; then
		echo "deps.sh: installing Node test dependencies in test/node_modules"
		if [ -f "$lock" ]; then
			npm ci --prefix "$TOP/test" --no-audit --no-fund
		else
			npm install --prefix "$TOP/test" --no-audit --no-fund
		fi
		mkdir -p "$mods" && touch "$mods"
	fi
fi
# The JavaScript client's dependencies (clients/js: @msgpack/msgpack; for
# its tests ws, jose, pg, playwright-core)
if [ -f "$TOP/clients/js/package.json" ]; then
	cdir=$TOP/clients/js
	if [ ! -d "$cdir/node_modules" ] || { [ -f "$cdir/package-lock.json" ] && [ "$cdir/package-lock.json" -nt "$cdir/node_modules" ]; } ||
	   [ "$cdir/package.json" -nt "$cdir/node_modules" ]; then
		echo "deps.sh: installing the JavaScript client's dependencies in clients/js/node_modules"
		if [ -f "$cdir/package-lock.json" ]; then
			npm ci --prefix "$cdir" --no-audit --no-fund
		else
			npm install --prefix "$cdir" --no-audit --no-fund
		fi
		mkdir -p "$cdir/node_modules" && touch "$cdir/node_modules"
	fi
fi
exit 0
