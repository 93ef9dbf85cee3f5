#!/usr/bin/python3
"""test/bench/report.py — helper of test/bench/run (see its header for the method).

  report.py --check-msgpack             stdin: hex msgpack records, one a line;
                                        prints a one-line verdict
  report.py --changes N ... --results R --stream S --meta M --json OUT
                                        prints the results tables (streaming
                                        and SQL-function methods) and the
                                        target lines, writes OUT (JSON)
"""
import argparse
import datetime
import json
import os
import statistics
import sys

# the two targets: (numerator, denominator, minimum ratio)
TARGETS = [("rtsub-json", "wal2json-v2", 1.5), ("rtsub-msgpack", "pgoutput", 1.0)]

DESCRIPTIONS = {
    "rtsub-json": "rtsub format=json, tables from rtsub.publish()",
    "rtsub-msgpack": "rtsub format=msgpack (binary), tables from rtsub.publish()",
    "rtsub-json-tables-opt": "rtsub format=json, tables='public.bench_table' option",
    "wal2json-v2": "wal2json format-version=2 (defaults: B/C records, column types)",
    "wal2json-v2-meta": "wal2json v2, no B/C, xid+timestamp+lsn per change (rtsub-like)",
    "test_decoding": "test_decoding include-xids=0 skip-empty-xacts=1",
    "pgoutput": "pgoutput proto_version=1 (binary), publication bench_pub",
}


def check_msgpack():
    import msgpack
    lines = [l.strip() for l in sys.stdin if l.strip()]
    if not lines:
        print("MISMATCH: no records")
        return
    try:
        recs = [msgpack.unpackb(bytes.fromhex(l), raw=False) for l in lines]
    except Exception as e:  # noqa: BLE001 - report whatever went wrong
        print("MISMATCH: cannot decode: %s (%s)" % (e, lines[0][:80]))
        return
    bad = [r for r in recs if not isinstance(r, dict) or r.get("op") not in ("I", "U", "D")
           or r.get("table") != "bench_table"]
    first = json.dumps(recs[0], default=str)[:160]
    if bad:
        print("MISMATCH: unexpected record %s" % json.dumps(bad[0], default=str)[:160])
    else:
        print("ok (%d records decoded; first: %s)" % (len(recs), first))


def expected_rows(name, n, ntx):
    """(min, max) output rows a config must produce for n changes in ntx transactions."""
    if name.startswith("rtsub") or name == "wal2json-v2-meta":
        return n, n
    if name in ("wal2json-v2", "test_decoding"):
        return n + 2 * ntx, n + 2 * ntx
    if name == "pgoutput":          # + relation ('R') messages
        return n + 2 * ntx + 1, n + 2 * ntx + 10
    return 0, 1 << 62


def median_stats(r, n, nbytes):
    med = statistics.median(r["secs"])
    cpu = statistics.median(r["cpu"])
    return {"median_secs": round(med, 4), "median_cpu_secs": round(cpu, 4),
            "min_cpu_secs": round(min(r["cpu"]), 4),
            "changes_per_sec": round(n / med), "mb_per_sec": round(nbytes / med / 1e6, 1),
            "changes_per_cpu_sec": round(n / cpu), "mb_per_cpu_sec": round(nbytes / cpu / 1e6, 1)}


def read_sql(path):
    runs = {}       # (variant, name) -> dict
    order = []      # variants in order
    for line in open(path):
        f = line.rstrip("\n").split("\t")
        variant, name, rnd = f[0], f[1], int(f[2])
        if variant not in order:
            order.append(variant)
        r = runs.setdefault((variant, name), {"secs": [], "cpu": [], "wait": [], "rows": set(),
                                              "bytes": set(), "error": None})
        if f[3] in ("error", "unavailable"):
            r["error"] = "%s: %s" % (f[3], f[4] if len(f) > 4 else "")
            continue
        if rnd == 0:            # warm-up round
            continue
        r["rows"].add(int(f[3]))
        r["bytes"].add(int(f[4] or 0))
        r["secs"].append(float(f[5]))
        r["cpu"].append(float(f[6]))
        r["wait"].append(float(f[7]))
    return runs, order


def read_stream(path):
    runs = {}       # (variant, name) -> dict
    for line in open(path):
        f = line.rstrip("\n").split("\t")
        variant, name, rnd = f[0], f[1], int(f[2])
        r = runs.setdefault((variant, name), {"secs": [], "cpu": [], "sampled": [], "wait": [],
                                              "flushed": [], "count": None, "error": None})
        if f[3] == "error":
            r["error"] = "error: %s" % (f[4] if len(f) > 4 else "")
            continue
        wall, cpu, sampled, wait, _pid, nbytes, lines, extra, flushed, flush_lsn = f[3:13]
        r["flushed"].append((flushed == "t", flush_lsn))
        if rnd == 0:            # warm-up round: output counted
            r["count"] = {"bytes": int(nbytes), "lines": int(lines), "extra": extra}
            continue
        r["secs"].append(float(wall))
        r["cpu"].append(float(cpu))
        r["sampled"].append(float(sampled))
        r["wait"].append(float(wait))
    return runs


def stream_check(name, cnt, sql, n, a):
    """Compare the counted streamed output (round 0) with the SQL method's."""
    if cnt is None:
        return False, "not counted"
    if not sql.get("available"):
        return None, "%d bytes, %d lines (no SQL figures to compare)" % (cnt["bytes"], cnt["lines"])
    rows, nbytes = sql["output_rows"], sql["output_bytes"]
    # pg_recvlogical writes every message followed by a newline
    ok = cnt["bytes"] == nbytes + rows
    what = "%d bytes = SQL bytes + rows" % cnt["bytes"] if ok else \
        "%d bytes, SQL bytes + rows = %d" % (cnt["bytes"], nbytes + rows)
    if name == "rtsub-msgpack":
        want = "records=%d ops=D:%d,I:%d,U:%d other=0" % (n, a.deletes, a.inserts, a.updates)
        ok = ok and cnt["extra"] == want
        what += ", msgpack %s" % cnt["extra"]
    elif name != "pgoutput":
        ok = ok and cnt["lines"] == rows
        what += ", %d lines%s" % (cnt["lines"], "" if cnt["lines"] == rows else " (SQL rows: %d)" % rows)
    return ok, what


def fmt_row(name, rows, mb, p, check):
    return "%-22s %7s %7s | %6.3f %9s %6.1f %5.2fx | %6.3f %9s %6.1f %5.2fx | %s" % (
        name, rows, mb,
        p["median_secs"], "{:,}".format(p["changes_per_sec"]), p["mb_per_sec"],
        p.get("vs_test_decoding_wall", 0),
        p["median_cpu_secs"], "{:,}".format(p["changes_per_cpu_sec"]), p["mb_per_cpu_sec"],
        p.get("vs_test_decoding", 0), check)


def report(a):
    meta = {}
    for line in open(a.meta):
        v, k, val = line.rstrip("\n").split("\t", 2)
        meta.setdefault(v, {})[k] = val
    sql_runs, order = read_sql(a.results)
    st_runs = read_stream(a.stream)

    n = a.changes
    doc = {
        "benchmark": "decode",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "server_version": meta.get("all", {}).get("server_version"),
        "cpus": os.cpu_count(),
        "loadavg": [meta.get("all", {}).get("loadavg_start"), meta.get("all", {}).get("loadavg_end")],
        "settings": {"shared_buffers": "1GB", "logical_decoding_work_mem": "1GB",
                     "work_mem": "1GB", "fsync": "off", "autovacuum": "off",
                     "shared_preload_libraries": "", "synchronous_commit": "on"},
        "rtsub_note": meta.get("all", {}).get("rtsub_note") or None,
        "methods": {
            "stream": "streaming replication protocol (the targets): median of %d interleaved runs "
                      "(after 1 warm-up whose output is counted) of pg_recvlogical --start "
                      "--endpos=end_lsn --no-loop -f /dev/null -o opts, one slot per config and run; "
                      "CPU = the walsender's CPU time (the postmaster's cutime+cstime delta, "
                      "cross-checked by sampling its /proc/PID/schedstat), wall = pg_recvlogical's "
                      "run time; every slot's confirmed_flush_lsn >= end_lsn afterwards" % a.runs,
            "sql": "SQL function (materialized): median of %d interleaved runs (after 1 warm-up) of "
                   "SELECT count(*), sum(octet_length(data)) FROM pg_logical_slot_peek_[binary_]changes"
                   "(slot, end_lsn, NULL, opts), timed in the server (wall clock, and the backend's CPU "
                   "time from /proc/self/schedstat); every output row goes through a tuplestore"
                   % a.sql_runs,
        },
        "slots": "all created before the workload, as copies of one slot (same start LSN)",
        "workload": {"changes": n, "inserts": a.inserts, "updates": a.updates, "deletes": a.deletes,
                     "table": "bench_table(id bigint pk, name text, price numeric(10,2), score float8, "
                              "active bool, meta jsonb, updated_at timestamptz)"},
        "variants": {},
        "targets": [],
    }

    out = ["", "decode throughput — PostgreSQL %s, %s CPUs" % (doc["server_version"], doc["cpus"]),
           "streaming: " + doc["methods"]["stream"],
           doc["methods"]["sql"],
           "settings: " + ", ".join("%s=%s" % kv for kv in doc["settings"].items())
           + " (big transactions are decoded in memory: see spill_bytes)",
           "load average at start/end: %s / %s (machine has %s CPUs)" % (
               doc["loadavg"][0], doc["loadavg"][1], doc["cpus"])]
    all_ok = True
    for variant in order:
        vm = meta.get(variant, {})
        ntx = int(vm.get("transactions", 0))
        vdoc = {"transactions": ntx, "changes_per_transaction": n / ntx if ntx else None,
                "shape": vm.get("shape"),
                "wal_range": [vm.get("start_lsn"), vm.get("end_lsn")],
                "wal_bytes": int(vm.get("wal_bytes", 0)),
                "workload_secs": float(vm.get("workload_secs", 0)),
                "slots": vm.get("slots"),
                "checks": {k: v for k, v in vm.items() if k.startswith("check_")},
                "spill_bytes": vm.get("spill_bytes"),
                "plugins": {}}
        names = [nm for nm in DESCRIPTIONS if (variant, nm) in sql_runs or (variant, nm) in st_runs]
        for name in names:
            p = {"description": DESCRIPTIONS.get(name, name)}
            # ---- SQL method
            r = sql_runs.get((variant, name))
            q = {}
            if r is None or r["error"] or not r["secs"]:
                q["available"] = False
                q["error"] = (r or {}).get("error") or "no successful run"
            else:
                rows, nbytes = max(r["rows"]), max(r["bytes"])
                lo, hi = expected_rows(name, n, ntx)
                rows_ok = len(r["rows"]) == 1 and lo <= rows <= hi
                all_ok &= rows_ok
                q.update({"available": True, "output_rows": rows,
                          "expected_rows": lo if lo == hi else [lo, hi],
                          "rows_ok": rows_ok, "output_bytes": nbytes,
                          "runs_secs": [round(x, 4) for x in r["secs"]],
                          "runs_cpu_secs": [round(x, 4) for x in r["cpu"]],
                          "runs_runqueue_wait_secs": [round(x, 4) for x in r["wait"]]})
                q.update(median_stats(r, n, nbytes))
            p["sql"] = q
            # ---- streaming method
            r = st_runs.get((variant, name))
            t = {}
            if r is None and q.get("available"):
                t["available"] = False
                t["error"] = "not streamed (SQL method only)"
            elif r is None or r["error"] or not r["secs"]:
                t["available"] = False
                t["error"] = (r or {}).get("error") or (q.get("error") if not q["available"] else None) \
                    or "no successful run"
            else:
                flushed_ok = all(ok for ok, _ in r["flushed"])
                cok, cwhat = stream_check(name, r["count"], q, n, a)
                all_ok &= flushed_ok and cok is not False
                nbytes = q["output_bytes"] if q.get("available") else \
                    (r["count"]["bytes"] - r["count"]["lines"] if r["count"] else 0)
                t.update({"available": True,
                          "reached_endpos": flushed_ok,
                          "confirmed_flush_lsns": sorted({lsn for _, lsn in r["flushed"]}),
                          "output_check_ok": cok, "output_check": cwhat,
                          "warmup_output": r["count"],
                          "runs_secs": [round(x, 4) for x in r["secs"]],
                          "runs_cpu_secs": [round(x, 4) for x in r["cpu"]],
                          "runs_sampled_cpu_secs": [round(x, 4) for x in r["sampled"]],
                          "runs_runqueue_wait_secs": [round(x, 4) for x in r["wait"]],
                          "max_cpu_minus_sampled_secs": round(max(c - s_ for c, s_ in zip(r["cpu"], r["sampled"])), 4)})
                t.update(median_stats(r, n, nbytes))
            p["stream"] = t
            vdoc["plugins"][name] = p
        for m in ("stream", "sql"):
            td = vdoc["plugins"].get("test_decoding", {}).get(m, {})
            for p in vdoc["plugins"].values():
                if p[m].get("available") and td.get("available"):
                    p[m]["vs_test_decoding"] = round(td["median_cpu_secs"] / p[m]["median_cpu_secs"], 2)
                    p[m]["vs_test_decoding_wall"] = round(td["median_secs"] / p[m]["median_secs"], 2)
        doc["variants"][variant] = vdoc

        # ---- tables
        out.append("")
        out.append("== %s: %d changes (%d I / %d U / %d D) in %s" % (
            variant, n, a.inserts, a.updates, a.deletes, vdoc["shape"]))
        out.append("   WAL %s..%s = %.1f MB (generated in %.1fs); slots: %s" % (
            vdoc["wal_range"][0], vdoc["wal_range"][1], vdoc["wal_bytes"] / 1e6, vdoc["workload_secs"],
            vdoc["slots"]))
        for m, title, cpu_label, check_label in (
                ("stream", "streaming (pg_recvlogical -> walsender), median of %d" % a.runs,
                 "walsndCPU", "reached endpos; streamed output vs SQL output"),
                ("sql", "SQL function (materialized), median of %d" % a.sql_runs,
                 "backndCPU", "rows check")):
            out.append("")
            out.append("-- %s" % title)
            out.append("%-22s %7s %7s | %6s %9s %6s %6s | %6s %9s %6s %6s | %s" % (
                "", "", "", "wall", "", "", "", cpu_label, "", "", "", ""))
            hdr = "%-22s %7s %7s | %6s %9s %6s %6s | %6s %9s %6s %6s | %s" % (
                "plugin", "rows", "out MB", "s", "changes/s", "MB/s", "vs t_d",
                "s", "changes/s", "MB/s", "vs t_d", check_label)
            out.append(hdr)
            out.append("-" * min(len(hdr), 140))
            for name, p in vdoc["plugins"].items():
                pm, q = p[m], p["sql"]
                if not pm["available"]:
                    out.append("%-22s %s" % (name, (pm["error"] or "")[:110]))
                    continue
                rows = q["output_rows"] if q.get("available") else "?"
                mb = "%.1f" % (q["output_bytes"] / 1e6) if q.get("available") else "?"
                if m == "sql":
                    check = "ok" if q["rows_ok"] else "MISMATCH (expected %s)" % (q["expected_rows"],)
                else:
                    check = "%s; %s: %s" % (
                        "yes" if pm["reached_endpos"] else "NO (%s)" % pm["confirmed_flush_lsns"],
                        {True: "ok", False: "MISMATCH", None: "?"}[pm["output_check_ok"]],
                        pm["output_check"])
                out.append(fmt_row(name, rows, mb, pm, check))
            waits = [statistics.median(r["wait"]) for (v, _), r in (st_runs if m == "stream" else sql_runs).items()
                     if v == variant and r["wait"]]
            if waits:
                out.append("  run-queue wait of the decoding %s (median per plugin): %.3f..%.3f s"
                           % ("walsender" if m == "stream" else "backend", min(waits), max(waits)))
            if m == "stream":
                diffs = [p["stream"]["max_cpu_minus_sampled_secs"] for p in vdoc["plugins"].values()
                         if p["stream"].get("available")]
                if diffs:
                    out.append("  walsender CPU (postmaster cutime delta) minus its last schedstat sample: "
                               "at most %.3f s" % max(diffs))
        out.append("")
        for k, v in sorted(vdoc["checks"].items()):
            out.append("  %s: %s" % (k, v))
        if vdoc["spill_bytes"]:
            out.append("  spill_bytes (pg_stat_replication_slots): %s" % vdoc["spill_bytes"])

    # ---- targets
    out.append("")
    out.append("== targets: throughput ratio on the streaming method's median walsender CPU time "
               "(a MISS does not fail the benchmark)")
    for variant in order:
        plugins = doc["variants"][variant]["plugins"]
        for num, den, want in TARGETS:
            pn, pd = plugins.get(num, {}).get("stream", {}), plugins.get(den, {}).get("stream", {})
            qn, qd = plugins.get(num, {}).get("sql", {}), plugins.get(den, {}).get("sql", {})
            t = {"variant": variant, "ratio_of": "%s / %s" % (num, den), "target": want,
                 "method": "stream"}
            sqltxt = "SQL function (materialized): n/a"
            if qn.get("available") and qd.get("available"):
                t["sql_ratio"] = round(qd["median_cpu_secs"] / qn["median_cpu_secs"], 2)
                t["sql_ratio_wall"] = round(qd["median_secs"] / qn["median_secs"], 2)
                sqltxt = "SQL function (materialized) %5.2fx" % t["sql_ratio"]
            if pn.get("available") and pd.get("available"):
                ratio = pd["median_cpu_secs"] / pn["median_cpu_secs"]
                wall = pd["median_secs"] / pn["median_secs"]
                best = pd["min_cpu_secs"] / pn["min_cpu_secs"]
                t.update({"ratio": round(ratio, 2), "ratio_wall": round(wall, 2),
                          "ratio_best_cpu": round(best, 2),
                          "result": "PASS" if ratio >= want else "MISS"})
                out.append("  %-6s %-26s stream %5.2fx [wall %5.2fx, best-run CPU %5.2fx] | %s"
                           "  (target >= %.1f)  %s"
                           % (variant, t["ratio_of"], ratio, wall, best, sqltxt, want, t["result"]))
            else:
                t.update({"ratio": None, "result": "UNAVAILABLE"})
                out.append("  %-6s %-26s stream   n/a | %s  (target >= %.1f)  UNAVAILABLE (%s)"
                           % (variant, t["ratio_of"], sqltxt, want,
                              doc["rtsub_note"] or pn.get("error") or pd.get("error") or "plugin not measured"))
            doc["targets"].append(t)
    if not all_ok:
        out.append("")
        out.append("WARNING: some checks failed (rows check, endpos, or streamed vs SQL output)")
    if doc["rtsub_note"]:
        out.append("")
        out.append("note: " + doc["rtsub_note"])

    os.makedirs(os.path.dirname(a.json), exist_ok=True)
    with open(a.json, "w") as f:
        json.dump(doc, f, indent=2)
        f.write("\n")
    out.append("")
    out.append("results: " + a.json)
    print("\n".join(out))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--check-msgpack", action="store_true")
    ap.add_argument("--changes", type=int)
    ap.add_argument("--inserts", type=int)
    ap.add_argument("--updates", type=int)
    ap.add_argument("--deletes", type=int)
    ap.add_argument("--runs", type=int)
    ap.add_argument("--sql-runs", type=int)
    ap.add_argument("--results")
    ap.add_argument("--stream")
    ap.add_argument("--meta")
    ap.add_argument("--json")
    a = ap.parse_args()
    if a.check_msgpack:
        check_msgpack()
    else:
        report(a)


if __name__ == "__main__":
    main()
