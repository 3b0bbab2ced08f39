#!/usr/bin/env python3
"""Measures what one webhook held by ingest costs in memory (docs/scaling.md).

Starts nats-server and ingest (the release binary, target/release/pushline-ingest) on
loopback, stops nats-server with SIGSTOP once the EVENTS stream exists (a stalled store:
publishes are not acked and ingest holds every webhook while it retries), sends --count
signed call webhooks at --rate per second, each on a connection of its own, waits until
ingest has them all, and prints ingest's resident memory before and with them held, and
the difference per webhook. Then resumes nats-server and counts the answers (200 for
every webhook unless the rate outran max_in_flight within the ack budget, which is an
overload and refused).

  cargo build --release --bin pushline-ingest
  deploy/local/measure-held.py [--count 2000] [--rate 500]

Needs nats-server on PATH (Debian: /usr/sbin).
"""
import argparse
import asyncio
import hashlib
import hmac
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

SECRET = "measure-held-secret"
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def body(n, deadline_ms):
    apns = '{"aps":{},"callId":"held-%d","ringexpiretime":%d}' % (n, deadline_ms)
    fcm = '{"type":"incoming_call","callId":"held-%d"}' % n
    return ('{"id":"Y2lzY29zcGFyazovL3VzL1dFQkhPT0svMQ","name":"Webex Calling firehose",'
            '"targetUrl":"https://example.com/webhooks/webex","resource":"telephony_push",'
            '"event":"updated","orgId":"Y2lzY29zcGFyazovL3VzL09SR0FOSVpBVElPTi8x",'
            '"createdBy":"admin","appId":"app","ownedBy":"org","status":"active",'
            '"created":"2026-11-22T10:00:00.000Z","actorId":"held-person-%d",'
            '"data":{"apnsPayload":%s,"fcmPayload":%s}}' % (n, apns, fcm)).encode()


async def send(port, payload):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    signature = hmac.new(SECRET.encode(), payload, hashlib.sha1).hexdigest()
    writer.write(b"POST /webhooks/webex HTTP/1.1\r\nHost: ingest\r\n"
                 b"Content-Type: application/json\r\nConnection: close\r\n"
                 + f"X-Spark-Signature: {signature}\r\nContent-Length: {len(payload)}\r\n\r\n".encode()
                 + payload)
    await writer.drain()
    status = await reader.readline()
    rest = await reader.read(4096)
    writer.close()
    code = int(status.split()[1]) if status else 0
    if code == 503 and b"overloaded" not in rest:
        return 5031
    return code


def held_count(admin):
    """Publish retries counted by ingest so far (one per held webhook's retry)."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=2).read().decode()
    return sum(float(l.rsplit(" ", 1)[1]) for l in text.splitlines()
               if l.startswith("pushline_retries_total{") and 'reason="publish"' in l)


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--rate", type=float, default=500.0)
    args = parser.parse_args()
    binary = os.path.join(ROOT, "target", "release", "pushline-ingest")
    nats_bin = shutil.which("nats-server") or "/usr/sbin/nats-server"
    work = tempfile.mkdtemp()
    nats_port, api, admin = free_port(), free_port(), free_port()
    nats = subprocess.Popen([nats_bin, "-js", "-a", "127.0.0.1", "-p", str(nats_port),
                             "-sd", work], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    config = os.path.join(work, "ingest.toml")
    with open(config, "w") as f:
        f.write(f'listen = "127.0.0.1:{api}"\nadmin_listen = "127.0.0.1:{admin}"\n'
                f'[webex]\nsecrets = ["{SECRET}"]\n[nats]\nurl = "nats://127.0.0.1:{nats_port}"\n'
                f'publish_retry_budget_ms = 60000\ntracking = false\n'
                f'[telemetry]\nfilter = "error"\n')
    ingest = subprocess.Popen([binary, "--config", config], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                if urllib.request.urlopen(f"http://127.0.0.1:{admin}/readyz", timeout=1).status == 200:
                    break
            except Exception:
                time.sleep(0.1)
        # Warm up: the first requests allocate what every later one reuses.
        deadline = int(time.time() * 1000) + 600_000
        warm = await asyncio.gather(*(send(api, body(-n - 1, deadline)) for n in range(200)))
        assert all(s == 200 for s in warm), warm
        before = rss_kib(ingest.pid)
        os.kill(nats.pid, signal.SIGSTOP)
        tasks = []
        started = time.monotonic()
        for n in range(args.count):
            due = started + n / args.rate
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            tasks.append(asyncio.ensure_future(send(api, body(n, deadline))))
        # Every webhook is held once each has failed its first try (nats.publish_timeout_ms,
        # 2 s, after it was sent) and counted a retry.
        for _ in range(600):
            await asyncio.sleep(0.1)
            if held_count(admin) >= args.count:
                break
        await asyncio.sleep(2.5)
        held = rss_kib(ingest.pid)
        print(f"ingest RSS before {before} KiB, with {args.count} webhooks held {held} KiB: "
              f"{(held - before) * 1024 / args.count:.0f} bytes per held webhook "
              f"(body {len(body(0, deadline))} bytes)")
        os.kill(nats.pid, signal.SIGCONT)
        statuses = await asyncio.gather(*tasks)
        answers = {}
        for status in statuses:
            answers[status] = answers.get(status, 0) + 1
        print("answers by status (0: no answer):", dict(sorted(answers.items())))
    finally:
        os.kill(nats.pid, signal.SIGCONT)
        for p in (ingest, nats):
            p.kill()
            p.wait()
        shutil.rmtree(work, ignore_errors=True)


asyncio.run(main())
