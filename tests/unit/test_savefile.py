import io
import struct

import testtools

from nova_clonedriver.engine import savefile


class TestSaveHeader(testtools.TestCase):
    def test_round_trip(self):
        raw = savefile.build_header("<domain/>", "<cookie/>") + b"QEVM"
        source = io.BytesIO(raw)
        self.assertEqual(("<domain/>", "<cookie/>"), savefile.read_header(source))
        self.assertEqual(b"QEVM", source.read())

    def test_layout_is_libvirts(self):
        raw = savefile.build_header("<domain/>")
        self.assertEqual(92, savefile.HEADER_SIZE_BYTES)
        self.assertEqual(b"LibvirtQemudSave", raw[:16])
        version, data_len, running, compressed, cookie = struct.unpack("=5I", raw[16:36])
        self.assertEqual(
            (2, len("<domain/>") + 1, 1, 0, 0), (version, data_len, running, compressed, cookie)
        )
        self.assertEqual(b"<domain/>\0", raw[92:])

    def test_not_a_save_image(self):
        self.assertRaises(savefile.SaveImageError, savefile.read_header, io.BytesIO(b"x" * 200))
        self.assertRaises(savefile.SaveImageError, savefile.read_header, io.BytesIO(b"x"))

    def test_compressed_is_refused(self):
        raw = bytearray(savefile.build_header("<domain/>"))
        raw[28:32] = struct.pack("=I", 1)
        self.assertRaises(savefile.SaveImageError, savefile.read_header, io.BytesIO(raw))
