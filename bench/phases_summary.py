"""Summary tables of one bench/phases.sh run, from the JSON lines otad-bench printed.

usage: phases_summary.py RESULTS.jsonl FILESYSTEM LOAD_AVERAGE
"""

import json
import os
import platform
import subprocess
import sys
import time

# RSA-2048 private-key operations each stage costs otad: phases 1 to 3 sign their profile;
# a PKCSReq decrypts the request (RA), signs the certificate (CA) and signs the CertRep (RA).
PRIVATE_OPERATIONS = {"caps": 0, "phase1": 1, "phase2": 1, "scep": 3, "phase3": 1}
# RSA public-key operations a stage cannot do without: phase 2 verifies the device's
# signature and its certificate's issuer; a PKCSReq verifies the message's signature, the
# signer's self-signed certificate and the CSR's signature, and encrypts the answer's key to
# the requester; phase 3 verifies the signature and that our CA issued the signer, and
# encrypts the profile's key to the device.
PUBLIC_OPERATIONS = {"caps": 0, "phase1": 0, "phase2": 2, "scep": 4, "phase3": 3}
STAGES = ["caps", "phase1", "phase2", "scep", "phase3"]


def ceiling(ops, two, caps, public_ms=0.0):
    """The share of its bound a stage could reach if it did nothing but HTTP (the caps stage
    at the same concurrency: server and driver CPU per request, on the same cores) and its
    private-key operations (each 2 / two core-seconds, as the bound counts them), plus
    `public_ms` of public-key operations."""
    if not ops or not two or not caps:
        return None
    http_ms = caps["server_cpu_ms_per_request"] + caps["driver_cpu_ms_per_request"]
    rsa_ms = ops * 2000 / two
    return rsa_ms / (rsa_ms + http_ms + public_ms)


def main(results, filesystem, load_average):
    rows = [json.loads(line) for line in open(results) if line.strip()]
    rsa = {r["threads"]: r for r in rows if "threads" in r}
    levels = [r for r in rows if r.get("kind") == "level"]
    curve = [r for r in rows if r.get("kind") == "curve"]
    memory = next((r for r in rows if r.get("memory")), None)
    two = rsa.get(2, {}).get("per_second", 0.0)
    rsa_cpu_ms = rsa.get(1, {}).get("cpu_us_per_signature", 0.0) / 1000
    verify = next((r for r in rows if "verify" in r), {})
    verify_ms = verify.get("cpu_us_per_verification", 0.0) / 1000

    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                if line.startswith("model name")), "?")
    revision = subprocess.run(["git", "describe", "--always", "--dirty"],
                              capture_output=True, text=True).stdout.strip()
    print()
    print(f"date: {time.strftime('%Y-%m-%d %H:%M %Z')}; machine: {os.cpu_count()} cores, "
          f"{cpu}, Linux {platform.release()}; state on {filesystem}; otad {revision or '?'}; "
          f"load average before the run {load_average}")
    print(f"RSA-2048 signatures/s (aws-lc-rs): 1 thread "
          f"{rsa.get(1, {}).get('per_second', 0):.0f}, 2 threads {two:.0f}; one costs "
          f"{rsa_cpu_ms * 1000:.1f} us of CPU; a verification {verify_ms * 1000:.1f} us")
    print()
    caps = {r["concurrency"]: r for r in levels if r["stage"] == "caps"}
    print("| stage | concurrency | per s | p50 ms | p99 ms | p99 limit ms | failures "
          "| bound per s | % of bound | HTTP+RSA ceiling | +public ceiling | server CPU ms "
          "| CPU / RSA ops | driver CPU ms |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in sorted(levels, key=lambda r: (STAGES.index(r["stage"]), r["concurrency"])):
        ops = PRIVATE_OPERATIONS[row["stage"]]
        bound = two / ops if two and ops else 0
        share = f"{100 * row['per_second'] / bound:.0f}%" if bound else "n/a"
        top = ceiling(ops, two, caps.get(row["concurrency"]))
        top = f"{100 * top:.0f}%" if top else "n/a"
        public_ms = PUBLIC_OPERATIONS[row["stage"]] * verify_ms
        floor = ceiling(ops, two, caps.get(row["concurrency"]), public_ms)
        floor = f"{100 * floor:.0f}%" if floor and verify_ms else "n/a"
        bound_text = f"{bound:.0f}" if bound else "n/a"
        # Fair queueing: a request waits for the C - 1 ahead of it, so p99 should stay
        # within 1.5 x C / throughput.
        limit = 1.5 * row["concurrency"] / row["per_second"] * 1000 if row["per_second"] else 0
        cpu_ratio = (f"{row['server_cpu_ms_per_request'] / (ops * rsa_cpu_ms):.2f}"
                     if rsa_cpu_ms and ops else "n/a")
        print(f"| {row['stage']} | {row['concurrency']} | {row['per_second']:.0f} "
              f"| {row['p50_ms']:.1f} | {row['p99_ms']:.1f} | {limit:.1f} "
              f"| {row['failures']}/{row['requests']} | {bound_text} | {share} | {top} "
              f"| {floor} | {row['server_cpu_ms_per_request']:.3f} | {cpu_ratio} "
              f"| {row['driver_cpu_ms_per_request']:.3f} |")
    print()
    print("HTTP+RSA ceiling: the share of its bound a stage would reach if it cost nothing but "
          "HTTP (the caps row: server and driver CPU per request, which share the cores) and "
          "its RSA-2048 private-key operations. +public ceiling: the same with the RSA "
          "public-key operations it cannot do without (phase 2: 2, PKCSReq: 4, phase 3: 3; "
          "the verification cost above), before any parsing, building or durable write.")

    if memory:
        print()
        print(f"otad RSS: idle {memory['idle_rss_kib'] / 1024:.1f} MiB; peak under the levels "
              f"{memory['peak_rss_kib_after_levels'] / 1024:.1f} MiB; peak of the whole run "
              f"{memory['peak_rss_kib'] / 1024:.1f} MiB; at the end "
              f"{memory['rss_kib_at_end'] / 1024:.1f} MiB. State: {memory['devices']} devices "
              f"in {memory['state_bytes'] / 1e6:.1f} MB, "
              f"{memory['state_bytes_per_1000_devices'] / 1e6:.1f} MB per 1,000 devices")

    if curve:
        print()
        print("Cost as the inventory grows (batches at one concurrency; requests/s and p99 ms "
              "per stage, server CPU ms per request):")
        print()
        print("| devices before | " + " | ".join(
            f"{s} per s | {s} p99 | {s} CPU" for s in STAGES[1:]) + " |")
        print("|---:|" + "---:|" * (3 * len(STAGES[1:])))
        by_batch = {}
        for row in curve:
            by_batch.setdefault(row["devices_before"], {})[row["stage"]] = row
        marks = sorted(by_batch)
        # The first batch, and every batch that starts at or past a power-of-ten step.
        shown = [m for i, m in enumerate(marks)
                 if i == 0 or i == len(marks) - 1 or len(str(m)) != len(str(marks[i - 1]))
                 or m // 1000 in (2, 5) and marks[i - 1] // 1000 != m // 1000]
        for mark in shown:
            cells = []
            for stage in STAGES[1:]:
                row = by_batch[mark].get(stage)
                cells += ([f"{row['per_second']:.0f}", f"{row['p99_ms']:.1f}",
                           f"{row['server_cpu_ms_per_request']:.3f}"] if row else ["", "", ""])
            print(f"| {mark} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    main(*sys.argv[1:])
