"""Decode the TPU command buffers of a cvimodel: every TIU (compute) and TDMA (memory) command.

A ``cmdbuf`` section (one per TPU routine) is a sequence of commands, each an 8-byte header
(``cmd_hdr_t`` in sophgo/cvikernel ``include/bmkernel/bm_kernel.h``: magic 0xA8 for cv180x,
0xA7 for cv181x; descriptor length; engine 0 = TIU, 2 = TDMA; flags; mask) and a descriptor of
32-bit words: 0x70 bytes for the TIU, 0x40 for the TDMA. The descriptor fields used here, with
their bit positions, are those of cvikernel's ``cv180x_tiu_reg.h`` / ``cv180x_tdma_reg.h``
(cv181x uses the same layout).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

from .reader import CviModelInfo, read_cvimodel, section_data

MAGIC_CHIP = {0xA8: "cv180x", 0xA7: "cv181x", 0xA6: "cv182x", 0xA5: "cv183x"}
ENGINE_TIU, ENGINE_TDMA = 0, 2

# TIU task types (tsk_typ) and the element-wise operations (tsk_eu_typ of type 2 / 3)
TIU_CONV, TIU_POOL, TIU_MATMUL, TIU_ARITH = 0, 1, 2, 3
POOL_KINDS = {0: "max_pool", 1: "avg_pool", 2: "depthwise", 3: "min_pool"}
ARITH_KINDS = {
    0: "mul",
    1: "mac",
    2: "add",
    3: "sub",
    4: "max",
    5: "min",
    6: "shift",
    7: "and",
    8: "or",
    9: "xor",
    10: "copy",
    11: "ge",
    12: "lut",
}
TDMA_DIRECTIONS = {0: "load", 1: "store", 2: "global", 3: "local"}  # G2L, L2G, G2G, L2L


def _bits(words: tuple[int, ...], word: int, shift: int, width: int) -> int:
    return (words[word] >> shift) & ((1 << width) - 1)


@dataclass(frozen=True)
class TiuCommand:
    """One TIU (compute) command: what it computes and on what shape."""

    index: int
    kind: str  # conv, depthwise, max_pool, avg_pool, min_pool, matmul, add, mul, mac, lut, …
    bf16: bool
    per_channel: bool
    out: tuple[int, int, int, int]  # n, c, h, w of the result
    inp: tuple[int, int, int, int]  # n, c, h, w of operand 0
    kernel: tuple[int, int]  # kh, kw (conv / pooling); for matmul: (rows of opd1, its w)
    stride: tuple[int, int]  # y, x
    x_insert: int  # zeros inserted between input columns (deconvolution)
    lane_start: int  # the lane the result starts at
    double_conv: bool
    ps32: int  # partial-sum mode (0: none)
    operands: int
    opd1_const: bool
    layer: int  # layer_info: the compiler's layer id
    cmd_id: int  # this engine's command id
    wait_tdma: int  # the TDMA command id it waits for (0: none)

    @property
    def macs(self) -> int:
        """Multiply-accumulates (conv, depthwise, matmul), else output elements."""
        n, c, h, w = self.out
        if self.kind == "conv":
            return n * c * h * w * self.kernel[0] * self.kernel[1] * self.inp[1]
        if self.kind in ("depthwise", "avg_pool", "max_pool", "min_pool"):
            return n * c * h * w * self.kernel[0] * self.kernel[1]
        if self.kind == "matmul":
            return n * c * w * self.kernel[0]
        return n * c * h * w


@dataclass(frozen=True)
class TdmaCommand:
    """One TDMA (memory) command: a copy between DDR and local memory (or within one)."""

    index: int
    direction: str  # load (DDR → local), store (local → DDR), global, local
    special: int  # spec_func: 0 plain, 1 transposed, 4 constant fill, …
    src: tuple[int, int, int, int]
    dst: tuple[int, int, int, int]
    element_bytes: int  # 2 for BF16, 1 for INT8
    compressed: bool
    layer: int
    cmd_id: int
    wait_tiu: int  # the TIU command id it waits for (0: none)
    src_stride: tuple[int, int, int] = (0, 0, 0)  # n, c, h strides in bytes
    dst_stride: tuple[int, int, int] = (0, 0, 0)

    @property
    def bytes(self) -> int:
        """Bytes moved (the destination's elements; a constant fill reads nothing)."""
        n, c, h, w = self.dst if self.direction != "store" else self.src
        return max(n, 1) * max(c, 1) * max(h, 1) * max(w, 1) * self.element_bytes


@dataclass(frozen=True)
class Routine:
    """One TPU routine's command buffer (a ``cmdbuf`` section of the cvimodel)."""

    name: str
    chip: str
    tiu: tuple[TiuCommand, ...]
    tdma: tuple[TdmaCommand, ...]
    # the order the commands were issued in: (engine, index), engine 0 = TIU, 2 = TDMA
    order: tuple[tuple[int, int], ...] = ()


def _tiu(index: int, d: bytes) -> TiuCommand:
    p = struct.unpack_from("<28I", d)
    typ, eu = _bits(p, 0, 5, 4), _bits(p, 0, 9, 5)
    if typ == TIU_CONV:
        kind = "conv"
    elif typ == TIU_POOL:
        kind = POOL_KINDS.get(eu, f"pool{eu}")
    elif typ == TIU_MATMUL:
        kind = "matmul"
    else:
        kind = ARITH_KINDS.get(eu, f"arith{eu}")
    res_h = _bits(p, 6, 24, 8) | (_bits(p, 7, 0, 4) << 8)
    opd1_n = _bits(p, 12, 24, 8) | (_bits(p, 13, 0, 4) << 8)
    opd1_w = _bits(p, 13, 28, 4) | (_bits(p, 14, 0, 8) << 4)
    res_addr = _bits(p, 8, 0, 24)
    return TiuCommand(
        index=index,
        kind=kind,
        # opd_typ: 1 in every BF16 command of cv180x files (tpu-mlir's cycle model reads
        # opt_res0_seg == 0 instead, which is 1 in INT8 and BF16 files alike)
        bf16=bool(_bits(p, 0, 30, 1)),
        per_channel=bool(_bits(p, 0, 31, 1)),
        out=(_bits(p, 6, 0, 12), _bits(p, 6, 12, 12), res_h, _bits(p, 7, 4, 12)),
        inp=(_bits(p, 11, 0, 12), _bits(p, 11, 12, 12), _bits(p, 12, 0, 12), _bits(p, 12, 12, 12)),
        kernel=(_bits(p, 13, 16, 12), opd1_w) if typ != TIU_MATMUL else (opd1_n, opd1_w),
        stride=(_bits(p, 7, 21, 5), _bits(p, 7, 16, 5)),
        x_insert=_bits(p, 4, 0, 4),
        lane_start=res_addr >> 15,  # 32 KB per lane: the address's lane bits
        double_conv=bool(_bits(p, 3, 13, 1)),
        ps32=_bits(p, 3, 11, 2),
        operands=_bits(p, 0, 14, 2),
        opd1_const=bool(_bits(p, 10, 17, 1)),
        layer=_bits(p, 16, 0, 16),
        cmd_id=_bits(p, 1, 0, 16),
        wait_tdma=_bits(p, 1, 16, 16),
    )


def _tdma(index: int, d: bytes) -> TdmaCommand:
    p = struct.unpack_from("<16I", d)
    src_fmt, dst_fmt = _bits(p, 1, 5, 2), _bits(p, 1, 3, 2)
    return TdmaCommand(
        index=index,
        direction=TDMA_DIRECTIONS.get(_bits(p, 0, 6, 2), "?"),
        special=_bits(p, 1, 0, 3),
        src=(_bits(p, 13, 0, 16), _bits(p, 8, 16, 16), _bits(p, 10, 16, 16), _bits(p, 10, 0, 16)),
        dst=(_bits(p, 13, 0, 16), _bits(p, 8, 0, 16), _bits(p, 9, 16, 16), _bits(p, 9, 0, 16)),
        element_bytes=2 if 2 in (src_fmt, dst_fmt) else 1,
        compressed=bool(_bits(p, 0, 1, 1)),
        layer=_bits(p, 15, 16, 16),
        cmd_id=_bits(p, 0, 16, 16),
        wait_tiu=_bits(p, 1, 16, 16),
        src_stride=(p[7], _bits(p, 6, 16, 16) | (_bits(p, 14, 0, 16) << 16), _bits(p, 6, 0, 16)),
        dst_stride=(p[5], _bits(p, 4, 16, 16) | (_bits(p, 14, 16, 16) << 16), _bits(p, 4, 0, 16)),
    )


def decode(buf: bytes, name: str = "") -> Routine:
    """The commands of one command buffer."""
    tiu: list[TiuCommand] = []
    tdma: list[TdmaCommand] = []
    order: list[tuple[int, int]] = []
    chip = ""
    off = 0
    while off + 8 <= len(buf):
        magic, length, engine, _flags, mask = struct.unpack_from("<BBBBI", buf, off)
        if magic not in MAGIC_CHIP:
            raise ValueError(f"command buffer {name}: bad magic 0x{magic:02x} at byte {off}")
        chip = chip or MAGIC_CHIP[magic]
        length = length or mask  # a descriptor longer than 255 bytes keeps its length in mask
        desc = buf[off + 8 : off + 8 + length]
        if (engine & 0xF) == ENGINE_TIU:
            order.append((ENGINE_TIU, len(tiu)))
            tiu.append(_tiu(len(tiu), desc))
        elif (engine & 0xF) == ENGINE_TDMA:
            order.append((ENGINE_TDMA, len(tdma)))
            tdma.append(_tdma(len(tdma), desc))
        off += 8 + length
    return Routine(name, chip, tuple(tiu), tuple(tdma), tuple(order))


def routines(
    path: str | Path, info: CviModelInfo | None = None, program: int | None = 0
) -> list[Routine]:
    """The TPU routines' commands of one program of a cvimodel (``program``; ``None``: every
    ``cmdbuf`` section in file order). A multi-batch model holds one program per batch size,
    and one inference runs one of them. ``info``: the file's description when the caller has
    read it already."""
    info = info or read_cvimodel(path)
    data = Path(path).read_bytes()
    wanted = None
    if program is not None and info.programs and info.programs[program].cmdbufs:
        wanted = set(info.programs[program].cmdbufs)
    return [
        decode(section_data(data, s), s.name)
        for s in info.sections
        if s.type == "cmdbuf"
        and not s.compressed
        and not s.encrypted
        and (wanted is None or s.name in wanted)
    ]
