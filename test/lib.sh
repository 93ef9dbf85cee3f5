# test/lib.sh — shared bash library of the rtsub test harness.
#
# Owned by the test harness (test/run, test/demo, test/bench/* source it).
# Source it, then call the functions:
#
#   . "$(dirname "$0")/lib.sh"     (or test/lib.sh from the repo root)
#   rtsub_top                      # sets and exports $TOP (the repo root)
#   rtsub_tmp_install              # make + private install in $TOP/tmp_install;
#                                  # exports PGBIN, PG_REGRESS, PATH (PGBIN first)
#   rtsub_outdir NAME              # creates $TOP/test/out/NAME writable by the
#                                  # server user, prints its path
#   rtsub_as_pguser CMD...         # runs CMD as a non-root user (postgres when root)
#   rtsub_free_port [FIRST]        # prints a free TCP port >= FIRST (default 54321)
#   rtsub_cluster_start DATADIR PORT [EXTRA_CONF_FILE]
#                                  # initdb + start; exports PGHOST PGPORT PGUSER
#                                  # PGDATABASE RTSUB_SERVER_LOG
#   rtsub_cluster_stop DATADIR     # fast shutdown (no-op when not running)
#   rtsub_psql ARGS...             # psql as the server user, -X -v ON_ERROR_STOP=1
#
# Postgres refuses to run as root: when the caller is root, everything that
# touches a server (initdb, pg_ctl, pg_regress, prove, clients) goes through
# rtsub_as_pguser, which uses the `postgres` OS user (override: RTSUB_PGUSER_OS).
# The database superuser is always `postgres` (initdb -U postgres).

RTSUB_PG_MAJOR=${RTSUB_PG_MAJOR:-15}
RTSUB_SYS_LIB=/usr/lib/postgresql/$RTSUB_PG_MAJOR
RTSUB_SYS_SHARE=/usr/share/postgresql/$RTSUB_PG_MAJOR
RTSUB_PGUSER_OS=${RTSUB_PGUSER_OS:-postgres}

rtsub_die() { echo "rtsub: $*" >&2; return 1; }

rtsub_top() {
	TOP=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd) || return 1
	export TOP
}

_rtsub_is_root() { [ "$(id -u)" = 0 ]; }

# _rtsub_chown PATH...: give PATHs to the server user (no-op unless root).
_rtsub_chown() {
	if _rtsub_is_root; then chown "$RTSUB_PGUSER_OS:" "$@"; fi
}

# Make the repo readable (and its directories traversable) by the server
# user, which runs tests and reads the installed files.  Root only.
_rtsub_make_readable() {
	_rtsub_is_root || return 0
	# shellcheck disable=SC2016  # $1 is for the inner sh
	if runuser -u "$RTSUB_PGUSER_OS" -- sh -c 'cd "$1" && test -r lib.sh -a -r ../Makefile' \
		sh "$TOP/test" 2>/dev/null; then
		return 0
	fi
	local d=$TOP
	while [ "$d" != / ]; do chmod o+x "$d" || true; d=$(dirname "$d"); done
	chmod -R a+rX "$TOP" 2>/dev/null || true
}

# rtsub_outdir NAME: create $TOP/test/out/NAME (owned by the server user when
# root) and print its absolute path.
rtsub_outdir() {
	[ -n "${TOP:-}" ] || rtsub_top
	local dir=$TOP/test/out/$1
	mkdir -p "$dir" "$TOP/test/out/home" || return 1
	_rtsub_chown "$TOP/test/out" "$TOP/test/out/home" || return 1
	if _rtsub_is_root; then chown -R "$RTSUB_PGUSER_OS:" "$dir" || return 1; fi
	echo "$dir"
}

# rtsub_as_pguser CMD...: run CMD as the non-root user (directly when not root).
# Passes the environment the harness relies on; HOME is a writable dir.
rtsub_as_pguser() {
	if ! _rtsub_is_root; then
		"$@"
		return $?
	fi
	[ -n "${TOP:-}" ] || rtsub_top
	if [ ! -d "$TOP/test/out/home" ]; then
		mkdir -p "$TOP/test/out/home" && _rtsub_chown "$TOP/test/out" "$TOP/test/out/home"
	fi
	local -a envs=(PATH="$PATH" HOME="$TOP/test/out/home" USER="$RTSUB_PGUSER_OS" LOGNAME="$RTSUB_PGUSER_OS")
	local v
	for v in TOP PGBIN PG_REGRESS PGHOST PGPORT PGUSER PGDATABASE PGPASSWORD TESTDIR TEMP_CONFIG \
	         PG_TEST_EXTRA PG_TEST_NOCLEAN PG_TEST_TIMEOUT_DEFAULT PERL5LIB PYTHONPATH PYTHONUNBUFFERED \
	         NODE_PATH NODE_OPTIONS LANG LC_ALL TZ TERM $(compgen -e | grep '^RTSUB_'); do
		[ -n "${!v+x}" ] && envs+=("$v=${!v}")
	done
	# a cwd the user cannot enter breaks initdb & co.: fall back to $TOP
	if runuser -u "$RTSUB_PGUSER_OS" -- test -x "$PWD" 2>/dev/null; then
		runuser -u "$RTSUB_PGUSER_OS" -- env "${envs[@]}" "$@"
	else
		(cd "$TOP" && runuser -u "$RTSUB_PGUSER_OS" -- env "${envs[@]}" "$@")
	fi
}

# rtsub_tmp_install: build, then install into $TOP/tmp_install a private copy
# of the system PostgreSQL plus rtsub.  postgres finds its share and lib
# directories relative to its own executable, so the copy is self-contained
# (like PostgreSQL's own `make check` temp install).  The system copy is
# refreshed only when the system PostgreSQL changed.
rtsub_tmp_install() {
	[ -n "${TOP:-}" ] || rtsub_top
	local inst=$TOP/tmp_install
	local stamp=$inst/.rtsub-system-stamp
	local want
	want=$(stat -c '%Y %s' "$RTSUB_SYS_LIB/bin/postgres" "$RTSUB_SYS_SHARE/postgres.bki" 2>/dev/null | tr '\n' ' ') ||
		{ rtsub_die "PostgreSQL $RTSUB_PG_MAJOR is not installed (run: bash test/deps.sh as root)"; return 1; }

	# one build + install at a time (test/run, test/demo, benchmarks)
	mkdir -p "$TOP/test/out" || return 1
	(
		flock 9
		make -s -C "$TOP" >/dev/null || { rtsub_die "make failed"; exit 1; }
		if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
			echo "rtsub: copying PostgreSQL $RTSUB_PG_MAJOR into $inst" >&2
			rm -rf "$inst"
			mkdir -p "$inst/usr/lib/postgresql" "$inst/usr/share/postgresql" || exit 1
			cp -a "$RTSUB_SYS_LIB" "$inst/usr/lib/postgresql/" || exit 1
			cp -a "$RTSUB_SYS_SHARE" "$inst/usr/share/postgresql/" || exit 1
			echo "$want" >"$stamp"
		fi
		make -s -C "$TOP" install DESTDIR="$inst" >/dev/null || { rtsub_die "make install failed"; exit 1; }
	) 9>>"$TOP/test/out/.tmp_install.lock" || return 1

	export PGBIN=$inst$RTSUB_SYS_LIB/bin
	export PG_REGRESS=$inst$RTSUB_SYS_LIB/lib/pgxs/src/test/regress/pg_regress
	export RTSUB_PERL_LIB=$inst$RTSUB_SYS_LIB/lib/pgxs/src/test/perl
	case ":$PATH:" in
		":$PGBIN:"*) ;;
		*) export PATH="$PGBIN:$PATH" ;;
	esac

	# the copy must resolve its directories inside tmp_install
	local d
	for d in sharedir pkglibdir; do
		case "$("$PGBIN/pg_config" --$d)" in
			"$inst"/*) ;;
			*) rtsub_die "$PGBIN/pg_config --$d points outside $inst"; return 1 ;;
		esac
	done
	[ -f "$inst$RTSUB_SYS_SHARE/extension/rtsub.control" ] ||
		{ rtsub_die "rtsub.control was not installed into $inst"; return 1; }
	_rtsub_make_readable
	return 0
}

# rtsub_free_port [FIRST]: print the first port >= FIRST nobody listens on.
rtsub_free_port() {
	local p=${1:-54321}
	while [ "$p" -lt 65000 ]; do
		if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null &&
		   [ ! -e "/tmp/.s.PGSQL.$p" ]; then
			echo "$p"
			return 0
		fi
		p=$((p + 1))
	done
	return 1
}

# rtsub_cluster_start DATADIR PORT [EXTRA_CONF_FILE]
# Fresh initdb in DATADIR (wiped first), config = test/logical.conf + extra,
# listens on 127.0.0.1:PORT and on a unix socket in DATADIR's parent (or a
# short /tmp dir when that path is too long).  Server log: DATADIR.log.
rtsub_cluster_start() {
	local datadir=$1 port=$2 extra=${3:-}
	if [ -z "$datadir" ] || [ -z "$port" ]; then
		rtsub_die "usage: rtsub_cluster_start DATADIR PORT [EXTRA_CONF]"
		return 1
	fi
	[ -n "${TOP:-}" ] || rtsub_top
	[ -n "${PGBIN:-}" ] || { rtsub_die "call rtsub_tmp_install first"; return 1; }
	datadir=$(realpath -m "$datadir")
	local parent
	parent=$(dirname "$datadir")

	rtsub_cluster_stop "$datadir" 2>/dev/null
	rm -rf "$datadir"
	mkdir -p "$parent" || return 1
	_rtsub_chown "$parent" || return 1

	local sockdir=$parent
	if [ ${#sockdir} -gt 80 ]; then
		sockdir=$(mktemp -d /tmp/rtsub-sock.XXXXXX) || return 1
		_rtsub_chown "$sockdir" || return 1
	fi

	rtsub_as_pguser "$PGBIN/initdb" -D "$datadir" -U postgres -A trust -E UTF8 --no-locale \
		--no-sync >"$datadir.initdb.log" 2>&1 ||
		{ cat "$datadir.initdb.log" >&2; rtsub_die "initdb failed"; return 1; }

	{
		echo
		echo "# --- test/logical.conf"
		cat "$TOP/test/logical.conf"
		echo
		echo "# --- rtsub_cluster_start"
		echo "port = $port"
		echo "listen_addresses = '127.0.0.1'"
		echo "unix_socket_directories = '$sockdir'"
		if [ -n "$extra" ]; then
			echo "# --- $extra"
			cat "$extra"
		fi
	} >>"$datadir/postgresql.conf" || return 1
	echo "$sockdir" >"$datadir/rtsub_sockdir"
	_rtsub_chown "$datadir/rtsub_sockdir" "$datadir.initdb.log" || return 1

	export RTSUB_SERVER_LOG=$datadir.log
	: >"$RTSUB_SERVER_LOG" || return 1
	_rtsub_chown "$RTSUB_SERVER_LOG" || return 1
	if ! rtsub_as_pguser "$PGBIN/pg_ctl" -D "$datadir" -l "$RTSUB_SERVER_LOG" -w -t 60 start >/dev/null; then
		tail -n 30 "$RTSUB_SERVER_LOG" >&2
		rtsub_die "server in $datadir failed to start (log: $RTSUB_SERVER_LOG)"
		return 1
	fi
	export PGHOST=$sockdir PGPORT=$port PGUSER=postgres PGDATABASE=${PGDATABASE:-postgres}
	return 0
}

# rtsub_cluster_stop DATADIR: fast shutdown, if running.
rtsub_cluster_stop() {
	local datadir=$1
	[ -f "$datadir/postmaster.pid" ] || return 0
	local pgbin=${PGBIN:-$RTSUB_SYS_LIB/bin}
	rtsub_as_pguser "$pgbin/pg_ctl" -D "$datadir" -m fast -w -t 60 stop >/dev/null ||
		rtsub_as_pguser "$pgbin/pg_ctl" -D "$datadir" -m immediate -w stop >/dev/null
	local sockdir
	sockdir=$(cat "$datadir/rtsub_sockdir" 2>/dev/null)
	case "$sockdir" in /tmp/rtsub-sock.*) rm -rf "$sockdir" ;; esac
	return 0
}

# rtsub_psql ARGS...: psql against $PGHOST/$PGPORT as the server user.
rtsub_psql() {
	rtsub_as_pguser "$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 "$@"
}
