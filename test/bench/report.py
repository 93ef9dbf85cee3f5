#!/usr/bin/python3
"""test/bench/report.py — helper of test/bench/run (see its header for the method).

  report.py --check-msgpack             stdin: hex msgpack records, one a line;
                                        prints a one-line verdict
  report.py --changes N ... --results R --meta M --json OUT
                                        prints the results table and the
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


def report(a):
    meta = {}
    for line in open(a.meta):
        v, k, val = line.rstrip("\n").split("\t", 2)
        meta.setdefault(v, {})[k] = val
    runs = {}       # (variant, name) -> dict
    order = []      # variants in order
    for line in open(a.results):
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
        "method": "median of %d interleaved runs (after 1 warm-up) of "
                  "SELECT count(*), sum(octet_length(data)) FROM pg_logical_slot_peek_[binary_]changes"
                  "(slot, end_lsn, NULL, opts), timed in the server (wall clock, and the backend's CPU "
                  "time from /proc/self/schedstat); one slot per plugin created before the workload; "
                  "ratios use CPU time" % a.runs,
        "workload": {"changes": n, "inserts": a.inserts, "updates": a.updates, "deletes": a.deletes,
                     "table": "bench_table(id bigint pk, name text, price numeric(10,2), score float8, "
                              "active bool, meta jsonb, updated_at timestamptz)"},
        "variants": {},
        "targets": [],
    }

    out = ["", "decode throughput — PostgreSQL %s, %s CPUs; %s" % (doc["server_version"], doc["cpus"], doc["method"]),
           "settings: " + ", ".join("%s=%s" % kv for kv in doc["settings"].items())
           + " (big transactions are decoded in memory: see spill_bytes)",
           "load average at start/end: %s / %s (machine has %s CPUs)" % (
               doc["loadavg"][0], doc["loadavg"][1], doc["cpus"])]
    all_ok = True
    for variant in order:
        vm = meta.get(variant, {})
        ntx = int(vm.get("transactions", 0))
        vdoc = {"transactions": ntx, "changes_per_transaction": n / ntx if ntx else None,
                "wal_range": [vm.get("start_lsn"), vm.get("end_lsn")],
                "wal_bytes": int(vm.get("wal_bytes", 0)),
                "workload_secs": float(vm.get("workload_secs", 0)),
                "checks": {k: v for k, v in vm.items() if k.startswith("check_")},
                "spill_bytes": vm.get("spill_bytes"),
                "plugins": {}}
        for (v, name), r in runs.items():
            if v != variant:
                continue
            p = {"description": DESCRIPTIONS.get(name, name)}
            if r["error"] or not r["secs"]:
                p["available"] = False
                p["error"] = r["error"] or "no successful run"
            else:
                med = statistics.median(r["secs"])
                cpu = statistics.median(r["cpu"])
                rows = max(r["rows"])
                nbytes = max(r["bytes"])
                lo, hi = expected_rows(name, n, ntx)
                rows_ok = len(r["rows"]) == 1 and lo <= rows <= hi
                all_ok &= rows_ok
                p.update({"available": True, "output_rows": rows,
                          "expected_rows": lo if lo == hi else [lo, hi],
                          "rows_ok": rows_ok, "output_bytes": nbytes,
                          "runs_secs": [round(x, 4) for x in r["secs"]],
                          "runs_cpu_secs": [round(x, 4) for x in r["cpu"]],
                          "runs_runqueue_wait_secs": [round(x, 4) for x in r["wait"]],
                          "median_secs": round(med, 4), "median_cpu_secs": round(cpu, 4),
                          "min_cpu_secs": round(min(r["cpu"]), 4),
                          "changes_per_sec": round(n / med), "mb_per_sec": round(nbytes / med / 1e6, 1),
                          "changes_per_cpu_sec": round(n / cpu), "mb_per_cpu_sec": round(nbytes / cpu / 1e6, 1)})
            vdoc["plugins"][name] = p
        td = vdoc["plugins"].get("test_decoding", {})
        for p in vdoc["plugins"].values():
            if p.get("available") and td.get("available"):
                p["vs_test_decoding"] = round(td["median_cpu_secs"] / p["median_cpu_secs"], 2)
                p["vs_test_decoding_wall"] = round(td["median_secs"] / p["median_secs"], 2)
        doc["variants"][variant] = vdoc

        # ---- table
        out.append("")
        vdoc["shape"] = vm.get("shape")
        out.append("== %s: %d changes (%d I / %d U / %d D) in %s" % (
            variant, n, a.inserts, a.updates, a.deletes, vdoc["shape"]))
        out.append("   WAL %s..%s = %.1f MB (generated in %.1fs)" % (
            vdoc["wal_range"][0], vdoc["wal_range"][1], vdoc["wal_bytes"] / 1e6, vdoc["workload_secs"]))
        hdr = "%-22s %7s %7s | %6s %9s %6s %6s | %6s %9s %6s %6s | %s" % (
            "", "", "", "wall", "", "", "", "CPU", "", "", "", "")
        out.append(hdr)
        hdr = "%-22s %7s %7s | %6s %9s %6s %6s | %6s %9s %6s %6s | %s" % (
            "plugin", "rows", "out MB", "s", "changes/s", "MB/s", "vs t_d",
            "s", "changes/s", "MB/s", "vs t_d", "rows check")
        out.append(hdr)
        out.append("-" * len(hdr))
        for name in DESCRIPTIONS:
            p = vdoc["plugins"].get(name)
            if p is None:
                continue
            if not p["available"]:
                out.append("%-22s %s" % (name, p["error"][:110]))
                continue
            out.append("%-22s %7d %7.1f | %6.3f %9s %6.1f %5.2fx | %6.3f %9s %6.1f %5.2fx | %s" % (
                name, p["output_rows"], p["output_bytes"] / 1e6,
                p["median_secs"], "{:,}".format(p["changes_per_sec"]), p["mb_per_sec"],
                p.get("vs_test_decoding_wall", 0),
                p["median_cpu_secs"], "{:,}".format(p["changes_per_cpu_sec"]), p["mb_per_cpu_sec"],
                p.get("vs_test_decoding", 0),
                "ok" if p["rows_ok"] else "MISMATCH (expected %s)" % (p["expected_rows"],)))
        for k, v in sorted(vdoc["checks"].items()):
            out.append("  %s: %s" % (k, v))
        waits = [statistics.median(r["wait"]) for (v, _), r in runs.items() if v == variant and r["wait"]]
        if waits:
            out.append("  run-queue wait of the decoding backend (median per plugin): %.3f..%.3f s"
                       % (min(waits), max(waits)))
        if vdoc["spill_bytes"]:
            out.append("  spill_bytes (pg_stat_replication_slots): %s" % vdoc["spill_bytes"])

    # ---- targets
    out.append("")
    out.append("== targets: throughput ratio on median CPU time (a MISS does not fail the benchmark)")
    for variant in order:
        plugins = doc["variants"][variant]["plugins"]
        for num, den, want in TARGETS:
            pn, pd = plugins.get(num, {}), plugins.get(den, {})
            t = {"variant": variant, "ratio_of": "%s / %s" % (num, den), "target": want}
            if pn.get("available") and pd.get("available"):
                ratio = pd["median_cpu_secs"] / pn["median_cpu_secs"]
                wall = pd["median_secs"] / pn["median_secs"]
                best = pd["min_cpu_secs"] / pn["min_cpu_secs"]
                t.update({"ratio": round(ratio, 2), "ratio_wall": round(wall, 2),
                          "ratio_best_cpu": round(best, 2),
                          "result": "PASS" if ratio >= want else "MISS"})
                out.append("  %-6s %-28s %5.2fx  [wall %5.2fx, best-run CPU %5.2fx]  (target >= %.1f)  %s"
                           % (variant, t["ratio_of"], ratio, wall, best, want, t["result"]))
            else:
                t.update({"ratio": None, "result": "UNAVAILABLE"})
                out.append("  %-6s %-28s   n/a   (target >= %.1f)  UNAVAILABLE (%s)"
                           % (variant, t["ratio_of"], want, doc["rtsub_note"] or "plugin not measured"))
            doc["targets"].append(t)
    if not all_ok:
        out.append("")
        out.append("WARNING: some output row counts do not match the workload (see 'rows check')")
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
    ap.add_argument("--results")
    ap.add_argument("--meta")
    ap.add_argument("--json")
    a = ap.parse_args()
    if a.check_msgpack:
        check_msgpack()
    else:
        report(a)


if __name__ == "__main__":
    main()
