"""rtsub_testlib — shared helpers for the python tests in test/py/.

Imported by the test scripts (test/run puts test/py on PYTHONPATH and runs
every test/py/*.py that does not start with `_` with /usr/bin/python3, as a
non-root user, with PGHOST/PGPORT/PGUSER/PGDATABASE set and the PostgreSQL
binaries on PATH).  No psycopg: everything goes through `psql` subprocesses.

    from _rtsub_testlib import Psql, Tap, PsqlError, lsn_to_int

    db = Psql()                       # PGDATABASE
    db.recreate_database('x')         # DROP DATABASE IF EXISTS ... (FORCE); CREATE
    x = Psql('x')
    x.execute("CREATE TABLE ...")     # runs a script, raises PsqlError on error
    rows = x.query("SELECT a, b FROM t")   # list of tuples of str / None
    tap = Tap()
    tap.ok(cond, 'description', diag=['line', ...])
    tap.is_eq(got, expected, 'description')
    sys.exit(tap.done())              # prints the plan + results, returns exit code

Because test/run runs this file as a test too, running it directly does a
small self-check (psql reachable, query round trip) and prints TAP.
"""

import base64
import os
import subprocess
import sys
import traceback

__all__ = ['Psql', 'PsqlError', 'Tap', 'lsn_to_int', 'b64_field']

# psql output separators: ASCII unit separator between fields, a record is one
# line.  Values that may contain anything are base64-encoded in SQL with
# b64_field() so that neither separator can appear in them; NULL is printed as
# the \N marker (-P null=...), which base64 never produces.
FIELD_SEP = '\x1f'
NULL_MARK = '\\N'


class PsqlError(Exception):
    def __init__(self, cmd, rc, stdout, stderr):
        self.cmd, self.rc, self.stdout, self.stderr = cmd, rc, stdout, stderr
        super().__init__('psql failed (rc=%d): %s' % (rc, stderr.strip()))


def b64_field(sql_expr_bytea):
    """SQL expression: the bytea expression as one-line base64 text."""
    return "translate(encode(%s, 'base64'), E'\\n', '')" % sql_expr_bytea


def lsn_to_int(lsn):
    """'16/B374D848' -> integer, for ordering LSNs."""
    hi, lo = lsn.split('/')
    return (int(hi, 16) << 32) | int(lo, 16)


class Psql:
    """Runs SQL through `psql -X -A -t -q -v ON_ERROR_STOP=1`."""

    def __init__(self, dbname=None, psql='psql', timeout=300):
        self.dbname = dbname or os.environ.get('PGDATABASE', 'postgres')
        self.psql = psql
        self.timeout = timeout

    def _run(self, sql, extra_args=()):
        cmd = [self.psql, '-X', '-A', '-t', '-q', '-v', 'ON_ERROR_STOP=1',
               '-F', FIELD_SEP, '-P', 'null=' + NULL_MARK,
               '-d', self.dbname] + list(extra_args)
        env = dict(os.environ)
        env.setdefault('PGOPTIONS', '')
        env['PGOPTIONS'] += ' -c client_min_messages=warning'
        env['PGCLIENTENCODING'] = 'UTF8'
        p = subprocess.run(cmd, input=sql.encode('utf-8'), stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, env=env, timeout=self.timeout)
        out = p.stdout.decode('utf-8', errors='surrogateescape')
        err = p.stderr.decode('utf-8', errors='replace')
        if p.returncode != 0:
            raise PsqlError(cmd, p.returncode, out, err)
        return out

    def execute(self, sql):
        """Run a script (several statements allowed); returns raw stdout."""
        return self._run(sql)

    def query(self, sql):
        """One statement; rows as tuples of str (None for NULL).  Values
        must not contain newlines or the field separator: wrap such values
        with b64_field()."""
        out = self._run(sql)
        rows = []
        for line in out.split('\n'):
            if line == '':
                continue
            rows.append(tuple(None if f == NULL_MARK else f
                              for f in line.split(FIELD_SEP)))
        return rows

    def scalar(self, sql):
        rows = self.query(sql)
        if len(rows) != 1 or len(rows[0]) != 1:
            raise AssertionError('expected one value from %r, got %r' % (sql, rows))
        return rows[0][0]

    def recreate_database(self, name):
        ident = '"' + name.replace('"', '""') + '"'
        self._run('DROP DATABASE IF EXISTS %s WITH (FORCE);\n' % ident)
        self._run("CREATE DATABASE %s TEMPLATE template0 ENCODING 'UTF8';\n" % ident)

    def drop_database(self, name):
        ident = '"' + name.replace('"', '""') + '"'
        self._run('DROP DATABASE IF EXISTS %s WITH (FORCE);\n' % ident)


def b64decode(s):
    return base64.b64decode(s, validate=True)


class Tap:
    """Collects results; done() prints `1..N` and the results (plan first),
    returns the exit status.  Diagnostics go out as `# ...` lines."""

    def __init__(self, out=None):
        self.results = []     # (ok, description, [diag lines])
        self.out = out or sys.stdout

    def ok(self, cond, desc, diag=None):
        if isinstance(diag, str):
            diag = diag.split('\n')
        self.results.append((bool(cond), desc, [] if cond else list(diag or [])))
        return bool(cond)

    def is_eq(self, got, expected, desc):
        return self.ok(got == expected, desc,
                       ['     got: %r' % (got,), 'expected: %r' % (expected,)])

    def fail_exception(self, desc):
        self.ok(False, desc, traceback.format_exc().rstrip('\n').split('\n'))

    def note(self, *lines):
        self.results.append((None, None, list(lines)))

    def done(self):
        n = sum(1 for r in self.results if r[0] is not None)
        w = self.out.write
        w('1..%d\n' % n)
        i = 0
        failed = 0
        for ok, desc, diag in self.results:
            if ok is None:
                for d in diag:
                    w('# %s\n' % d)
                continue
            i += 1
            desc = desc.replace('\n', ' ').replace('#', '\\#')
            w('%s %d - %s\n' % ('ok' if ok else 'not ok', i, desc))
            if not ok:
                failed += 1
                for d in diag:
                    for line in str(d).split('\n'):
                        w('#   %s\n' % line)
        if failed:
            w('# failed %d of %d\n' % (failed, n))
        self.out.flush()
        return 1 if failed or n == 0 else 0


def _selftest():
    tap = Tap()
    try:
        db = Psql()
        tap.is_eq(db.scalar('SELECT 1'), '1', 'rtsub_testlib: psql reachable')
        rows = db.query("SELECT 'a b', NULL::text, %s"
                        % b64_field("convert_to(E'x\\ny', 'UTF8')"))
        tap.ok(len(rows) == 1 and rows[0][1] is None
               and b64decode(rows[0][2]) == b'x\ny',
               'rtsub_testlib: NULL and base64 round trip', ['rows: %r' % rows])
    except Exception:
        tap.fail_exception('rtsub_testlib: self-check raised')
    return tap.done()


if __name__ == '__main__':
    sys.exit(_selftest())
