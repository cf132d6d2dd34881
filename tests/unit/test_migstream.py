import io
import struct

import testtools

from nova_clonedriver.engine import migstream as ms

PAGE = ms.PAGE_SIZE_BYTES


def be32(v):
    return struct.pack(">I", v)


def be64(v):
    return struct.pack(">Q", v)


def idstr(name):
    return bytes([len(name)]) + name


class StreamBuilder:
    """Writes streams the way QEMU 7.2 does (as far as bless relies on it)."""

    def __init__(self, blocks):
        self.blocks = blocks
        self.out = io.BytesIO()
        self.last_block = None
        self.out.write(b"QEVM" + be32(3) + b"\x07" + be32(13) + b"pc-i440fx-7.2")

    def start(self):
        total = sum(size for _, size in self.blocks)
        self.out.write(b"\x01" + be32(2) + idstr(b"ram") + be32(0) + be32(4))
        self.out.write(be64(total | ms.RAM_SAVE_FLAG_MEM_SIZE))
        for name, size in self.blocks:
            self.out.write(idstr(name) + be64(size))
        self.out.write(be64(ms.RAM_SAVE_FLAG_EOS) + b"\x7e" + be32(2))
        return self

    def part(self, records, kind=0x02):
        self.out.write(bytes([kind]) + be32(2))
        for block, offset, data in records:
            flags = ms.RAM_SAVE_FLAG_PAGE if data is not None else ms.RAM_SAVE_FLAG_ZERO
            name = b""
            if block == self.last_block:
                flags |= ms.RAM_SAVE_FLAG_CONTINUE
            else:
                name = idstr(block)
            self.last_block = block
            self.out.write(be64(offset | flags) + name + (data if data is not None else b"\0"))
        self.out.write(be64(ms.RAM_SAVE_FLAG_EOS) + b"\x7e" + be32(2))
        return self

    def devices(self, payload=b"device-state"):
        self.out.write(b"\x04" + be32(3) + idstr(b"timer") + be32(0) + be32(2) + payload)
        self.out.write(b"\x00")
        return self

    def bytes(self):
        return self.out.getvalue()


class FakeSink:
    def __init__(self):
        self.pages = {}
        self.zeros = []

    def write_page(self, offset, data):
        self.pages[offset] = data

    def zero_page(self, offset):
        self.zeros.append(offset)


def page(fill):
    return bytes([fill]) * PAGE


def split(stream, main=None):
    sink, out = FakeSink(), io.BytesIO()
    splitter = ms.StreamSplitter(sink, out, b"clone-ram", main_block=main)
    splitter.split(io.BytesIO(stream))
    return splitter, sink, out.getvalue()


class TestStreamSplitter(testtools.TestCase):
    BLOCKS = [(b"pc.ram", 16 * PAGE), (b"pc.bios", 2 * PAGE)]

    def test_main_block_pages_go_to_the_sink(self):
        stream = (
            StreamBuilder(self.BLOCKS)
            .start()
            .part(
                [(b"pc.ram", 0, page(1)), (b"pc.ram", PAGE, page(2)), (b"pc.ram", 2 * PAGE, None)]
            )
            .devices()
            .bytes()
        )
        splitter, sink, _ = split(stream)
        self.assertEqual(b"pc.ram", splitter.main_block)
        self.assertEqual({0: page(1), PAGE: page(2)}, sink.pages)
        self.assertEqual([2 * PAGE], sink.zeros)
        self.assertEqual(2, splitter.pages_written)
        self.assertEqual("pc-i440fx-7.2", splitter.machine_type)

    def test_device_stream_has_no_main_pages_and_renamed_block(self):
        stream = (
            StreamBuilder(self.BLOCKS)
            .start()
            .part([(b"pc.ram", 0, page(1)), (b"pc.bios", 0, page(9))])
            .devices(b"DEVSTATE")
            .bytes()
        )
        _, _, device = split(stream)
        expected = (
            StreamBuilder([(b"clone-ram", 16 * PAGE), (b"pc.bios", 2 * PAGE)])
            .start()
            .part([(b"pc.bios", 0, page(9))])
            .devices(b"DEVSTATE")
            .bytes()
        )
        self.assertEqual(expected, device)
        self.assertNotIn(page(1), device)

    def test_continue_flag_is_fixed_when_the_main_block_stood_between(self):
        # bios page, ram page, bios page (continue in the original: no, the
        # block changed) then a second bios page with CONTINUE.
        stream = (
            StreamBuilder(self.BLOCKS)
            .start()
            .part([(b"pc.ram", 0, page(1))])
            .part([(b"pc.bios", 0, page(7)), (b"pc.bios", PAGE, page(8))])
            .part([(b"pc.ram", PAGE, page(2)), (b"pc.bios", 0, page(6))], kind=0x03)
            .devices()
            .bytes()
        )
        _, sink, device = split(stream)
        self.assertEqual({0: page(1), PAGE: page(2)}, sink.pages)
        # In the device stream, the last bios record directly follows the
        # previous bios record, so it may (and does) use CONTINUE.
        expected = (
            StreamBuilder([(b"clone-ram", 16 * PAGE), (b"pc.bios", 2 * PAGE)])
            .start()
            .part([])
            .part([(b"pc.bios", 0, page(7)), (b"pc.bios", PAGE, page(8))])
            .part([(b"pc.bios", 0, page(6))], kind=0x03)
            .devices()
            .bytes()
        )
        self.assertEqual(expected, device)

    def test_continue_after_dropped_record_gets_the_block_name(self):
        builder = StreamBuilder(self.BLOCKS).start()
        builder.part([(b"pc.ram", 0, page(1))])
        # A record that continues pc.ram, then a named pc.bios record.
        builder.part([(b"pc.ram", PAGE, page(2)), (b"pc.bios", 0, page(3))])
        _, _, device = split(builder.devices().bytes())
        named = be64(0 | ms.RAM_SAVE_FLAG_PAGE) + idstr(b"pc.bios") + page(3)
        self.assertIn(named, device)

    def test_largest_block_is_main_unless_named(self):
        stream = StreamBuilder(self.BLOCKS).start().devices().bytes()
        self.assertEqual(b"pc.ram", split(stream)[0].main_block)
        self.assertEqual(b"pc.bios", split(stream, main=b"pc.bios")[0].main_block)
        self.assertRaises(ms.StreamError, split, stream, b"nope")

    def test_bad_magic(self):
        self.assertRaises(ms.StreamError, split, b"XXXX" + be32(3))

    def test_truncated(self):
        stream = StreamBuilder(self.BLOCKS).start().part([(b"pc.ram", 0, page(1))]).bytes()
        self.assertRaises(ms.StreamError, split, stream[:-100])

    def test_compressed_pages_are_refused(self):
        stream = StreamBuilder(self.BLOCKS).start().bytes()
        stream += b"\x02" + be32(2) + be64(0x100 | ms.RAM_SAVE_FLAG_CONTINUE)
        error = self.assertRaises(ms.StreamError, split, stream)
        self.assertIn("unsupported RAM record flags", str(error))

    def test_page_beyond_block_is_refused(self):
        stream = (
            StreamBuilder(self.BLOCKS)
            .start()
            .part([(b"pc.ram", 16 * PAGE, page(1))])
            .devices()
            .bytes()
        )
        self.assertRaises(ms.StreamError, split, stream)

    def test_other_iterable_sections_are_refused(self):
        stream = b"QEVM" + be32(3) + b"\x01" + be32(5) + idstr(b"block") + be32(0) + be32(1)
        error = self.assertRaises(ms.StreamError, split, stream)
        self.assertIn("block", str(error))

    def test_block_list_with_extra_fields_is_refused(self):
        # x-ignore-shared adds each block's address after its size.
        stream = (
            b"QEVM"
            + be32(3)
            + b"\x01"
            + be32(2)
            + idstr(b"ram")
            + be32(0)
            + be32(4)
            + be64(PAGE | ms.RAM_SAVE_FLAG_MEM_SIZE)
            + idstr(b"pc.ram")
            + be64(PAGE)
            + be64(0xC0000)
        )
        self.assertRaises(ms.StreamError, split, stream)
