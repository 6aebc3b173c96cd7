#!/usr/bin/env python3
"""Sends one SIP request over UDP on loopback and prints its final reply.

Used by scripts/demo to talk to the example Kamailio:
    sip-message.py PORT USER [--header 'Name: value']... [--body TEXT] [--method M]
Exit status 0 when a final reply arrived, 1 on timeout.
"""
import argparse
import random
import socket
import sys


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("user")
    parser.add_argument("--method", default="MESSAGE")
    parser.add_argument("--header", action="append", default=[])
    parser.add_argument("--body", default="")
    parser.add_argument("--timeout", type=float, default=3.0)
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()

    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(args.timeout)
    local = sock.getsockname()[1]
    tag = "%08x" % random.getrandbits(32)
    call_id = "%016x@127.0.0.1" % random.getrandbits(64)
    body = args.body.encode()
    lines = [
        f"{args.method} sip:{args.user}@127.0.0.1:{args.port} SIP/2.0",
        f"Via: SIP/2.0/UDP 127.0.0.1:{local};branch=z9hG4bK{tag};rport",
        "Max-Forwards: 70",
        f"From: <sip:demo@127.0.0.1>;tag={tag}",
        f"To: <sip:{args.user}@127.0.0.1>",
        f"Call-ID: {call_id}",
        f"CSeq: 1 {args.method}",
        *args.header,
    ]
    if body:
        lines.append("Content-Type: text/plain")
    lines.append(f"Content-Length: {len(body)}")
    request = ("\r\n".join(lines) + "\r\n\r\n").encode() + body
    sock.sendto(request, ("127.0.0.1", args.port))
    try:
        while True:
            data = sock.recv(65536).decode(errors="replace")
            status = data.split("\r\n", 1)[0]
            if status.startswith("SIP/2.0 1"):
                continue
            break
    except socket.timeout:
        print(f"no reply from 127.0.0.1:{args.port}", file=sys.stderr)
        return 1
    if not args.quiet:
        head = data.split("\r\n\r\n", 1)[0].split("\r\n")
        print("  " + head[0])
        for line in head[1:]:
            if line.lower().startswith("x-"):
                print("    " + line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
