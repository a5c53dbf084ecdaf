"""Merges the TRIAL lines of several chaos streams' outputs (bench/chaos-long.sh) into one table:
trials, passes and failures per fault, failure categories, and fault-to-completion latency."""
import collections
import math
import re
import sys

FAULTS = ["KILL9", "STOP_PAST_TIMEOUT_THEN_CONT", "NETCUT"]
counts = collections.OrderedDict((f, [0, 0]) for f in FAULTS)
cats = collections.Counter()
lat = collections.defaultdict(list)
seconds = []
failed = []
for path in sys.argv[1:]:
    cur, seen = None, set()
    for line in open(path, errors="replace"):
        m = re.match(r"TRIAL \d+/\d+ (PASS|FAIL) ([\d.]+)s latency=(-?\d+)ms (.*fault=(\S+) .*timeout_ms=(\d+).*)", line)
        if m:
            st, secs, l, desc, f, to = m.group(1), float(m.group(2)), int(m.group(3)), m.group(4), m.group(5), int(m.group(6))
            counts.setdefault(f, [0, 0])
            counts[f][0] += 1
            seconds.append(secs)
            if st == "PASS":
                counts[f][1] += 1
            else:
                failed.append(path + ": " + desc)
            if l >= 0:
                lat[f].append(l - (0 if f == "KILL9" else to))
            cur, seen = (f if st == "FAIL" else None), set()
            continue
        m = re.match(r"  ([a-z-]+): ", line)
        if m and cur and m.group(1) not in seen:
            seen.add(m.group(1))
            cats[(cur, m.group(1))] += 1


def pct(s, p):
    return s[max(0, min(len(s) - 1, math.ceil(p / 100 * len(s)) - 1))]


print("%-30s %7s %7s %7s" % ("fault", "trials", "passed", "failed"))
total = [0, 0]
for f, c in counts.items():
    if c[0]:
        print("%-30s %7d %7d %7d" % (f, c[0], c[1], c[0] - c[1]))
        total[0] += c[0]
        total[1] += c[1]
print("%-30s %7d %7d %7d" % ("all", total[0], total[1], total[0] - total[1]))
if seconds:
    print("trial duration: median %.1f s, max %.1f s" % (pct(sorted(seconds), 50), max(seconds)))
if cats:
    print("failures by category (a trial may count in several):")
    for (f, c), n in sorted(cats.items()):
        print("  %-50s %5d" % (f + " " + c, n))
    for d in failed[:20]:
        print("  failed: " + d)
print("latency from the fault until every survivor completed the operation in flight (ms):")
print("  %-44s %6s %8s %8s %8s" % ("", "n", "median", "p99", "max"))
for f in counts:
    s = sorted(lat[f])
    if s:
        name = "KILL9 detection" if f == "KILL9" else f + " hung peer, minus the timeout"
        print("  %-44s %6d %8d %8d %8d" % (name, len(s), pct(s, 50), pct(s, 99), s[-1]))
sys.exit(0 if total[0] and total[0] == total[1] else 1)
