#!/usr/bin/env python3
"""Writes the checked-in seed corpora fuzz/corpus/<target>/ from the golden
bytes of tests/wire_golden.rs (the 15 control messages, enhanced GRE with and
without sequence and acknowledgement numbers) and small valid documents.
Run from anywhere: python3 fuzz/seeds.py (it replaces the seed files it
writes, and leaves other files alone)."""

import json
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "corpus")
REPO = os.path.dirname(HERE)

# (first 16 bytes, as in tests/wire_golden.rs MESSAGES)
GOLDEN = [
    "009c 0001 1a2b3c4d 0001 0000 0100 0000",
    "009c 0001 1a2b3c4d 0002 0000 0100 0100",
    "0010 0001 1a2b3c4d 0003 0000 0100 0000",
    "0010 0001 1a2b3c4d 0004 0000 0100 0000",
    "0010 0001 1a2b3c4d 0005 0000 0000 0001",
    "0014 0001 1a2b3c4d 0006 0000 0000 0001",
    "00a8 0001 1a2b3c4d 0007 0000 4000 0042",
    "0020 0001 1a2b3c4d 0008 0000 0777 4001",
    "00dc 0001 1a2b3c4d 0009 0000 0aaa 0001",
    "0018 0001 1a2b3c4d 000a 0000 4010 0aaa",
    "001c 0001 1a2b3c4d 000b 0000 4011 0000",
    "0010 0001 1a2b3c4d 000c 0000 4000 0000",
    "0094 0001 1a2b3c4d 000d 0000 4000 0300",
    "0028 0001 1a2b3c4d 000e 0000 4001 0000",
    "0018 0001 1a2b3c4d 000f 0000 4001 0000",
]
GRE = [
    "2001 880b 0004 4001",
    "3001 880b 0004 4001 00000007",
    "2081 880b 0004 4001 00000009",
    "3081 880b 0004 4001 00000007 00000009",
]


def hexb(s):
    return bytes.fromhex("".join(s.split()))


def golden(head):
    m = hexb(head)
    n = struct.unpack(">H", m[:2])[0]
    return m + bytes(n - len(m))


def csum(data):
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(">%dH" % (len(data) // 2), data))
    while s > 0xFFFF:
        s = (s & 0xFFFF) + (s >> 16)
    return (~s) & 0xFFFF


def ipv4(proto, src, dst, payload):
    h = bytearray(struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 0, 0x4000,
                              64, proto, 0, bytes(src), bytes(dst)))
    h[10:12] = struct.pack(">H", csum(bytes(h)))
    return bytes(h) + payload


def tcp(src, dst, sport, dport, seq, ack, flags, payload):
    t = bytearray(struct.pack(">HHIIBBHHH", sport, dport, seq, ack, 0x50, flags, 65535, 0, 0))
    t += payload
    pseudo = bytes(src) + bytes(dst) + struct.pack(">BBH", 0, 6, len(t))
    t[16:18] = struct.pack(">H", csum(pseudo + bytes(t)))
    return ipv4(6, src, dst, bytes(t))


HOST2 = [10, 0, 0, 2]
SERVER = [203, 0, 113, 10]
ROUTER = [198, 51, 100, 1]


def write(target, name, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def wire():
    # Messages cut to 32 bytes past the header: the views read only the
    # header and the first words; the full lengths are in the TCP seeds.
    for i, head in enumerate(GOLDEN):
        m = golden(head)
        write("wire", "msg-%02d" % (i + 1), m[:48] if len(m) > 48 else m)
    for i in (6, 7, 9, 11):  # OCRQ, OCRP, ICRP, CCRQ in IPv4/TCP
        m = golden(GOLDEN[i])
        write("wire", "tcp-%02d" % (i + 1), tcp(HOST2, SERVER, 40000, 1723, 1001, 1, 0x18, m))
    for i, g in enumerate(GRE):
        write("wire", "gre-%d" % i, ipv4(47, SERVER, ROUTER, hexb(g) + b"ppp!"))


def stream():
    # start seq, n cuts, cuts, answers, then the stream.
    s = b"".join(golden(GOLDEN[i]) for i in (0, 6, 7, 11, 12))
    write("stream", "calls-cut", struct.pack(">IB", 0xFFFFFF00, 4) + bytes([5, 170, 13, 1])
          + bytes([0x01, 0x02, 0x03, 0x04]) + s)
    s = b"".join(golden(GOLDEN[i]) for i in (8, 9, 10, 13, 14, 4, 5))
    write("stream", "incoming-whole", struct.pack(">IB", 1, 0) + s)
    # An unknown type skipped by its length, then a known one.
    unknown = hexb("0014 0001 1a2b3c4d 0063 0000") + bytes(8)
    write("stream", "unknown-then-echo", struct.pack(">IB", 7, 1) + bytes([3, 9])
          + unknown + golden(GOLDEN[4]))


# The engine's byte code (fuzz_targets/engine.rs): an op byte b does
# kind b % 10 in direction (b >> 4) & 1 (0 from inside, 1 to inside).
def op(kind, to_inside=False):
    for b in range(256):
        if b % 10 == kind and (b >> 4) & 1 == int(to_inside):
            return b
    raise ValueError


# Config: max_calls, per host, max_connections, policy, seed, setup, idle,
# conn idle, linger, quarantine (each a pick from a small list).
CFG_DEFAULT = bytes([2, 2, 1, 0, 0, 1, 1, 1, 1, 2])
CFG_SMALL = bytes([0, 1, 0, 1, 7, 0, 0, 0, 0, 1])

# Id selectors: k % 8 in 0..=4 picks IDS[(k / 8) % 8]
# (0x4000, 0x4001, 0x4002, 0, 1, 0x100, 0x8000, 0xffff); 5 the NAT id and
# 6 the inside id of a live call.
ID_4000, ID_4001, ID_0, NAT_OF_LIVE = 0, 8, 24, 5


def append_send(conn, to_inside, msgs):
    """op 0: append messages (type, w12 selector, w14 selector, result) and
    send them as one segment."""
    out = bytes([op(0, to_inside), conn, len(msgs) - 1])
    for ty, a, b, ok in msgs:
        out += bytes([ty - 1, a, b, 1 if ok else 0])
    return out


def handshake(conn):
    return bytes([op(4), conn, 0])


def gre_in(conn, sel=NAT_OF_LIVE - 5):
    return bytes([op(6, True), conn, sel, 1])


def engine():
    OCRQ, OCRP, CCRQ, CDN, SLI, ICRQ, ICRP, ICCN, SCCRQ, SCCRP = 7, 8, 12, 13, 15, 9, 10, 11, 1, 2
    # Two hosts call the same server with the same id; the server answers
    # both (its reply names the NAT id of a live call); GRE both ways; ends.
    two = (CFG_DEFAULT + handshake(0) + handshake(1)
           + append_send(0, False, [(SCCRQ, 0, 0, 1)]) + append_send(0, True, [(SCCRP, 0, 0, 1)])
           + append_send(0, False, [(OCRQ, ID_4000, 0, 1)])
           + append_send(1, False, [(OCRQ, ID_4000, 0, 1)])
           + append_send(0, True, [(OCRP, ID_0, NAT_OF_LIVE, 1)])
           + append_send(1, True, [(OCRP, ID_4001, NAT_OF_LIVE + 8, 1)])
           + gre_in(0) + gre_in(1, 4) + bytes([op(6), 0, 24, 3])
           + append_send(0, False, [(SLI, ID_0, 0, 1), (CCRQ, ID_4000, 0, 1)])
           + append_send(0, True, [(CDN, NAT_OF_LIVE, 0, 1)])
           + bytes([op(7), 0, 5, 0]))
    write("engine", "two-hosts-one-id", two)
    # A server inside: incoming call flow, a restart in the middle.
    srv = (CFG_DEFAULT + handshake(2)
           + append_send(2, True, [(SCCRQ, 0, 0, 1)]) + append_send(2, False, [(SCCRP, 0, 0, 1)])
           + append_send(2, False, [(ICRQ, ID_4001, 0, 1)])
           + bytes([op(8), 2])
           + append_send(2, True, [(ICRP, ID_0, NAT_OF_LIVE, 1)])
           + append_send(2, False, [(ICCN, ID_0, 0, 1)])
           + gre_in(2) + append_send(2, False, [(CDN, ID_4001, 0, 1)]))
    write("engine", "server-inside-restart", srv)
    # Messages appended, then sent cut inside Call IDs, retransmitted,
    # out of order, coalesced; limits small.
    cut = (CFG_SMALL + handshake(0)
           + bytes([op(1), 0, 1]) + bytes([OCRQ - 1, ID_4000, 0, 1]) + bytes([OCRQ - 1, ID_4001, 0, 1])
           + bytes([op(1), 0, 0]) + bytes([CCRQ - 1, ID_4000, 0, 1])
           + bytes([op(2), 0, 0, 0, 13, 1])     # 13 bytes: ends inside the Call ID
           + bytes([op(2), 0, 0xf1, 0, 50, 1])  # out of order
           + bytes([op(2), 0, 0, 1, 0x90, 2])   # the rest, coalesced
           + bytes([op(3), 0])                  # retransmission
           + bytes([op(2), 0, 20, 0, 40, 4])    # overlap with FIN
           + bytes([op(7), 0, 6, 0]))
    write("engine", "cut-retransmit-fin", cut)


def config():
    with open(os.path.join(REPO, "config", "pptp-alg.toml"), "rb") as f:
        write("config", "example", f.read())
    write("config", "small", b'queue_from_inside = 1\nqueue_to_inside = 2\nmark = 0x10\n'
          b'table = "t"\nid_policy = "random"\nmax_calls = 3\n')
    write("config", "invalid", b'queue_from_inside = 7\nqueue_to_inside = 7\n')


def state():
    call = {"conn": {"inside": "10.0.0.2:40000", "outside": "192.0.2.1:1723"},
            "inside_id": 0x4000, "outside_id": 7, "nat_id": 0x4001, "established": True}
    other = dict(call, inside_id=0x4000, nat_id=0x4000, outside_id=None, established=False,
                 conn={"inside": "10.0.0.3:40000", "outside": "192.0.2.1:1723"})
    write("state", "two-calls", json.dumps({"saved_at": 1, "calls": [call, other]}).encode())
    write("state", "empty", b'{"saved_at":0,"calls":[]}')


def nlmsg(ty, flags, seq, payload):
    return struct.pack("=IHHII", 16 + len(payload), ty, flags, seq, 0) + payload


def rta(ty, data):
    n = 4 + len(data)
    return struct.pack("=HH", n, ty) + data + bytes((-n) % 4)


def netlink():
    RTM_NEWADDR, RTM_DELADDR, NLMSG_DONE, NLMSG_ERROR = 20, 21, 3, 2
    ifa = struct.pack("=BBBBI", 2, 24, 0, 0, 2)
    new = nlmsg(RTM_NEWADDR, 2, 1, ifa + rta(1, bytes([192, 0, 2, 1])) + rta(2, bytes([192, 0, 2, 1])))
    dele = nlmsg(RTM_DELADDR, 0, 0, ifa + rta(2, bytes([198, 51, 100, 1])))
    # First byte 0: the rest is a receive buffer as it is.
    write("netlink", "addr-dump", b"\0" + new + dele + nlmsg(NLMSG_DONE, 2, 1, struct.pack("=i", 0)))
    err = nlmsg(NLMSG_ERROR, 0, 5, struct.pack("=i", -1) + nlmsg(0xa01, 5, 5, b"")[:16])
    write("netlink", "error", b"\0" + err)
    # nf_tables NEWTABLE with name, flags (owner) and owner: nfgenmsg, then
    # NFTA_TABLE_NAME (1), NFTA_TABLE_FLAGS (2, big endian), NFTA_TABLE_OWNER (7).
    nfgen = struct.pack("=BBH", 2, 0, 0)
    table = nlmsg((10 << 8) | 0, 0, 9, nfgen + rta(1, b"pptp_alg\0") + rta(2, struct.pack(">I", 2))
                  + rta(7, struct.pack(">I", 1234)))
    # NEWSETELEM with one element: NFTA_SET_ELEM_LIST_TABLE (1), _SET (2),
    # _ELEMENTS (3) nested: NFTA_LIST_ELEM (1) nested: NFTA_SET_ELEM_KEY (1)
    # nested: NFTA_DATA_VALUE (1).
    key = rta(1 | 0x8000, rta(1, bytes([203, 0, 113, 10, 0x40, 0x01, 0, 0])))
    elems = rta(3 | 0x8000, rta(1 | 0x8000, key))
    setelem = nlmsg((10 << 8) | 12, 0, 9, nfgen + rta(1, b"pptp_alg\0") + rta(2, b"gre_cid\0") + elems)
    write("netlink", "nft-table-and-elems", b"\0" + table + setelem + nlmsg(NLMSG_DONE, 2, 9, b"\0" * 4))


def netlink_built():
    # First byte 1: the rest describes nf_tables messages built with correct
    # attribute framing (fuzz_targets/netlink.rs, build): count - 1, then
    # per message a kind (0 table, 1 set elements, 2 object, 3 error/done).
    name = lambda s: bytes([len(s)]) + s
    table = bytes([0, 0x3f]) + name(b"pptp_alg") + bytes([0, 0, 0, 2]) + bytes([2, 0xab, 0xcd]) + bytes([0, 0, 4, 0xd2])
    # One element with a key and a counter: sel 1|4|8.
    elems = bytes([1]) + name(b"pptp_alg") + name(b"gre_cid") + bytes([1, 0x0d, 8]) \
        + bytes([203, 0, 113, 10, 0x40, 0x01, 0, 0]) + bytes([5, 3])
    obj = bytes([2]) + name(b"filter") + name(b"helper") + bytes([0x0c])
    write("netlink", "nft-built", bytes([1, 3]) + table + elems + obj + bytes([3, 1]))


def replication():
    # First byte 1: the rest is a header and payload the target signs
    # (fuzz_targets/replication.rs), so the payload parsers are reached.
    # Header: magic, version 1, kind, payload length, sessions 1 -> 2 (the
    # target's replica is session 2), counter, sequence.
    def msg(kind, payload, to=2, seq=1):
        return b"PPHA" + bytes([1, kind]) + struct.pack(">H", len(payload)) \
            + struct.pack(">QQQQ", 1, to, 1, seq) + payload

    def rec(kind, flags=0, quarantine=0, outside=0):
        return bytes([kind, flags]) + bytes([10, 0, 0, 1]) + struct.pack(">H", 40001) \
            + bytes(SERVER) + struct.pack(">HHHHI", 1723, 0x4000, outside, 0x4000, quarantine)

    write("replication", "hello", b"\x01" + msg(1, bytes([1, 1, 0, 0]), to=0))
    write("replication", "heartbeat", b"\x01" + msg(2, bytes([1, 0, 0, 0]), seq=5))
    write("replication", "records", b"\x01" + msg(3, rec(1) + rec(2, 3, 0, 0x700) + rec(3, 1, 60)))
    write("replication", "snapshot", b"\x01" + msg(4, struct.pack(">HH", 0, 1) + rec(2, 1) + rec(3, 0, 30)))
    write("replication", "resync", b"\x01" + msg(5, b""))


if __name__ == "__main__":
    wire()
    stream()
    engine()
    config()
    state()
    netlink()
    netlink_built()
    replication()
