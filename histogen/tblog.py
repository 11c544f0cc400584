"""TensorBoard scalars without TensorFlow: event files written with tensorboard's protobufs in
TFRecord framing. (torch.utils.tensorboard and tensorboard's own writer import TensorFlow when it
is installed, which costs seconds and brings it into the training process.)"""
from __future__ import annotations

import socket
import struct
import time
from pathlib import Path

import google_crc32c
from tensorboard.compat.proto.event_pb2 import Event
from tensorboard.compat.proto.summary_pb2 import Summary


def _masked_crc(data: bytes) -> bytes:
    crc = google_crc32c.value(data)
    return struct.pack("<I", (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF)


class ScalarWriter:
    def __init__(self, logdir: Path):
        logdir.mkdir(parents=True, exist_ok=True)
        self.path = logdir / f"events.out.tfevents.{time.time():.0f}.{socket.gethostname()}"
        self._f = open(self.path, "ab")
        self._write(Event(wall_time=time.time(), file_version="brain.Event:2"))

    def _write(self, event: Event) -> None:
        data = event.SerializeToString()
        header = struct.pack("<Q", len(data))
        self._f.write(header + _masked_crc(header) + data + _masked_crc(data))

    def scalars(self, step: int, values: dict[str, float]) -> None:
        summary = Summary(value=[Summary.Value(tag=k, simple_value=float(v)) for k, v in values.items()])
        self._write(Event(wall_time=time.time(), step=step, summary=summary))
        self._f.flush()

    def close(self) -> None:
        self._f.close()
