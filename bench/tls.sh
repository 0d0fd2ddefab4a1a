#!/bin/sh
# HTTPS: baton vs nginx vs HAProxy terminating TLS with the same
# certificate (ECDSA P-256) and worker count, in front of the same nginx
# backend, in one run.
# Usage: sh bench/tls.sh [workers] [seconds]
# Measures, per proxy:
#   handshakes/s  new TLS connections, one request each (wrk with
#                 "Connection: close": a full handshake per request)
#   h1 req/s      HTTPS keep-alive, HTTP/1.1 (wrk -t2 -c64)
#   h2 req/s      HTTP/2 over TLS, 64 connections x 10 streams (h2load)
#   us/handshake  the proxy's CPU (user + system, all its processes) per
#                 handshake during the handshakes/s run: what a handshake
#                 costs, apart from how the shared cores were scheduled
# and prints baton's ratios to each peer.
# nginx is given `ssl_protocols TLSv1.2 TLSv1.3`, its default since 1.23.4
# (Debian's 1.22 offers no TLS 1.3 unless told): without it, wrk's
# reconnections resume TLS 1.2 sessions, with no key exchange at all,
# against baton's and HAProxy's TLS 1.3, whose resumption keeps its X25519
# exchange (forward secrecy). Before the rounds, each proxy's protocol and
# whether it resumes a session (`openssl s_client -sess_out`, then
# `-sess_in`) are printed.
# Usage: sh bench/tls.sh [workers] [seconds] [rounds]
# Each round measures the three one after another, in an order that turns
# by one each round (`turned`, bench/backend.sh): the handshake runs leave
# tens of thousands of connections in TIME_WAIT. The report gives the
# medians over the rounds.
set -eu
cd "$(dirname "$0")/.."
WORKERS=${1:-1}
SECS=${2:-10}
ROUNDS=${3:-1}
for p in nginx haproxy wrk h2load; do
    command -v $p >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq nginx haproxy wrk nghttp2-client; break; }
done
BIN=${BATON:-./target/release/baton}
[ -n "${BATON:-}" ] || cargo build --release -q
T=$(mktemp -d)
trap 'kill $(cat $T/*.pid 2>/dev/null) 2>/dev/null; sleep 0.3; rm -rf $T' EXIT
. bench/backend.sh
ok_backend $T 18080

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
    -keyout $T/site.key -out $T/site.crt -subj /CN=bench.test \
    -addext subjectAltName=DNS:bench.test,IP:127.0.0.1 2>/dev/null
cat $T/site.crt $T/site.key > $T/site.pem

cat > $T/nginx.conf <<CONF
worker_processes $WORKERS; daemon off; pid $T/proxy.nginxpid; error_log $T/nginx.err;
events { worker_connections 4096; }
http { access_log off;
  upstream be { server 127.0.0.1:18080; keepalive 128; keepalive_requests 1000000; }
  server { listen 127.0.0.1:18441 ssl http2 backlog=4096; keepalive_requests 1000000;
    ssl_certificate $T/site.crt; ssl_certificate_key $T/site.key;
    ssl_protocols TLSv1.2 TLSv1.3;
    location / { proxy_pass http://be; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
CONF
nginx -c $T/nginx.conf & echo $! > $T/nginx.pid

haproxy_cfg $WORKERS 18080 "bind 127.0.0.1:18442 ssl crt $T/site.pem alpn h2,http/1.1" > $T/haproxy.cfg
haproxy -f $T/haproxy.cfg > $T/haproxy.out 2>&1 & echo $! > $T/haproxy.pid

baton_toml 18083 18080 $WORKERS "listen_tls = [\"127.0.0.1:18443\"]" 'access = "off"' "[[tls.certificates]]
cert = \"$T/site.crt\"
key = \"$T/site.key\"" > $T/baton.toml
"$BIN" serve --config $T/baton.toml 2>$T/baton.err & echo $! > $T/baton.pid
sleep 1

TARGETS="nginx:18441 haproxy:18442 baton:18443"
rps() { sed -n 's/^Requests\/sec:[[:space:]]*\([0-9.]*\).*/\1/p' "$1"; }
hs_requests() { sed -n 's/^ *\([0-9]*\) requests in.*/\1/p' "$1"; }
: > $T/results
for n in $TARGETS; do
    wrk -t2 -c64 -d3s https://127.0.0.1:${n#*:}/ >/dev/null 2>&1   # warm-up
    sleep 0.5 | openssl s_client -connect 127.0.0.1:${n#*:} -sess_out $T/sess > $T/first.out 2>&1 || true
    sleep 0.5 | openssl s_client -connect 127.0.0.1:${n#*:} -sess_in $T/sess > $T/again.out 2>&1 || true
    echo "${n%%:*}: $(grep -m1 -o '^New, [^,]*' $T/first.out), reconnecting: $(grep -m1 -o '^\(New\|Reused\), [^,]*' $T/again.out)"
done
r=1
while [ $r -le $ROUNDS ]; do
    for n in $(turned $r $TARGETS); do
        name=${n%%:*}; port=${n#*:}
        c0=$(cpu_ticks $(cat $T/$name.pid))
        wrk -t2 -c32 -d${SECS}s -H "Connection: close" https://127.0.0.1:$port/ > $T/hs.out 2>&1
        c1=$(cpu_ticks $(cat $T/$name.pid))
        us=$(python3 -c "print(($c1 - $c0) / $(getconf CLK_TCK) * 1e6 / $(hs_requests $T/hs.out))")
        wrk -t2 -c64 -d${SECS}s https://127.0.0.1:$port/ > $T/h1.out 2>&1
        h2load -c64 -m10 -t2 -D $SECS https://127.0.0.1:$port/ > $T/h2.out 2>&1
        echo "$name $(rps $T/hs.out) $(rps $T/h1.out) $(h2load_result $T/h2.out) $us" >> $T/results
    done
    r=$((r + 1))
done
python3 - "$T/results" "$WORKERS" "$SECS" "$ROUNDS" <<'PY'
import sys, statistics as st
by = {}
for l in open(sys.argv[1]):
    by.setdefault(l.split()[0], []).append([float(x) for x in l.split()[1:]])
rows = {n: [st.median(v[i] for v in runs) for i in range(5)] for n, runs in by.items()}
print(f"workers={sys.argv[2]} duration={sys.argv[3]}s rounds={sys.argv[4]} (medians), ECDSA P-256, TLS 1.3")
print(f"{'proxy':<9} {'handshakes/s':>13} {'h1 req/s':>10} {'h2 req/s':>10} {'h2 2xx':>9} {'us/handshake':>13}")
for n, (hs, h1, h2, ok, us) in rows.items():
    print(f"{n:<9} {hs:>13.0f} {h1:>10.0f} {h2:>10.0f} {ok:>9.0f} {us:>13.0f}")
b = rows["baton"]
for peer in ("nginx", "haproxy"):
    p = rows[peer]
    print(f"baton/{peer}: handshakes {b[0]/p[0]:.2f}x, h1 {b[1]/p[1]:.2f}x, h2 {b[2]/p[2]:.2f}x, CPU a handshake {b[4]/p[4]:.2f}x")
PY
