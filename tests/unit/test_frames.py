"""The outputs socket's framing (proto/frames.py): frames survive any split of the byte stream."""

import pytest

from proto import pb
from proto.frames import FrameError, FrameReader, frame


def test_frames_split_anywhere_come_out_whole_and_in_order():
    batches = [pb.OutputBatch(outputs=[pb.RequestOutput(request_id=f"r{i}", token_ids=[i] * i)])
               for i in range(1, 30)]
    wire = b"".join(frame(b.SerializeToString()) for b in batches) + frame(b"")
    for piece in (1, 3, 7, 64, len(wire)):
        reader, got = FrameReader(), []
        for at in range(0, len(wire), piece):
            got += reader.feed(wire[at:at + piece])
        assert [pb.OutputBatch.FromString(p) for p in got[:-1]] == batches
        assert got[-1] == b""  # an empty message is a frame too (the "registered" batch)


def test_a_frame_over_the_limit_is_refused_before_it_is_buffered():
    reader = FrameReader(max_bytes=100)
    assert reader.feed(frame(b"x" * 100)) == [b"x" * 100]
    with pytest.raises(FrameError, match="101 bytes"):
        reader.feed((101).to_bytes(4, "little"))
