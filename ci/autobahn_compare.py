#!/usr/bin/env python3
"""Compares two Autobahn TestSuite fuzzingclient reports case by case.

    python3 ci/autobahn_compare.py DIRECT_REPORT_DIR GATEWAY_REPORT_DIR

Each directory is a fuzzingclient `outdir` (it holds index.json and one JSON report per
case). A case is worse through the gateway when its `behavior` or its `behaviorClose` ranks
below the direct run's, or when the gateway run lacks it. Prints a table of every worse case
with how each run ended for the client (the Close code and reason it received, whether the
connection closed cleanly and why not, the suite's verdict on the close), then a summary
line. Cases that
differ without ranking lower (INFORMATIONAL vs OK, or WRONG CODE vs UNCLEAN) are listed apart
and do not fail the comparison.

Exit status: 0 when no case is worse, 1 when some are, 2 on unusable input.
"""

import json
import sys
from pathlib import Path

# Best first. INFORMATIONAL cases have no verdict, so they rank with OK. A case missing
# from a report ranks below everything.
RANK = {
    "OK": 0,
    "INFORMATIONAL": 0,
    "NON-STRICT": 1,
    "UNIMPLEMENTED": 2,
    "WRONG CODE": 2,
    "UNCLEAN": 2,
    "FAILED": 3,
}
MISSING = 4


def rank(behavior):
    return RANK.get(behavior, MISSING) if behavior is not None else MISSING


def case_key(case_id):
    """Orders '7.9.10' after '7.9.9'."""
    return tuple(int(p) if p.isdigit() else p for p in case_id.split("."))


def load_index(report_dir):
    index_file = Path(report_dir) / "index.json"
    try:
        index = json.loads(index_file.read_text())
    except (OSError, ValueError) as e:
        sys.exit(f"autobahn_compare: cannot read {index_file}: {e}")
    if len(index) != 1:
        sys.exit(f"autobahn_compare: {index_file} holds {len(index)} agents, expected one")
    (agent, cases), = index.items()
    return agent, cases


def what_the_client_got(report_dir, entry):
    """The end of a case as the fuzzing client saw it, from the case's own report."""
    if entry is None:
        return "(no report)"
    try:
        case = json.loads((Path(report_dir) / entry["reportfile"]).read_text())
    except (OSError, ValueError, KeyError):
        return f"close {entry.get('remoteCloseCode')}"
    code = case.get("remoteCloseCode")
    reason = case.get("remoteCloseReason")
    parts = [f"close {code}" if code is not None else "no close"]
    if reason:
        parts.append(repr(reason))
    if not case.get("wasClean", True):
        parts.append(f"unclean: {case.get('wasNotCleanReason')}")
    if entry.get("behaviorClose") not in ("OK", "INFORMATIONAL"):
        parts.append(f"[suite: {case.get('resultClose')}]")
    return " ".join(parts)


def main(argv):
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    direct_dir, gateway_dir = argv[1], argv[2]
    direct_agent, direct = load_index(direct_dir)
    gateway_agent, gateway = load_index(gateway_dir)
    if not direct:
        sys.exit(f"autobahn_compare: {direct_dir} has no cases")

    worse, differ = [], []
    for case_id in sorted(set(direct) | set(gateway), key=case_key):
        d, g = direct.get(case_id), gateway.get(case_id)
        d_b = (d or {}).get("behavior"), (d or {}).get("behaviorClose")
        g_b = (g or {}).get("behavior"), (g or {}).get("behaviorClose")
        if d_b == g_b:
            continue
        row = (case_id, d_b, g_b, d, g)
        if rank(g_b[0]) > rank(d_b[0]) or rank(g_b[1]) > rank(d_b[1]):
            worse.append(row)
        else:
            differ.append(row)

    def table(title, rows):
        print(title)
        print(f"  {'case':<9} {'direct':<24} {gateway_agent:<24} direct client got | through the gateway client got")
        for case_id, d_b, g_b, d, g in rows:
            print(
                f"  {case_id:<9} {'/'.join(map(str, d_b)):<24} {'/'.join(map(str, g_b)):<24} "
                f"{what_the_client_got(direct_dir, d)} | {what_the_client_got(gateway_dir, g)}"
            )

    if differ:
        table(f"cases that differ but are not worse ({len(differ)}):", differ)
    if worse:
        table(f"cases worse through {gateway_agent} than {direct_agent} ({len(worse)}):", worse)
    print(
        f"autobahn: {len(direct)} cases direct, {len(gateway)} through {gateway_agent}; "
        f"{len(worse)} worse, {len(differ)} differ without being worse"
    )
    if worse:
        print("worse:", " ".join(row[0] for row in worse))
    return 1 if worse else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
