"""Summary table of one bench/scep.sh run, from the JSON lines otad-bench printed.

usage: summary.py RESULTS.jsonl SCEPSERVER_VERSION FILESYSTEM LOAD_AVERAGE
"""

import json
import os
import platform
import subprocess
import sys
import time

# A PKCSReq costs otad three RSA-2048 private-key operations: decrypting the request (RA),
# signing the certificate (CA) and signing the CertRep (RA).
PRIVATE_OPERATIONS_PER_PKCSREQ = 3


def main(results, scepserver_version, filesystem, load_average):
    rows = [json.loads(line) for line in open(results) if line.strip()]
    load = {(r["server"], r["concurrency"]): r for r in rows
            if "server" in r and r.get("stage") != "caps"}
    caps = {(r["server"], r["concurrency"]): r for r in rows if r.get("stage") == "caps"}
    rsa = {r["threads"]: r["per_second"] for r in rows if "threads" in r}
    # CPU time of one RSA-2048 signature on one thread, the unit server CPU is measured in.
    rsa_cpu_ms = next((r["cpu_us_per_signature"] / 1000 for r in rows
                       if r.get("threads") == 1 and "cpu_us_per_signature" in r), None)

    cpu = next(
        (line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
         if line.startswith("model name")),
        "?",
    )
    revision = subprocess.run(
        ["git", "describe", "--always", "--dirty"], capture_output=True, text=True
    ).stdout.strip()
    print()
    print(f"date: {time.strftime('%Y-%m-%d %H:%M %Z')}; machine: {os.cpu_count()} cores, "
          f"{cpu}, Linux {platform.release()}; state on {filesystem}; otad {revision or '?'}; "
          f"scepserver {scepserver_version}; load average before the run {load_average}")

    modes = sorted({r.get("connections", "close") for r in load.values()})
    print(f"connections: {', '.join(modes)} (reuse: keep-alive, one connection per client "
          f"thread; close: one connection per request)")
    one, two = rsa.get(1, 0.0), rsa.get(2, 0.0)
    bound = two / PRIVATE_OPERATIONS_PER_PKCSREQ
    print(f"RSA-2048 signatures/s (aws-lc-rs): 1 thread {one:.0f}, 2 threads {two:.0f}; "
          f"bound at {PRIVATE_OPERATIONS_PER_PKCSREQ} private operations per PKCSReq: "
          f"{bound:.0f} PKCSReq/s")
    if rsa_cpu_ms:
        print(f"CPU per RSA-2048 signature (1 thread): {rsa_cpu_ms * 1000:.1f} us; "
              f"{PRIVATE_OPERATIONS_PER_PKCSREQ} of them: "
              f"{PRIVATE_OPERATIONS_PER_PKCSREQ * rsa_cpu_ms:.3f} ms")
    print()
    print("| concurrency | server | issued/s | p50 ms | p99 ms | failures "
          "| otad/scepserver | otad % of bound | HTTP+RSA ceiling | server CPU ms/issued "
          "| CPU / 3 RSA ops | driver CPU ms/request | GetCACaps/s | HTTP CPU ms |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for concurrency in sorted({c for _, c in load}):
        otad = load.get(("otad", concurrency))
        scepserver = load.get(("scepserver", concurrency))
        for name, row in (("otad", otad), ("scepserver", scepserver)):
            if not row:
                continue
            ratio = share = top = ""
            floor = caps.get((name, concurrency))
            http_ms = (floor["server_cpu_ms_per_request"] + floor["driver_cpu_ms_per_request"]
                       if floor and floor.get("server_cpu_ms_per_request") is not None
                       else None)
            if name == "otad":
                if http_ms is not None and two:
                    rsa_ms = PRIVATE_OPERATIONS_PER_PKCSREQ * 2000 / two
                    top = f"{100 * rsa_ms / (rsa_ms + http_ms):.0f}%"
                theirs = scepserver["issued_per_second"] if scepserver else 0
                ratio = f"{otad['issued_per_second'] / theirs:.2f}" if theirs else "n/a"
                share = f"{100 * otad['issued_per_second'] / bound:.0f}%" if bound else "n/a"
            server_cpu = row.get("server_cpu_ms_per_issued")
            cpu = f"{server_cpu:.3f}" if server_cpu is not None else "n/a"
            cpu_ratio = (f"{server_cpu / (PRIVATE_OPERATIONS_PER_PKCSREQ * rsa_cpu_ms):.2f}"
                         if server_cpu is not None and rsa_cpu_ms else "n/a")
            driver = row.get("driver_cpu_ms_per_request")
            driver = f"{driver:.3f}" if driver is not None else "n/a"
            floor_cells = (f"{floor['per_second']:.0f} | {http_ms:.3f}"
                           if http_ms is not None else "n/a | n/a")
            print(f"| {concurrency} | {name} | {row['issued_per_second']:.1f} "
                  f"| {row['p50_ms']:.1f} | {row['p99_ms']:.1f} "
                  f"| {row['failures']}/{row['requests']} | {ratio} | {share} | {top} "
                  f"| {cpu} | {cpu_ratio} | {driver} | {floor_cells} |")
    print()
    print("HTTP+RSA ceiling: the share of the bound otad would reach if a PKCSReq cost nothing "
          "but HTTP (GetCACaps at the same concurrency, ten per PKCSReq: server and driver CPU "
          "per request, which share the cores; HTTP CPU ms) and its three RSA-2048 "
          "private-key operations.")

if __name__ == "__main__":
    if len(sys.argv) != 5:
        sys.exit(__doc__)
    main(*sys.argv[1:])
