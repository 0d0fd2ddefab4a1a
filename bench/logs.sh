#!/bin/sh
# How fast `baton logs` reads: N lines of an nginx access log plus the
# error log for its failures (1% of requests fail; an outage burst of 20 000
# 502s in one minute), against `awk` counting the 5xx lines, the floor of
# any log reader that looks at fields. Prints lines per second and the ratio.
#
#   sh bench/logs.sh [LINES]        (default 1 000 000)
set -eu
cd "$(dirname "$0")/.."
lines=${1:-1000000}
cargo build --release -q
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT

python3 - "$dir" "$lines" <<'EOF'
import random, sys, time
d, n = sys.argv[1], int(sys.argv[2])
random.seed(7)
paths = ["/", "/api/orders", "/cart/add", "/checkout", "/static/app.js"] + [f"/p/{i}" for i in range(2000)]
t0 = 1795168800  # 2026-11-20 10:00:00 UTC
burst = (t0 + 1800, t0 + 1860)
with open(f"{d}/access.log", "w") as a, open(f"{d}/error.log", "w") as e:
    for i in range(n):
        t = t0 + i * 3600 // n
        p = random.choice(paths)
        fail = random.random() < 0.01 or (burst[0] <= t < burst[1] and i % 3 == 0)
        st = 502 if fail else 200
        tm = time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(t))
        a.write(f'203.0.113.{i % 250} - - [{tm}] "GET {p} HTTP/1.1" {st} 157 "-" "curl/8"\n')
        if fail:
            te = time.strftime("%Y/%m/%d %H:%M:%S", time.gmtime(t))
            e.write(f'{te} [error] 815#815: *{i} upstream prematurely closed connection while reading response header from upstream, client: 203.0.113.{i % 250}, server: shop.example, request: "GET {p} HTTP/1.1", upstream: "http://127.0.0.1:8000{p}", host: "shop.example"\n')
EOF

total=$(cat "$dir/access.log" "$dir/error.log" | wc -l)
now() { date +%s.%N; }
t=$(now); ./target/release/baton logs --json "$dir/error.log" "$dir/access.log" > "$dir/out.json" || true; baton=$(echo "$(now) - $t" | bc)
t=$(now); awk '$9 ~ /^50[234]$/ {n++} END {print n}' "$dir/access.log" > /dev/null; awk=$(echo "$(now) - $t" | bc)
failures=$(python3 -c "import json,sys; d=json.load(open('$dir/out.json')); print(d['failures'], 'failures,', d['unclassified'], 'unclassified,', sum(1 for l in d['lines'] if 'joined_to' in l), 'access lines joined')")

rate() { echo "$total / $1" | bc; }
echo "lines: $total ($failures)"
printf '%-8s %8.2f s %12s lines/s\n' baton "$baton" "$(rate "$baton")" awk "$awk" "$(rate "$awk")"
echo "baton/awk time: $(echo "scale=1; $baton / $awk" | bc)x"
