#!/usr/bin/python3
"""test/bench/stream.py — helper of test/bench/run: one timed streaming run.

  stream.py --postmaster PID [--count text|msgpack|binary] [--timeout S]
            -- pg_recvlogical ARGS...

Runs the command (pg_recvlogical --start --endpos ... --no-loop) and measures
the walsender that serves it.  The walsender is a child of the postmaster
and is the only one to come and go during the run (the script waits, before
and after, until the postmaster has no client backend or walsender child),
so the postmaster's cutime+cstime (/proc/PID/stat fields 16+17: CPU time of
its reaped children) grow by exactly the walsender's CPU time, from fork to
exit (resolution: one clock tick, 10 ms).  As a cross-check the walsender's
/proc/PID/schedstat is sampled every few ms until it is gone; the last
sample is a lower bound of its CPU time, with ns resolution, and gives its
run-queue wait.

With --count the command must write to stdout (-f -); its output is counted
(bytes, lines; msgpack: records and their op) instead of being discarded.

Prints one line, tab-separated:
  wall_secs cpu_secs sampled_cpu_secs wait_secs walsender_pid bytes lines extra
(wall_secs: pg_recvlogical's run time; extra: msgpack record count/ops or -).
Exits 1, with a message on stderr, on failure.
"""
import argparse
import os
import subprocess
import sys
import threading
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")


def stat_fields(pid):
    """/proc/PID/stat fields 3.. (after the parenthesised comm)."""
    with open("/proc/%d/stat" % pid) as f:
        s = f.read()
    return s[s.rindex(")") + 2:].split()


def children_ticks(pm):
    f = stat_fields(pm)
    return int(f[13]) + int(f[14])        # fields 16, 17: cutime, cstime


def transient_children(pm):
    """{pid: cmdline} of the postmaster's children that are not auxiliary
    processes (checkpointer, walwriter, ...): client backends, walsenders,
    and fresh forks that have not set their title yet."""
    out = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        pid = int(d)
        try:
            if int(stat_fields(pid)[1]) != pm:
                continue
            with open("/proc/%d/cmdline" % pid, "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, ValueError, IndexError):
            continue
        if cmd.startswith("postgres: ") and not cmd.startswith(("postgres: postgres ", "postgres: walsender ")):
            continue                       # an auxiliary process (title set at start)
        out[pid] = cmd
    return out


def quiesce(pm, timeout):
    end = time.monotonic() + timeout
    while True:
        left = transient_children(pm)
        if not left:
            return
        if time.monotonic() > end:
            raise RuntimeError("postmaster children did not go away: %s" % left)
        time.sleep(0.002)


def read_schedstat(pid):
    with open("/proc/%d/schedstat" % pid) as f:
        run, wait, _ = f.read().split()
    return int(run), int(wait)


class Counter:
    def __init__(self, mode, stream):
        self.mode, self.stream = mode, stream
        self.bytes = self.lines = 0
        self.records, self.ops, self.other = 0, {}, 0
        self.error = None

    def run(self):
        try:
            unpacker = None
            if self.mode == "msgpack":
                import msgpack
                unpacker = msgpack.Unpacker(raw=False, max_buffer_size=1 << 30)
            while True:
                chunk = self.stream.read(1 << 20)
                if not chunk:
                    break
                self.bytes += len(chunk)
                self.lines += chunk.count(b"\n")
                if unpacker is not None:
                    unpacker.feed(chunk)
                    for obj in unpacker:
                        if isinstance(obj, dict):
                            self.records += 1
                            op = obj.get("op")
                            self.ops[op] = self.ops.get(op, 0) + 1
                        elif obj != 10:     # the newline pg_recvlogical writes after a message
                            self.other += 1
        except Exception as e:  # noqa: BLE001 - report whatever went wrong
            self.error = "%s: %s" % (type(e).__name__, e)

    def extra(self):
        if self.mode != "msgpack":
            return "-"
        if self.error:
            return "error " + self.error
        return "records=%d ops=%s other=%d" % (
            self.records, ",".join("%s:%d" % kv for kv in sorted(self.ops.items(), key=str)), self.other)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--postmaster", type=int, required=True)
    ap.add_argument("--count", choices=("text", "msgpack", "binary"))
    ap.add_argument("--timeout", type=float, default=300)
    ap.add_argument("--interval", type=float, default=0.005)
    ap.add_argument("cmd", nargs="+")
    a = ap.parse_args()
    pm = a.postmaster

    quiesce(pm, 30)
    c0 = children_ticks(pm)
    done = {}
    t0 = time.monotonic()
    proc = subprocess.Popen(a.cmd, stdout=subprocess.PIPE if a.count else subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    errbuf = []
    threads = [threading.Thread(target=lambda: errbuf.append(proc.stderr.read()))]
    counter = None
    if a.count:
        counter = Counter(a.count, proc.stdout)
        threads.append(threading.Thread(target=counter.run))

    def waiter():
        proc.wait()
        done["t"] = time.monotonic()
    threads.append(threading.Thread(target=waiter))
    for t in threads:
        t.start()

    ws, last, seen = None, None, set()
    while True:
        now = time.monotonic()
        if now - t0 > a.timeout:
            proc.kill()
            sys.exit("stream: timeout after %.0fs (walsender %s)" % (a.timeout, ws))
        if ws is None:
            for pid, cmd in transient_children(pm).items():
                seen.add(pid)
                if cmd.startswith("postgres: walsender "):
                    ws = pid
            if ws is None and "t" in done and now - done["t"] > 2:
                break                      # the client is gone and no walsender was seen
        if ws is not None:
            try:
                last = read_schedstat(ws)
            except (OSError, ValueError):
                break                      # exited and reaped
        time.sleep(a.interval)
    for t in threads:
        t.join()
    wall = done["t"] - t0
    quiesce(pm, 30)                        # every child of this run reaped
    c1 = children_ticks(pm)

    err = b"".join(errbuf).decode(errors="replace").strip()
    if proc.returncode != 0:
        sys.exit("stream: %s exited with %d: %s" % (os.path.basename(a.cmd[0]), proc.returncode, err[-300:]))
    if ws is None or last is None:
        sys.exit("stream: no walsender seen (children seen: %s) %s" % (sorted(seen), err[-300:]))
    if counter and counter.error:
        sys.exit("stream: counting output: %s" % counter.error)
    print("\t".join([
        "%.4f" % wall,
        "%.4f" % ((c1 - c0) / CLK_TCK),
        "%.4f" % (last[0] / 1e9),
        "%.4f" % (last[1] / 1e9),
        str(ws),
        str(counter.bytes if counter else -1),
        str(counter.lines if counter else -1),
        counter.extra() if counter else "-",
    ]))


if __name__ == "__main__":
    main()
