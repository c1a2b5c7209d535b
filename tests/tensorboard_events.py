"""Reads TensorBoard event files without TensorFlow: TFRecord framing + Event protos."""

import struct

from tensorboardX.proto import event_pb2


def read_events(path) -> list:
  """Every `Event` of one events.out.tfevents.* file (CRCs not checked)."""
  events = []
  with open(path, "rb") as f:
    while header := f.read(12):  # uint64 length, uint32 crc of the length
      (length,) = struct.unpack("<Q", header[:8])
      data = f.read(length)
      f.read(4)  # crc of the data
      event = event_pb2.Event()
      event.ParseFromString(data)
      events.append(event)
  return events


def summary_tags(directory) -> dict[str, set[str]]:
  """{'scalars': tags, 'images': tags} over all event files of a directory."""
  tags = {"scalars": set(), "images": set()}
  for path in sorted(directory.glob("events.out.tfevents.*")):
    for event in read_events(path):
      for value in event.summary.value:
        tags["images" if value.HasField("image") else "scalars"].add(value.tag)
  return tags
