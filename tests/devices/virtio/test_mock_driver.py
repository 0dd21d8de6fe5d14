"""The mock drivers' data area: where request buffers land in guest RAM."""

from __future__ import annotations

import pytest

from pyhv.devices.virtio.mock_driver import DataArea, align_up
from pyhv.memory import GuestMemory, MiB


@pytest.fixture
def memory():
    ram = GuestMemory(4 * MiB)
    yield ram
    ram.close()


def test_buffers_follow_one_another_on_16_byte_boundaries(memory):
    area = DataArea(memory, 0x10_0008)
    first = area.alloc(16)
    second = area.alloc(100, fill=0x5A)
    third = area.alloc(1)
    assert (first, second, third) == (0x10_0010, 0x10_0020, 0x10_0090)
    assert memory.read(second, 100) == b"\x5a" * 100


def test_a_page_aligned_buffer_starts_on_the_next_page_and_the_rest_follow_it(memory):
    # Linux's block layer hands a virtio-blk device whole pages: the benchmark's data buffers
    # must start where a guest's would, not 16 bytes past a request header.
    area = DataArea(memory, 0x10_0000)
    header = area.alloc(16)
    data = area.alloc(8192, fill=0x11, align=4096)
    status = area.alloc(1, fill=0xFF)
    assert header == 0x10_0000
    assert data == 0x10_1000
    assert status == 0x10_3000
    assert memory.read(data, 8192) == b"\x11" * 8192
    assert memory.read(0x10_0010, 16) == b"\0" * 16  # the gap is left as it was


@pytest.mark.parametrize("value, alignment, expected", [(0, 16, 0), (1, 16, 16), (16, 16, 16),
                                                       (4097, 4096, 8192), (7, 2, 8)])
def test_align_up(value, alignment, expected):
    assert align_up(value, alignment) == expected
