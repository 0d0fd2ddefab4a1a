"""Memory per idle client connection, and a normal client's latency while
they are held: the measuring half of bench/conns.sh.

Usage: python3 bench/idle.py PORT PIDS MODE N
  MODE h1:        one HTTP/1.1 request, answered, then the connection idles
  MODE h2:        HTTP/2 preface, SETTINGS, one request answered, then idle
  MODE slowloris: part of an HTTP/1.1 head, then nothing
  MODE https:     TLS 1.3, one HTTP/1.1 request answered, then idle
  PIDS: comma-separated pids whose RSS is summed (nginx: master and worker)
Prints one line: mode, connections held, KB of RSS per connection, and
the latency (p50, p99 ms) and successes of 200 requests made meanwhile on
the same port (fresh connections, HTTP/1.1; for h2 and https, on the h1
port given as H1PORT in the environment).
"""

import asyncio
import os
import socket
import ssl
import statistics
import sys
import time

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def frame(kind, flags, stream, payload=b""):
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big") + payload


def rss_kb(pids):
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total


async def h1(port, tls=None):
    r, w = await asyncio.open_connection("127.0.0.1", port, ssl=tls)
    w.write(b"GET / HTTP/1.1\r\nHost: b\r\n\r\n")
    await w.drain()
    got = b""
    while b"ok\n" not in got:
        chunk = await r.read(4096)
        if not chunk:
            raise ConnectionError("closed")
        got += chunk
    return w


# One context for every connection (each would load the CA store).
TLS = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
TLS.check_hostname = False
TLS.verify_mode = ssl.CERT_NONE


async def https(port):
    return await h1(port, TLS)


async def h2(port):
    r, w = await asyncio.open_connection("127.0.0.1", port)
    # :method GET, :scheme http, :path /, :authority b
    block = bytes([0x82, 0x86, 0x84, 0x01, 0x01]) + b"b"
    w.write(PREFACE + frame(4, 0, 0) + frame(1, 0x5, 1, block))
    await w.drain()
    got = b""
    acked = False
    while True:
        chunk = await r.read(4096)
        if not chunk:
            raise ConnectionError("closed")
        got += chunk
        at, done = 0, False
        while at + 9 <= len(got):
            n = int.from_bytes(got[at:at + 3], "big")
            kind, flags = got[at + 3], got[at + 4]
            stream = int.from_bytes(got[at + 5:at + 9], "big") & 0x7FFFFFFF
            if at + 9 + n > len(got):
                break
            if kind == 4 and not flags & 1 and not acked:
                w.write(frame(4, 1, 0))
                acked = True
            if stream == 1 and flags & 1 and kind in (0, 1):
                done = True
            at += 9 + n
        if done:
            return w


async def slowloris(port):
    _, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(b"GET / HTTP/1.1\r\nHost: b\r\nX-a: ")
    await w.drain()
    return w


def one_request(port):
    start = time.perf_counter()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n")
            got = b""
            while True:
                chunk = s.recv(4096)
                if not chunk:
                    break
                got += chunk
        ok = got.startswith(b"HTTP/1.1 200")
    except OSError:
        ok = False
    return ok, (time.perf_counter() - start) * 1000


async def main():
    port, pids, mode, n = int(sys.argv[1]), [int(p) for p in sys.argv[2].split(",")], sys.argv[3], int(sys.argv[4])
    open_one = {"h1": h1, "h2": h2, "slowloris": slowloris, "https": https}[mode]
    before = rss_kb(pids)
    held = []
    for i in range(0, n, 500):
        held += await asyncio.gather(*(open_one(port) for _ in range(min(500, n - i))))
    await asyncio.sleep(2)
    after = rss_kb(pids)
    probe = int(os.environ.get("H1PORT", port))
    times, ok = [], 0
    for _ in range(200):
        good, ms = await asyncio.to_thread(one_request, probe)
        ok += good
        times.append(ms)
    times.sort()
    p50, p99 = statistics.median(times), times[int(len(times) * 0.99) - 1]
    print(f"{mode:<10} {len(held):>6} {(after - before) / len(held):>8.2f} {p50:>8.2f} {p99:>8.2f} {ok:>5}/200")
    for w in held:
        w.close()


asyncio.run(main())
