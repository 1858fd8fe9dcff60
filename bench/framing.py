"""Benchmark: decode a captured firmware byte stream with 1% of the frames corrupted.

Run by hand: ``.venv/bin/python bench/framing.py [--frames N] [--runs R]``. The last line
printed is one JSON object with at least ``frames_per_s`` and ``good_frames_recovered_ratio``
(uncorrupted frames decoded / uncorrupted frames sent). Also measured in the same run:
the pure step function ``decode()`` driven frame by frame, and a naive byte-by-byte
reference decoder; their throughputs and ratios to the bulk decoder are reported.
Every figure is the median of ``--runs`` runs.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import struct
import time
from binascii import crc_hqx
from collections.abc import Callable

from cobs import cobs

from firmware_bridge import (
    Frame,
    FrameDecoder,
    Readings,
    ValueType,
    decode,
    encode_frame,
    encode_message,
)

CHUNK = 4096  # bytes per read, like a serial driver's buffer


def build_stream(n: int, rate: float, seed: int) -> tuple[bytes, set[int], set[int]]:
    """The stream, the ids of intact frames and of corrupted ones (id = device_id<<16|seq)."""
    rng = random.Random(seed)
    corrupt = set(rng.sample(range(n), round(n * rate)))
    pieces: list[bytes] = []
    intact: set[int] = set()
    kinds = ["flip", "truncate", "noise", "zero", "burst"]
    for i in range(n):
        values = tuple((ch, ValueType.F32, rng.uniform(0, 500)) for ch in range(4))
        msg_type, payload = encode_message(Readings(ts_ms=1_732_780_800_000 + i, values=values))
        frame = encode_frame(msg_type, i >> 16, i & 0xFFFF, payload)
        if i in corrupt:
            data = bytearray(frame)
            kind = kinds[i % len(kinds)]
            pos = rng.randrange(1, len(data) - 1)
            if kind == "flip":
                data[pos] ^= 1 << rng.randrange(8)
            elif kind == "truncate":
                del data[pos:]
            elif kind == "noise":
                data[pos:pos] = rng.randbytes(rng.randrange(1, 16))
            elif kind == "zero":
                data[pos] = 0
            else:  # a burst of line noise overwriting up to 8 bytes, delimiters included
                end = min(len(data), pos + rng.randrange(2, 9))
                data[pos:end] = rng.randbytes(end - pos)
            frame = bytes(data)
        else:
            intact.add(i)
        pieces.append(frame)
    return b"".join(pieces), intact, corrupt


def ids(frames: list[Frame]) -> list[int]:
    return [f.device_id << 16 | f.seq for f in frames]


def bulk(stream: bytes) -> list[Frame]:
    dec = FrameDecoder()
    out: list[Frame] = []
    for at in range(0, len(stream), CHUNK):
        out += dec.feed(stream[at : at + CHUNK])
    return out


def step(stream: bytes) -> list[Frame]:
    """The pure decode(buffer) -> (consumed, item) step, driven like a pymodbus framer."""
    out: list[Frame] = []
    buf = bytearray()
    for at in range(0, len(stream), CHUNK):
        buf += stream[at : at + CHUNK]
        pos = 0
        view = bytes(buf)
        while True:
            consumed, item = decode(view[pos:] if pos else view)
            pos += consumed
            if isinstance(item, Frame):
                out.append(item)
            elif item is None and consumed == 0:
                break
            view, pos = view[pos:], 0
        del buf[: len(buf) - len(view)]
    return out


_HEAD = struct.Struct(">BBIH")


def naive(stream: bytes) -> list[Frame]:
    """Reference: byte-by-byte accumulation, the way a first implementation reads a UART."""
    out: list[Frame] = []
    seg = bytearray()
    for b in stream:
        if b != 0:
            seg.append(b)
            continue
        if seg:
            try:
                body = cobs.decode(bytes(seg))
            except cobs.DecodeError:
                body = b""
            if len(body) >= 10 and crc_hqx(body, 0xFFFF) == 0 and body[0] == 1:
                _, t, dev, seq = _HEAD.unpack_from(body)
                out.append(Frame(t, dev, seq, bytes(body[8:-2])))
            seg = bytearray()
    return out


def measure(
    fn: Callable[[bytes], list[Frame]], stream: bytes, runs: int
) -> tuple[float, list[Frame]]:
    times = []
    result: list[Frame] = []
    for _ in range(runs):
        t0 = time.perf_counter()
        result = fn(stream)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=200_000)
    parser.add_argument("--corrupt", type=float, default=0.01)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    stream, intact, corrupt = build_stream(args.frames, args.corrupt, args.seed)
    n = args.frames
    bulk_s, frames = measure(bulk, stream, args.runs)
    got = ids(frames)
    recovered = len(intact.intersection(got))
    false_accepts = len(corrupt.intersection(got))

    # The slow decoders run on a tenth of the stream (same corruption rate).
    sub_n = max(n // 10, 1)
    sub_stream, sub_intact, _ = build_stream(sub_n, args.corrupt, args.seed + 1)
    step_s, step_frames = measure(step, sub_stream, args.runs)
    naive_s, naive_frames = measure(naive, sub_stream, args.runs)
    bulk_sub_s, bulk_sub_frames = measure(bulk, sub_stream, args.runs)
    assert ids(step_frames) == ids(bulk_sub_frames) == ids(naive_frames)

    fps = n / bulk_s
    result = {
        "frames_sent": n,
        "frames_corrupted": len(corrupt),
        "stream_bytes": len(stream),
        "frames_per_s": round(fps),
        "mb_per_s": round(len(stream) / bulk_s / 1e6, 2),
        "good_frames_recovered_ratio": recovered / len(intact),
        "corrupted_frames_accepted": false_accepts,
        # The three decoders compared on the same sub-stream (the ratios below use these).
        "bulk_substream_frames_per_s": round(sub_n / bulk_sub_s),
        "step_decode_frames_per_s": round(sub_n / step_s),
        "naive_bytewise_frames_per_s": round(sub_n / naive_s),
        "speedup_vs_naive": round((sub_n / bulk_sub_s) / (sub_n / naive_s), 1),
        "speedup_vs_step": round((sub_n / bulk_sub_s) / (sub_n / step_s), 1),
        "sub_stream_recovered_ratio": len(sub_intact.intersection(ids(bulk_sub_frames)))
        / len(sub_intact),
        "runs": args.runs,
        "statistic": "median",
        "chunk_bytes": CHUNK,
        "python": platform.python_version(),
    }
    print(
        f"bulk: {fps:,.0f} frames/s, {result['mb_per_s']} MB/s; on the sub-stream bulk: "
        f"{result['bulk_substream_frames_per_s']:,}, "
        f"step: {result['step_decode_frames_per_s']:,} frames/s; "
        f"naive: {result['naive_bytewise_frames_per_s']:,} frames/s"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
