#!/bin/sh
# Instructions a proxied request costs baton, counted by callgrind under
# the benchmark's own load: `baton serve` (1 worker, logs off) in front of
# one nginx worker answering "ok", driven by `wrk -t1 -c8`; counters
# zeroed after a 3 s warm-up, then instructions divided by wrk's request
# count. The method behind docs/benchmarks.md's "instructions a request".
# Usage: sh bench/callgrind.sh [baton binary] [seconds]
# (a binary built from another commit compares two builds on one machine).
# KEEP=DIR keeps the callgrind dumps there, for callgrind_annotate.
set -eu
cd "$(dirname "$0")/.."
BIN=${1:-./target/release/baton}
SECS=${2:-10}
for p in nginx wrk valgrind; do
    command -v $p >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq nginx wrk valgrind; break; }
done
[ "$BIN" = ./target/release/baton ] && cargo build --release -q
T=$(mktemp -d)
trap 'kill $(cat $T/*.pid 2>/dev/null) 2>/dev/null; sleep 0.5; rm -rf $T' EXIT

. bench/backend.sh
ok_backend $T 18090

baton_toml 18091 18090 1 > $T/baton.toml
valgrind --tool=callgrind --callgrind-out-file=$T/cg.out "$BIN" serve --config $T/baton.toml \
    2>$T/valgrind.err & echo $! > $T/baton.pid
i=0
until curl -s -o /dev/null http://127.0.0.1:18091/; do
    i=$((i + 1)); [ $i -gt 300 ] && { echo "baton did not start under valgrind" >&2; exit 1; }
    sleep 0.2
done
wrk -t1 -c8 -d3s http://127.0.0.1:18091/ > /dev/null     # warm-up
callgrind_control -z "$(cat $T/baton.pid)" > /dev/null
wrk -t1 -c8 -d${SECS}s http://127.0.0.1:18091/ > $T/wrk.out
callgrind_control -d "$(cat $T/baton.pid)" > /dev/null
sleep 1
python3 - "$T" <<'PY'
import glob, re, sys
t = sys.argv[1]
wrk = open(f"{t}/wrk.out").read()
n = int(re.search(r"(\d+) requests in", wrk).group(1))
non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", wrk)
dumps = [f for f in glob.glob(f"{t}/cg.out*") if f != f"{t}/cg.out"]
ir = 0
for f in dumps:  # one dump per thread with --separate-threads; summed
    m = re.search(r"^(?:summary|totals):\s+(\d+)", open(f).read(), re.M)
    ir += int(m.group(1)) if m else 0
print(f"requests {n}, non-2xx {non2xx.group(1) if non2xx else 0}, instructions {ir}, per request {ir / n:.0f}")
PY
[ -z "${KEEP:-}" ] || { mkdir -p "$KEEP"; cp $T/cg.out.* "$KEEP"/; }
