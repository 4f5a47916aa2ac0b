#!/usr/bin/env python3
"""A tiny DNS server for deploy/test-image.sh: proves that the static binary in the scratch
image resolves host names through DNS (nsswitch "dns" and /etc/resolv.conf), not only through
/etc/hosts.

    dns-stub.py ADDRESS PORT NAME=IPV4 [NAME=IPV4 ...]

Answers A queries for the given names, an empty NOERROR for their other record types (such
as the AAAA that getaddrinfo also asks), and NXDOMAIN for anything else. Prints "ready" once
bound, then one line per query ("query NAME TYPE"), flushed, so the test can count them.
Standard library only; UDP only; for a test network namespace, never a real network.
"""

import socket
import struct
import sys

TYPE_A = 1
CLASS_IN = 1


def parse_question(packet):
    """Returns (name, qtype, end offset of the question) of the first question."""
    labels = []
    offset = 12
    while True:
        length = packet[offset]
        offset += 1
        if length == 0:
            break
        labels.append(packet[offset:offset + length].decode("ascii", "replace"))
        offset += length
    qtype, _qclass = struct.unpack("!HH", packet[offset:offset + 4])
    return ".".join(labels).lower(), qtype, offset + 4


def answer(packet, names):
    ident, flags, qdcount = struct.unpack("!HHH", packet[:6])
    if qdcount != 1:
        return None, None, None
    name, qtype, end = parse_question(packet)
    question = packet[12:end]
    rd = flags & 0x0100
    address = names.get(name)
    if address is None:
        rcode, records = 3, b""
    elif qtype == TYPE_A:
        # A pointer to the question's name (offset 12), type A, class IN, TTL 5 s, 4 bytes.
        rcode = 0
        records = struct.pack("!HHHIH", 0xC00C, TYPE_A, CLASS_IN, 5, 4) + socket.inet_aton(address)
    else:
        rcode, records = 0, b""
    ancount = 1 if records else 0
    header = struct.pack("!HHHHHH", ident, 0x8000 | 0x0400 | rd | 0x0080 | rcode, 1, ancount, 0, 0)
    return header + question + records, name, qtype


def main():
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    address, port = sys.argv[1], int(sys.argv[2])
    names = {}
    for mapping in sys.argv[3:]:
        name, _, ipv4 = mapping.partition("=")
        names[name.lower().rstrip(".")] = ipv4
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((address, port))
    print("ready", flush=True)
    while True:
        packet, peer = sock.recvfrom(512)
        try:
            reply, name, qtype = answer(packet, names)
        except (IndexError, struct.error):
            continue
        if reply is None:
            continue
        print(f"query {name} {qtype}", flush=True)
        sock.sendto(reply, peer)


if __name__ == "__main__":
    main()
