import os

import fixtures
import testtools

from nova_clonedriver.engine import memimage
from nova_clonedriver.engine.migstream import PAGE_SIZE_BYTES as PAGE

MIB = 1 << 20


class TestMemoryImage(testtools.TestCase):
    def setUp(self):
        super().setUp()
        self.path = os.path.join(self.useFixture(fixtures.TempDir()).path, "memory.img")

    def _image(self, size=4 * MIB):
        return memimage.MemoryImageWriter(self.path, size)

    def test_pages_land_at_their_offsets_and_last_copy_wins(self):
        image = self._image()
        image.write_page(PAGE, b"a" * PAGE)
        image.write_page(0, b"b" * PAGE)
        image.write_page(PAGE, b"c" * PAGE)  # re-sent after the guest wrote it
        image.close()
        with open(self.path, "rb") as f:
            data = f.read()
        self.assertEqual(4 * MIB, len(data))
        self.assertEqual(b"b" * PAGE + b"c" * PAGE, data[: 2 * PAGE])
        self.assertEqual(0, data[2 * PAGE :].count(b"\1"))

    def test_zero_after_data_clears_the_page(self):
        image = self._image()
        image.write_page(3 * PAGE, b"x" * PAGE)
        image.zero_page(3 * PAGE)
        image.zero_page(5 * PAGE)  # never written: stays a hole
        image.close()
        with open(self.path, "rb") as f:
            self.assertEqual(bytes(4 * MIB), f.read())

    def test_image_is_sparse_and_zero_chunks_have_no_checksum(self):
        image = self._image(64 * MIB)
        image.write_page(10 * MIB, b"y" * PAGE)
        checksums = image.close()
        self.assertEqual(64, len(checksums))
        self.assertEqual([10], [i for i, c in enumerate(checksums) if c])
        self.assertLess(os.stat(self.path).st_blocks * 512, 2 * MIB)

    def test_damaged_chunks_are_found(self):
        image = self._image()
        image.write_page(0, b"z" * PAGE)
        checksums = image.close()
        self.assertEqual([], memimage.find_bad_chunks(self.path, checksums))
        with open(self.path, "r+b") as f:
            f.seek(MIB + 17)
            f.write(b"!")  # a zero chunk that is not zero any more
            f.seek(5)
            f.write(b"!")
        self.assertEqual([0, 1], memimage.find_bad_chunks(self.path, checksums))

    def test_resident_bytes_sees_the_page_cache(self):
        image = self._image()
        image.write_page(0, b"q" * PAGE)
        image.close()
        with open(self.path, "rb") as f:
            f.read(PAGE)
        resident = memimage.resident_bytes(self.path)
        self.assertGreaterEqual(resident, PAGE)
        self.assertLessEqual(resident, 4 * MIB)
