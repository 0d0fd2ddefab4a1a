#!/bin/sh
# A profile-guided build of baton (PGO): an instrumented build serves the
# benchmarks' own kinds of load for a while (HTTP/1.1 and HTTP/2 proxied
# to an nginx backend, static files, HTTPS with new and kept
# connections), its profile is merged, and the release build is made again
# using it. The result is target/pgo/release/baton; compare it with the
# plain build with `BATON=target/pgo/release/baton sh bench/run.sh ...`
# and `sh bench/callgrind.sh target/pgo/release/baton 5`.
# Usage: sh bench/pgo.sh [seconds of each load]
# PGO_DIR=DIR builds in DIR/pgo-gen and DIR/pgo instead of target/.
# Needs rustup's llvm-tools (llvm-profdata of the compiler's own LLVM;
# Debian's is older and cannot read the profile): added when missing.
set -eu
cd "$(dirname "$0")/.."
SECS=${1:-8}
DIR=${PGO_DIR:-target}
mkdir -p "$DIR" && DIR=$(cd "$DIR" && pwd)
for p in nginx wrk h2load openssl; do
    command -v $p >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq nginx wrk nghttp2-client openssl; break; }
done
SYSROOT=$(rustc --print sysroot)
PROFDATA=$(find "$SYSROOT" -name llvm-profdata -type f | head -1)
if [ -z "$PROFDATA" ]; then
    rustup component add llvm-tools
    PROFDATA=$(find "$SYSROOT" -name llvm-profdata -type f | head -1)
fi
T=$(mktemp -d)
trap 'kill $(cat $T/*.pid 2>/dev/null) 2>/dev/null; sleep 0.3; rm -rf $T' EXIT

echo "instrumented build ($DIR/pgo-gen)"
RUSTFLAGS="-Cprofile-generate=$DIR/pgo-data" cargo build --release -q --target-dir $DIR/pgo-gen
rm -rf $DIR/pgo-data

. bench/backend.sh
ok_backend $T 18180
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
    -keyout $T/site.key -out $T/site.crt -subj /CN=bench.test \
    -addext subjectAltName=DNS:bench.test,IP:127.0.0.1 2>/dev/null
mkdir -p $T/www/files
head -c 4096 /dev/urandom | base64 -w 100 | head -c 4096 > $T/www/files/app.css
head -c 102400 /dev/urandom > $T/www/files/photo.jpg
cat > $T/baton.toml <<CONF
[server]
listen = ["127.0.0.1:18181"]
listen_tls = ["127.0.0.1:18182"]
workers = 1
[log]
access = "off"
errors = "off"
[incidents]
dir = "off"
[[tls.certificates]]
cert = "$T/site.crt"
key = "$T/site.key"
[upstreams.be]
servers = ["127.0.0.1:18180"]
[upstreams.site]
protocol = "static"
root = "$T/www"
[[routes]]
path = "/files/"
upstream = "site"
[[routes]]
upstream = "be"
CONF
$DIR/pgo-gen/release/baton serve --config $T/baton.toml 2>$T/baton.err & echo $! > $T/baton.pid
i=0
until curl -s -o /dev/null http://127.0.0.1:18181/; do
    i=$((i + 1)); [ $i -gt 100 ] && { cat $T/baton.err >&2; exit 1; }
    sleep 0.1
done
for u in http://127.0.0.1:18181/ http://127.0.0.1:18181/files/app.css https://127.0.0.1:18182/; do
    [ "$(curl -sk -o /dev/null -w '%{http_code}' $u)" = 200 ] || { echo "$u does not answer 200" >&2; exit 1; }
done

echo "training: ${SECS} s of each load"
wrk -t2 -c64 -d${SECS}s http://127.0.0.1:18181/ > /dev/null
h2load -c16 -m16 -t1 -D $SECS http://127.0.0.1:18181/ > /dev/null 2>&1
wrk -t2 -c32 -d${SECS}s http://127.0.0.1:18181/files/app.css > /dev/null
wrk -t2 -c32 -d${SECS}s http://127.0.0.1:18181/files/photo.jpg > /dev/null
wrk -t2 -c64 -d${SECS}s https://127.0.0.1:18182/ > /dev/null 2>&1
wrk -t2 -c64 -d${SECS}s -H "Connection: close" https://127.0.0.1:18182/ > /dev/null 2>&1
h2load -c64 -m10 -t1 -D $SECS https://127.0.0.1:18182/ > /dev/null 2>&1
# A clean stop writes the profile.
kill -TERM $(cat $T/baton.pid)
while kill -0 $(cat $T/baton.pid) 2>/dev/null; do sleep 0.1; done
rm $T/baton.pid

"$PROFDATA" merge -o $DIR/baton.profdata $DIR/pgo-data
echo "profile-guided build ($DIR/pgo)"
RUSTFLAGS="-Cprofile-use=$DIR/baton.profdata" cargo build --release -q --target-dir $DIR/pgo
echo "$DIR/pgo/release/baton"
