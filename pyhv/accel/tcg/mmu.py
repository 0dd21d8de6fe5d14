"""Linear → physical translation (x86 paging) and the CPU's memory accesses.

Paging modes: none (CR0.PG=0), 32-bit with 4 MiB pages, PAE, and 4-level long mode, with NX,
global pages, and accessed/dirty bits written back to the page tables as the CPU would.

The TLB holds one entry per virtual page (``entries``: vpn → (physical page, permission
bits)). From it three flat dicts serve the hot path, one per access kind (read, write, fetch)
at the current privilege; they hold a page only when the access is allowed, so a hit needs no
checks. The fetch map gives the physical page base. The read and write maps give the physical
minus the linear page address, so that ``linear + delta`` is the physical address: one
addition, where masking a negative kernel address (below) is three operations on a long
integer on CPython. A write entry is made only after the dirty bit is set and only for pages
that hold no translated code, so every write to a code page takes the slow path and
invalidates its blocks (the way QEMU marks code pages "not dirty").

The TLB is flushed when the architecture says: a CR3 write (all but global pages), INVLPG
(one page), CR0.PG/WP and CR4.PGE/PAE/PSE changes, and EFER.NXE changes (everything).

Virtual page numbers are those of the *signed* linear address (the register form of
:mod:`.state`: a kernel page at 0xffffffff81000000 has vpn -0x7f000), so the translated
blocks look up their addresses without leaving machine integers on PyPy. Every entry point
here takes a linear address in either form (and wrapped past 2**64) and folds it first.
"""

from __future__ import annotations

import struct
from typing import Callable, Dict, List, Optional, Set, Tuple

from ...bus import Bus
from ...memory import GuestMemory
from .faults import GP, PF, PF_FETCH, PF_PRESENT, PF_RSVD, PF_USER, PF_WRITE, GuestFault
from .state import WRAP64, signed64

ACCESS_READ = 0
ACCESS_WRITE = 1
ACCESS_FETCH = 2

PTE_P = 1 << 0
PTE_W = 1 << 1
PTE_U = 1 << 2
PTE_A = 1 << 5
PTE_D = 1 << 6
PTE_PS = 1 << 7
PTE_G = 1 << 8
PTE_NX = 1 << 63
ADDR_MASK = 0x000F_FFFF_FFFF_F000

# Permission bits of a TLB entry.
T_WRITE = 1
T_USER = 2
T_NX = 4
T_GLOBAL = 8
T_DIRTY = 16

# 8 bytes as signed ("q"), made unsigned by the readers: PyPy's "Q" gives a long integer
# even for a small value, and a long stays one through all arithmetic done with it.
_UNPACK = {2: struct.Struct("<H").unpack_from, 4: struct.Struct("<I").unpack_from,
           8: struct.Struct("<q").unpack_from}
_PACK = {2: struct.Struct("<H").pack_into, 4: struct.Struct("<I").pack_into,
         8: struct.Struct("<Q").pack_into}
_MASK = {1: 0xFF, 2: 0xFFFF, 4: 0xFFFF_FFFF, 8: 0xFFFF_FFFF_FFFF_FFFF}
_UNPACK_Q = struct.Struct("<q").unpack_from  # 64-bit values in the register form
_PACK_Q = struct.Struct("<q").pack_into


class Mmu:
    """Paging, TLB and guest-physical access for one vCPU."""

    writers_slack = 4096  # stale entries ``writers`` may gather beyond 4 per live one

    def __init__(self, memory: GuestMemory, mmio_bus: Bus, state) -> None:
        self.memory = memory
        self.mmio_bus = mmio_bus
        self.state = state
        regions = memory.regions
        self.low_end = regions[0].end
        self.low = memory.view(0, regions[0].size)
        self.high: List[Tuple[int, int, memoryview]] = [
            (r.guest_addr, r.end, memory.view(r.guest_addr, r.size)) for r in regions[1:]]
        self.entries: Dict[int, Tuple[int, int]] = {}
        self.nonglobal: Set[int] = set()  # the vpns of entries a CR3 write drops
        self.r: Dict[int, int] = {}
        self.w: Dict[int, int] = {}
        self.x: Dict[int, int] = {}
        # Physical page -> the vpns ``w`` mapped to it since it was last cleared, some maybe
        # dropped or remapped since: protect_code_page looks them up here instead of scanning
        # ``w`` (about 1,800 entries at a new code page, 1,000 times in 150M instructions
        # of the Debian boot: 0.6 ms each on CPython).
        self.writers: Dict[int, List[int]] = {}
        self._writers_noted = 0
        # Physical pages holding translated code; set by the block cache.
        self.code_pages: Dict[int, object] = {}
        self.on_code_write: Callable[[int, int], None] = lambda phys, size: None
        self.user = False
        # Bumped whenever a fetch translation may have changed: the block chains check it.
        self.epoch = 0

    # --- TLB maintenance --------------------------------------------------------------
    def flush(self, keep_global: bool = False) -> None:
        if not keep_global:
            self.entries = {}
            self.nonglobal = set()
            self._clear_fast_maps()
            return
        # A CR3 write. The kernel's own pages are global and stay; dropping only the rest
        # spares the Debian boot a copy of the whole TLB and a refill of the fast maps at
        # each of its 16,000 CR3 writes (text_poke switches to a temporary mm and back).
        entries, r, w, x = self.entries, self.r, self.w, self.x
        code_moved = False
        for vpn in self.nonglobal:
            if entries.pop(vpn, None) is not None:
                r.pop(vpn, None)
                w.pop(vpn, None)
                if x.pop(vpn, None) is not None:
                    code_moved = True
        self.nonglobal = set()
        if code_moved:
            # The chains and the jump cache map RIPs to blocks through fetch translations.
            self.epoch += 1

    def _clear_fast_maps(self) -> None:
        # In place: translated blocks hold these dicts (see translate.Translator).
        self.r.clear()
        self.w.clear()
        self.x.clear()
        self.writers = {}
        self._writers_noted = 0
        self.epoch += 1

    def flush_page(self, linear: int) -> None:
        vpn = signed64(linear) >> 12
        self.entries.pop(vpn, None)
        self.nonglobal.discard(vpn)
        self.r.pop(vpn, None)
        self.w.pop(vpn, None)
        self.x.pop(vpn, None)
        self.epoch += 1

    def set_user(self, user: bool) -> None:
        """The privilege changed (CPL 3 or not): the fast maps depend on it."""
        if user != self.user:
            self.user = user
            self._clear_fast_maps()

    def protect_code_page(self, ppn: int) -> None:
        """``ppn`` now holds translated code: route writes to it through the slow path."""
        w = self.w
        for vpn in self.writers.pop(ppn, ()):
            delta = w.get(vpn)
            if delta is not None and vpn + (delta >> 12) == ppn:
                del w[vpn]

    def _note_writer(self, vpn: int, ppn: int) -> None:
        self.writers.setdefault(ppn, []).append(vpn)
        self._writers_noted += 1
        if self._writers_noted > 4 * len(self.w) + self.writers_slack:
            # CR3 writes and INVLPG drop entries of ``w`` one by one and leave their vpns
            # here: rebuild from what ``w`` holds, so the lists stay bounded.
            writers: Dict[int, List[int]] = {}
            for mapped_vpn, delta in self.w.items():
                writers.setdefault(mapped_vpn + (delta >> 12), []).append(mapped_vpn)
            self.writers = writers
            self._writers_noted = len(self.w)

    # --- translation ------------------------------------------------------------------
    def translate(self, linear: int, access: int, system: bool = False) -> int:
        """Physical address of ``linear`` for ``access``, filling the TLB; raises #PF/#GP.

        ``system`` marks the CPU's implicit supervisor accesses (descriptor tables, TSS),
        which are allowed to supervisor pages even at CPL 3.
        """
        top = linear >> 63
        if top != 0 and top != -1:
            # An unsigned address from the interpreter, or offset + segment base wrapped
            # around the linear space (static glibc reads its thread-locals at fs:-0x90).
            # Either misses the TLB keyed by the signed page, so folding here keeps the hot
            # path free of a mask.
            linear = signed64(linear)
        vpn = linear >> 12
        entry = self.entries.get(vpn)
        user = self.user and not system
        if entry is None or (access == ACCESS_WRITE and not entry[1] & T_DIRTY):
            entry = self._walk(linear, access, user)
            self.entries[vpn] = entry
            if not entry[1] & T_GLOBAL:
                self.nonglobal.add(vpn)
        elif not self._permits(entry[1], access, user):
            # The CPU walks the tables again before it reports a fault (SDM vol. 3, 4.10.4.3):
            # Linux makes a PTE more permissive (a copy-on-write page turned writable) without
            # INVLPG and relies on that, so a stale entry would fault forever.
            entry = self._walk(linear, access, user)
            self.entries[vpn] = entry
            if not entry[1] & T_GLOBAL:
                self.nonglobal.add(vpn)
        base, perms = entry
        if not self._permits(perms, access, user):
            raise self._fault(linear, access, user, True)
        if access == ACCESS_WRITE:
            if base >> 12 not in self.code_pages and not system:
                self.w[vpn] = base - (vpn << 12)
                self._note_writer(vpn, base >> 12)
        elif access == ACCESS_FETCH:
            self.x[vpn] = base
        elif not system:
            self.r[vpn] = base - (vpn << 12)
        return base | (linear & 0xFFF)

    def _permits(self, perms: int, access: int, user: bool) -> bool:
        if user and not perms & T_USER:
            return False
        if access == ACCESS_WRITE:
            return bool(perms & T_WRITE) or not (user or self.state.cr0 & (1 << 16))
        if access == ACCESS_FETCH:
            return not perms & T_NX
        return True

    # Descriptor-table, IDT and TSS accesses. The kernel serializes with an iret to itself
    # (sync_core) after each of the thousands of code patches of its boot, and every iret
    # reads descriptors: one translation per access in a page, not one per byte.
    def read_system(self, linear: int, size: int) -> int:
        if size in _UNPACK and (linear & 0xFFF) + size <= 0x1000:
            return self.phys_read(self.translate(linear, ACCESS_READ, True), size)
        value = 0
        for k in range(size):
            value |= self.phys_read(self.translate(linear + k, ACCESS_READ, True), 1) << (8 * k)
        return value

    def write_system(self, linear: int, size: int, value: int) -> None:
        if size in _UNPACK and (linear & 0xFFF) + size <= 0x1000:
            self.phys_write(self.translate(linear, ACCESS_WRITE, True), size, value)
            return
        for k in range(size):
            self.phys_write(self.translate(linear + k, ACCESS_WRITE, True), 1, (value >> (8 * k)) & 0xFF)

    def _fault(self, linear: int, access: int, user: bool, present: bool,
               reserved: bool = False) -> GuestFault:
        code = 0
        if present:
            code |= PF_PRESENT
        if access == ACCESS_WRITE:
            code |= PF_WRITE
        if user:
            code |= PF_USER
        if reserved:
            code |= PF_RSVD | PF_PRESENT
        s = self.state
        if access == ACCESS_FETCH and (s.efer & (1 << 11) or s.cr4 & (1 << 20)):
            code |= PF_FETCH
        return GuestFault(PF, code, cr2=linear & 0xFFFF_FFFF_FFFF_FFFF)

    def _walk(self, linear: int, access: int, user: bool) -> Tuple[int, int]:
        s = self.state
        long_mode = s.efer & (1 << 10)
        if long_mode:
            top = linear >> 47
            if top != 0 and top != -1:
                raise GuestFault(GP, 0)  # non-canonical address
        if not s.cr0 & (1 << 31):
            phys = linear & (0xFFFF_F000 if not long_mode else ADDR_MASK)
            return phys, T_WRITE | T_USER | T_DIRTY
        if long_mode or s.cr4 & (1 << 5):
            return self._walk_pae(linear, access, user, long_mode)
        return self._walk_32(linear, access, user)

    def _read_pte(self, addr: int, size: int) -> int:
        return self.phys_read(addr, size)

    def _walk_pae(self, linear: int, access: int, user: bool, long_mode: int) -> Tuple[int, int]:
        s = self.state
        nxe = s.efer & (1 << 11)
        if long_mode:
            levels = (39, 30, 21, 12)
            table = s.cr3 & ADDR_MASK
        else:
            linear &= 0xFFFF_FFFF
            pdpte_addr = (s.cr3 & 0xFFFF_FFE0) + ((linear >> 30) & 3) * 8
            pdpte = self._read_pte(pdpte_addr, 8)
            if not pdpte & PTE_P:
                raise self._fault(linear, access, user, False)
            levels = (21, 12)
            table = pdpte & ADDR_MASK
        writable = True
        user_ok = True
        nx = False
        for depth, shift in enumerate(levels):
            addr = table + ((linear >> shift) & 0x1FF) * 8
            pte = self._read_pte(addr, 8)
            if not pte & PTE_P:
                raise self._fault(linear, access, user, False)
            if pte & PTE_NX and not nxe:
                raise self._fault(linear, access, user, True, reserved=True)
            writable = writable and bool(pte & PTE_W)
            user_ok = user_ok and bool(pte & PTE_U)
            nx = nx or (bool(pte & PTE_NX) and bool(nxe))
            leaf = shift == 12 or (pte & PTE_PS and shift in (21, 30))
            if leaf:
                new = pte | PTE_A
                if access == ACCESS_WRITE and self._allowed(writable, user_ok, nx, access, user):
                    new |= PTE_D
                if new != pte:
                    self.phys_write(addr, 8, new)
                page_mask = (1 << shift) - 1
                frame = pte & ADDR_MASK & ~page_mask
                phys = frame | (linear & page_mask & ~0xFFF)
                return phys, self._perms(writable, user_ok, nx, pte, new)
            if not pte & PTE_A:
                self.phys_write(addr, 8, pte | PTE_A)
            table = pte & ADDR_MASK
        raise AssertionError("page walk ended without a leaf")  # pragma: no cover

    def _walk_32(self, linear: int, access: int, user: bool) -> Tuple[int, int]:
        s = self.state
        linear &= 0xFFFF_FFFF
        pde_addr = (s.cr3 & 0xFFFF_F000) + (linear >> 22) * 4
        pde = self._read_pte(pde_addr, 4)
        if not pde & PTE_P:
            raise self._fault(linear, access, user, False)
        if pde & PTE_PS and s.cr4 & (1 << 4):
            writable, user_ok = bool(pde & PTE_W), bool(pde & PTE_U)
            new = pde | PTE_A
            if access == ACCESS_WRITE and self._allowed(writable, user_ok, False, access, user):
                new |= PTE_D
            if new != pde:
                self.phys_write(pde_addr, 4, new)
            frame = (pde & 0xFFC0_0000) | ((pde & 0x001F_E000) << 19)
            return frame | (linear & 0x003F_F000), self._perms(writable, user_ok, False, pde, new)
        if not pde & PTE_A:
            self.phys_write(pde_addr, 4, pde | PTE_A)
        pte_addr = (pde & 0xFFFF_F000) + ((linear >> 12) & 0x3FF) * 4
        pte = self._read_pte(pte_addr, 4)
        if not pte & PTE_P:
            raise self._fault(linear, access, user, False)
        writable = bool(pde & PTE_W) and bool(pte & PTE_W)
        user_ok = bool(pde & PTE_U) and bool(pte & PTE_U)
        new = pte | PTE_A
        if access == ACCESS_WRITE and self._allowed(writable, user_ok, False, access, user):
            new |= PTE_D
        if new != pte:
            self.phys_write(pte_addr, 4, new)
        return pte & 0xFFFF_F000, self._perms(writable, user_ok, False, pte, new)

    def _allowed(self, writable: bool, user_ok: bool, nx: bool, access: int, user: bool) -> bool:
        """Whether the access succeeds (the dirty bit is set only then)."""
        if user and not user_ok:
            return False
        if access == ACCESS_WRITE and not writable and (user or self.state.cr0 & (1 << 16)):
            return False
        return not (access == ACCESS_FETCH and nx)

    def _perms(self, writable: bool, user_ok: bool, nx: bool, pte: int, new: int) -> int:
        perms = 0
        if writable:
            perms |= T_WRITE
        if user_ok:
            perms |= T_USER
        if nx:
            perms |= T_NX
        if pte & PTE_G and self.state.cr4 & (1 << 7):
            perms |= T_GLOBAL
        if new & PTE_D:
            perms |= T_DIRTY
        return perms

    # --- physical access ------------------------------------------------------------------
    def phys_read(self, phys: int, size: int) -> int:
        if phys + size <= self.low_end:
            if size == 1:
                return self.low[phys]
            value = _UNPACK[size](self.low, phys)[0]
            return value + WRAP64 if value < 0 else value  # state.unsigned64, without the call
        for start, end, view in self.high:
            if start <= phys and phys + size <= end:
                return int.from_bytes(view[phys - start:phys - start + size], "little")
        if phys < self.low_end:  # straddles the end of low RAM
            return int.from_bytes(bytes(self.phys_read(phys + k, 1) for k in range(size)), "little")
        return self.mmio_bus.read(phys, size)

    def phys_write(self, phys: int, size: int, value: int) -> None:
        if phys >> 12 in self.code_pages or (phys + size - 1) >> 12 in self.code_pages:
            self.on_code_write(phys, size)
        value &= _MASK[size]
        if phys + size <= self.low_end:
            if size == 1:
                self.low[phys] = value
            else:
                _PACK[size](self.low, phys, value)
            return
        for start, end, view in self.high:
            if start <= phys and phys + size <= end:
                view[phys - start:phys - start + size] = value.to_bytes(size, "little")
                return
        if phys < self.low_end:
            for k in range(size):
                self.phys_write(phys + k, 1, (value >> (8 * k)) & 0xFF)
            return
        self.mmio_bus.write(phys, size, value)

    def phys_bytes(self, phys: int, size: int) -> Optional[bytes]:
        """Raw RAM bytes for instruction fetch; None where [phys, phys+size) is not RAM."""
        if phys + size <= self.low_end:
            return bytes(self.low[phys:phys + size])
        for start, end, view in self.high:
            if start <= phys and phys + size <= end:
                return bytes(view[phys - start:phys - start + size])
        return None

    # --- linear access (the hot path) ---------------------------------------------------
    def read(self, linear: int, size: int) -> int:
        top = linear >> 63
        if top != 0 and top != -1:
            linear = signed64(linear)
        off = linear & 0xFFF
        if off + size <= 0x1000:
            delta = self.r.get(linear >> 12)
            if delta is None:
                phys = self.translate(linear, ACCESS_READ)
            else:
                phys = linear + delta
            if phys + size <= self.low_end:
                if size == 1:
                    return self.low[phys]
                value = _UNPACK[size](self.low, phys)[0]
                return value + WRAP64 if value < 0 else value  # unsigned64, without the call
            return self.phys_read(phys, size)
        return self._read_split(linear, size)

    def read_q(self, linear: int) -> int:
        """A 64-bit read in the registers' signed form (see .state), for the interpreter's
        moves, pushes and pops: a kernel pointer read unsigned is a long integer on PyPy.
        :meth:`write` takes such a value back as it is."""
        top = linear >> 63
        if top != 0 and top != -1:
            linear = signed64(linear)
        off = linear & 0xFFF
        if off <= 0xFF8:
            delta = self.r.get(linear >> 12)
            if delta is not None and linear + delta + 8 <= self.low_end:
                return _UNPACK_Q(self.low, linear + delta)[0]
        return signed64(self.read(linear, 8))

    def write(self, linear: int, size: int, value: int) -> None:
        top = linear >> 63
        if top != 0 and top != -1:
            linear = signed64(linear)
        off = linear & 0xFFF
        if off + size <= 0x1000:
            delta = self.w.get(linear >> 12)
            if delta is not None:
                phys = linear + delta
                if phys + size <= self.low_end:
                    if size == 1:
                        self.low[phys] = value & 0xFF
                    elif size == 8:  # unsigned or in the register form (see read_q)
                        top = value >> 63  # signed64's test inline: no call on this hot path
                        _PACK_Q(self.low, phys, value if top == 0 or top == -1 else signed64(value))
                    else:
                        _PACK[size](self.low, phys, value & _MASK[size])
                    return
            else:
                phys = self.translate(linear, ACCESS_WRITE)
            self.phys_write(phys, size, value)
            return
        self._write_split(linear, size, value)

    def _read_split(self, linear: int, size: int) -> int:
        # Translate both pages before touching either, so a fault leaves nothing half done.
        first = 0x1000 - (linear & 0xFFF)
        lo = self.translate(linear, ACCESS_READ)
        hi = self.translate(linear + first, ACCESS_READ)
        value = 0
        for k in range(size):
            phys = lo + k if k < first else hi + (k - first)
            value |= self.phys_read(phys, 1) << (8 * k)
        return value

    def _write_split(self, linear: int, size: int, value: int) -> None:
        first = 0x1000 - (linear & 0xFFF)
        lo = self.translate(linear, ACCESS_WRITE)
        hi = self.translate(linear + first, ACCESS_WRITE)
        for k in range(size):
            phys = lo + k if k < first else hi + (k - first)
            self.phys_write(phys, 1, (value >> (8 * k)) & 0xFF)

    def check_write(self, linear: int, size: int) -> None:
        """Fault now if a later write of ``size`` bytes at ``linear`` would fault."""
        self.translate(linear, ACCESS_WRITE)
        if (linear & 0xFFF) + size > 0x1000:
            self.translate(linear + size - 1, ACCESS_WRITE)

    def read_bytes(self, linear: int, size: int) -> bytes:
        return bytes(self.read(linear + k, 1) for k in range(size))

    def write_bytes(self, linear: int, data: bytes) -> None:
        for k, b in enumerate(data):
            self.write(linear + k, 1, b)
