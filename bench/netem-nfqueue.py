#!/usr/bin/env python3
"""Delay, jitter and loss in user space, for kernels without sch_netem.

An iptables rule (`-j NFQUEUE --queue-num Q`) hands each packet to this process, which gives
the kernel its verdict later: DROP at once with probability LOSS %, otherwise ACCEPT after
DELAY ms plus a uniform draw in [-JITTER, +JITTER] ms, each packet on its own, so jittered
packets overtake each other as they do under netem. Speaks the nfnetlink_queue protocol over a
raw netlink socket (Python's standard library has AF_NETLINK; Node.js has not), so it needs
no package. Run it inside the namespace whose rule feeds the queue (`ip netns exec`).

Prints "ready" once bound; on SIGTERM or SIGINT it releases every packet it still holds and
prints one JSON line of counters.
"""
import argparse
import errno
import heapq
import json
import random
import select
import signal
import socket
import struct
import sys
import time

NETLINK_NETFILTER = 12
SOL_NETLINK = 270
NETLINK_NO_ENOBUFS = 5
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET, NFQNL_MSG_VERDICT, NFQNL_MSG_CONFIG = 0, 1, 2
NFQA_CFG_CMD, NFQA_CFG_PARAMS, NFQA_CFG_QUEUE_MAXLEN = 1, 2, 3
NFQNL_CFG_CMD_BIND = 1
NFQNL_COPY_META = 1
NFQA_PACKET_HDR = 1
NFQA_VERDICT_HDR = 2
NF_DROP, NF_ACCEPT = 0, 1
NLM_F_REQUEST, NLM_F_ACK = 1, 4
NLMSG_ERROR = 2


def attr(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack('=HH', length, kind) + payload + b'\0' * (-length % 4)


def message(kind: int, queue: int, attrs: list, flags: int = NLM_F_REQUEST) -> bytes:
    # nfgenmsg: family, version (NFNETLINK_V0), resource id (the queue) in network order
    body = struct.pack('=BB', socket.AF_UNSPEC, 0) + struct.pack('!H', queue) + b''.join(attrs)
    return struct.pack('=IHHII', 16 + len(body), (NFNL_SUBSYS_QUEUE << 8) | kind, flags, 0, 0) + body


def messages(data: bytes):
    """(type, payload after nlmsghdr) of each netlink message in one datagram."""
    off = 0
    while off + 16 <= len(data):
        length, kind = struct.unpack_from('=IH', data, off)
        if length < 16:
            break
        yield kind, data[off + 16:off + length]
        off += (length + 3) & ~3


def packet_id(payload: bytes):
    off = 4  # past nfgenmsg
    while off + 4 <= len(payload):
        length, kind = struct.unpack_from('=HH', payload, off)
        if length < 4:
            return None
        if kind & 0x3FFF == NFQA_PACKET_HDR:
            return struct.unpack_from('!I', payload, off + 4)[0]
        off += (length + 3) & ~3
    return None


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument('--queue', type=int, required=True)
    ap.add_argument('--delay', type=float, default=0.0, help='ms')
    ap.add_argument('--jitter', type=float, default=0.0, help='ms, uniform either side of the delay')
    ap.add_argument('--loss', type=float, default=0.0, help='percent')
    ap.add_argument('--seed', type=int, default=1)
    ap.add_argument('--maxlen', type=int, default=20000, help='packets the kernel may hold for us')
    a = ap.parse_args()
    rng = random.Random(a.seed)

    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    sock.setsockopt(socket.SOL_SOCKET, 33, 8 << 20)  # SO_RCVBUFFORCE (root)
    sock.setsockopt(SOL_NETLINK, NETLINK_NO_ENOBUFS, 1)
    sock.bind((0, 0))

    def configure(attrs: list) -> None:
        sock.send(message(NFQNL_MSG_CONFIG, a.queue, attrs, NLM_F_REQUEST | NLM_F_ACK))
        for kind, payload in messages(sock.recv(65536)):
            if kind == NLMSG_ERROR:
                code = struct.unpack_from('=i', payload, 0)[0]
                if code != 0:
                    raise OSError(-code, f'nfnetlink_queue config of queue {a.queue}: {errno.errorcode.get(-code, code)}')

    configure([attr(NFQA_CFG_CMD, struct.pack('!BBH', NFQNL_CFG_CMD_BIND, 0, socket.AF_INET))])
    configure([attr(NFQA_CFG_PARAMS, struct.pack('!IB', 0, NFQNL_COPY_META)), attr(NFQA_CFG_QUEUE_MAXLEN, struct.pack('!I', a.maxlen))])
    sock.setblocking(False)

    stats = {'queue': a.queue, 'packets': 0, 'dropped': 0, 'delayed': 0, 'maxHeld': 0, 'delaySumMs': 0.0}
    held = []  # (due, seq, id)
    seq = 0
    stopping = False

    def stop(*_):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    def verdict(pid: int, v: int) -> None:
        msg = message(NFQNL_MSG_VERDICT, a.queue, [attr(NFQA_VERDICT_HDR, struct.pack('!II', v, pid))])
        while True:
            try:
                sock.send(msg)
                return
            except BlockingIOError:
                select.select([], [sock], [], 0.01)

    print('ready', flush=True)
    while not stopping:
        timeout = max(0.0, held[0][0] - time.monotonic()) if held else 0.5
        try:
            readable, _, _ = select.select([sock], [], [], timeout)
        except InterruptedError:
            continue
        if readable:
            while True:
                try:
                    data = sock.recv(65536)
                except BlockingIOError:
                    break
                now = time.monotonic()
                for kind, payload in messages(data):
                    if kind != (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET:
                        continue
                    pid = packet_id(payload)
                    if pid is None:
                        continue
                    stats['packets'] += 1
                    if rng.random() * 100 < a.loss:
                        stats['dropped'] += 1
                        verdict(pid, NF_DROP)
                        continue
                    wait = max(0.0, a.delay + rng.uniform(-a.jitter, a.jitter))
                    stats['delayed'] += 1
                    stats['delaySumMs'] += wait
                    seq += 1
                    heapq.heappush(held, (now + wait / 1000, seq, pid))
                stats['maxHeld'] = max(stats['maxHeld'], len(held))
        now = time.monotonic()
        while held and held[0][0] <= now:
            verdict(heapq.heappop(held)[2], NF_ACCEPT)
    # Nothing queued to us may be lost by stopping: the kernel drops what it still holds when
    # the socket closes.
    for _, _, pid in held:
        verdict(pid, NF_ACCEPT)
    stats['delaySumMs'] = round(stats['delaySumMs'], 1)
    print(json.dumps(stats), flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
