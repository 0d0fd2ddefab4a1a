#!/bin/sh
# Compression cost: baton (compress = true, gzip level 5) vs nginx (gzip on,
# gzip_comp_level 5) in front of the same backend serving a 20 KB HTML page,
# clients asking for gzip; and each without compression, for the cost.
# Usage: sh bench/compress.sh [workers] [seconds]
set -eu
cd "$(dirname "$0")/.."
. bench/backend.sh
WORKERS=${1:-1}
SECS=${2:-8}
bench_setup "nginx wrk" "nginx wrk"
# An article-like page: words drawn from a vocabulary (seeded), so it
# compresses about as much as real HTML (to ~30 %), not to nothing.
python3 - > $T/page.html <<'PY'
import random
random.seed(7)
words = [''.join(random.choice('abcdefghijklmnopqrstuvwxyz') for _ in range(random.randint(2, 9))) for _ in range(3000)]
out = ['<!doctype html><html><head><title>bench</title></head><body>']
while sum(map(len, out)) < 20000:
    out.append('<p class="c%d">' % random.randint(0, 9) + ' '.join(random.choice(words) for _ in range(25)) + '.</p>\n')
out.append('</body></html>')
print(''.join(out))
PY
# nginx's workers (nobody) read the page.
chmod 755 $T && chmod 644 $T/page.html
cat > $T/backend.conf <<CONF
worker_processes 1; daemon off; pid $T/backend.nginxpid; error_log $T/backend.err;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000; types { text/html html; } default_type text/html;
  server { listen 127.0.0.1:18090 backlog=4096; root $T; location / { try_files /page.html =404; } } }
CONF
nginx -c $T/backend.conf & echo $! > $T/backend.pid
cat > $T/nginx.conf <<CONF
worker_processes $WORKERS; daemon off; pid $T/proxy.nginxpid; error_log $T/nginx.err;
events { worker_connections 4096; }
http { access_log off;
  upstream be { server 127.0.0.1:18090; keepalive 128; }
  server { listen 127.0.0.1:18091; gzip on; gzip_comp_level 5; gzip_types text/html; gzip_proxied any;
    location / { proxy_pass http://be; proxy_http_version 1.1; proxy_set_header Connection ""; } }
  server { listen 127.0.0.1:18092;
    location / { proxy_pass http://be; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
CONF
nginx -c $T/nginx.conf & echo $! > $T/nginx.pid
for v in 18093:true 18094:false; do
    cat > $T/baton-${v%%:*}.toml <<CONF
[server]
listen = ["127.0.0.1:${v%%:*}"]
workers = $WORKERS
[log]
access = "off"
errors = "off"
[incidents]
dir = "off"
[upstreams.be]
servers = ["127.0.0.1:18090"]
[[routes]]
upstream = "be"
compress = ${v#*:}
CONF
    "$BIN" serve --config $T/baton-${v%%:*}.toml 2>$T/baton.err & echo $! > $T/baton-${v%%:*}.pid
done
sleep 1
rps() { wrk -t2 -c32 -d${SECS}s -H "Accept-Encoding: gzip" http://127.0.0.1:$1/ | sed -n 's/^Requests\/sec:[[:space:]]*\([0-9.]*\).*/\1/p'; }
size() { curl -s -H "Accept-Encoding: gzip" http://127.0.0.1:$1/ | wc -c; }
[ "$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:18090/)" = 200 ] || { echo "the backend does not serve the page" >&2; exit 1; }
for p in 18091 18092 18093 18094; do wrk -t2 -c32 -d2s -H "Accept-Encoding: gzip" http://127.0.0.1:$p/ >/dev/null; done
NG=$(rps 18091); NP=$(rps 18092); BG=$(rps 18093); BP=$(rps 18094)
echo "page $(wc -c < $T/page.html) bytes; gzip level 5; workers=$WORKERS duration=${SECS}s wrk -t2 -c32"
echo "nginx gzip   $NG req/s, $(size 18091) bytes sent"
echo "nginx plain  $NP req/s"
echo "baton gzip   $BG req/s, $(size 18093) bytes sent"
echo "baton plain  $BP req/s"
python3 -c "print(f'baton/nginx with gzip: {$BG/$NG:.2f}x; gzip costs nginx {1-$NG/$NP:.0%} of its throughput, baton {1-$BG/$BP:.0%}')"
