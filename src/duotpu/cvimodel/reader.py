"""Read a ``.cvimodel`` file: header, programs, tensors, sections, and the board memory it needs.

The file is a 48-byte header (magic ``CviModel``, body size, major/minor version, md5 of all that
follows the header, chip name, 2 bytes of padding), then a flatbuffer (``cvi.model.Model``, schema
``cvimodel.fbs`` shipped in tpu_mlir), then the section data (weights, command buffers). The
flatbuffer is read with Python code that ``flatc`` generates from tpu_mlir's own schema (once, into
duotpu's cache folder).
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import asdict, dataclass, field
from pathlib import Path

from duotpu.config import chips
from duotpu.config.errors import ModelError

from .schema import model_class

HEADER_SIZE = 48
PAD_UNRECORDED = b"AA"  # header padding of model_tool's files, whose md5 is never set
_HEADER = struct.Struct("<8sIBB16s16s2s")
_DTYPES = {
    0: ("fp32", 4),
    1: ("int32", 4),
    2: ("uint32", 4),
    3: ("bf16", 2),
    4: ("int16", 2),
    5: ("uint16", 2),
    6: ("int8", 1),
    7: ("uint8", 1),
}
_SECTION_TYPES = {0: "weight", 1: "cmdbuf", 2: "func_x86", 3: "func_aarch64", 4: "dmabuf"}
_MEM_IO = 3  # tensor offset bits 40..42: 0/1 shared, 2 private, >2 io memory


# --------------------------------------------------------------------------------------------
# What a cvimodel holds
# --------------------------------------------------------------------------------------------
@dataclass
class TensorInfo:
    """An input or output tensor of a program."""

    name: str
    shape: list[int]
    dtype: str
    qscale: float
    zero_point: float
    pixel_format: str
    aligned: bool
    size: int


@dataclass
class ProgramInfo:
    """One program (a batch variant) of the model."""

    batch_num: int
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    shared_gmem: int
    private_gmem: int
    neuron_size: int
    io_bytes: int
    routines: list[str]
    cmdbufs: list[str] = field(default_factory=list)  # its TPU routines' cmdbuf sections


@dataclass
class SectionInfo:
    """A section of the file's data (weights, TPU command buffers, CPU functions)."""

    type: str
    name: str
    size: int
    offset: int
    compressed: bool
    encrypted: bool


@dataclass
class CviModelInfo:
    """Everything duotpu reads from a cvimodel."""

    path: str
    file_size: int
    chip: str
    header_version: str
    version: str
    name: str
    build_time: str
    mlir_version: str
    md5: str
    programs: list[ProgramInfo]
    sections: list[SectionInfo]
    weight_bytes: int
    ion_bytes: int
    fit: dict = field(default_factory=dict)
    md5_status: str = ""

    @property
    def ion_mb(self) -> float:
        """Board memory in MiB, as ``model_tool --info`` prints it."""
        return self.ion_bytes / (1024 * 1024)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ion_mb"] = round(self.ion_mb, 4)
        return d


def read_cvimodel(path: str | Path) -> CviModelInfo:
    """Read and check a cvimodel. Raises `ModelError` for a file that is not a
    cvimodel, is truncated, or whose md5 does not match its header."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ModelError(f"Cannot read the cvimodel {path}: {e.strerror}.") from None
    if len(data) < HEADER_SIZE or not data.startswith(b"CviModel"):
        raise ModelError(
            f"{path} is not a cvimodel (it does not start with the 'CviModel' "
            "header). Give a file made by `duotpu build` or tpu_mlir's "
            "model_deploy."
        )
    magic, body_size, major, minor, md5, chip, _pad = _HEADER.unpack_from(data, 0)
    if major == 1 and minor == 0:
        raise ModelError(
            f"{path} is a cvimodel 1.0 file (32-byte header); duotpu reads 1.1 "
            "and newer. Rebuild it with a current tpu_mlir."
        )
    if len(data) < HEADER_SIZE + body_size:
        raise ModelError(
            f"{path} is truncated: the header announces a {body_size}-byte model "
            f"description but the file has {len(data) - HEADER_SIZE} bytes after "
            "the header. Copy the file again."
        )
    actual = hashlib.md5(data[HEADER_SIZE:]).digest()
    corrupt = ModelError(
        f"{path} is corrupt or truncated: the md5 of its contents "
        f"({actual.hex()}) is not the one in its header ({md5.hex()}). Copy "
        "or build the file again."
    )
    Model = model_class()
    try:
        m = Model.GetRootAs(data[HEADER_SIZE : HEADER_SIZE + body_size], 0)
        info = _describe(path, data, m)
    except ModelError:
        raise
    except Exception as e:
        if actual != md5:
            raise corrupt from None
        raise ModelError(
            f"{path} has a damaged model description ({type(e).__name__}: {e})."
        ) from None
    if actual == md5:
        info.md5_status = "ok"
    elif _pad == PAD_UNRECORDED and all(
        s.offset + s.size <= len(data) - HEADER_SIZE - body_size for s in info.sections
    ):
        # cviruntime's model_tool (`--combine` for multi-batch models) writes headers with the
        # padding "AA" and never fills in the md5 (stack garbage); the runtime does not check it.
        # Such files are checked by their structure only. model_deploy's files ("Cv") record
        # their md5: one that does not match is corruption, however many programs it holds.
        info.md5_status = "not recorded (combined by model_tool)"
    else:
        raise corrupt
    info.chip = chip.rstrip(b"\0").decode(errors="replace") or info.chip
    info.header_version = f"{major}.{minor}"
    info.md5 = md5.hex()
    data_len = len(data) - HEADER_SIZE - body_size
    for s in info.sections:
        if s.offset + s.size > data_len:
            raise ModelError(
                f"{path} is truncated: section '{s.name}' ends at byte "
                f"{s.offset + s.size} of {data_len} bytes of section data."
            )
    return info


def section_data(data: bytes, section: SectionInfo) -> bytes:
    """The bytes of one section of a cvimodel file's contents (``data``: the whole file)."""
    body_size = _HEADER.unpack_from(data, 0)[1]
    start = HEADER_SIZE + body_size + section.offset
    return data[start : start + section.size]


def _s(b) -> str:
    return b.decode(errors="replace") if isinstance(b, bytes) else (b or "")


def _tensor(t) -> TensorInfo:
    shape = [int(t.Shape().Dim(i)) for i in range(t.Shape().DimLength())]
    q = t.Quant()
    dtype = _DTYPES.get(t.Dtype(), (f"type{t.Dtype()}", 1))[0]
    return TensorInfo(
        _s(t.Name()),
        shape,
        dtype,
        float(q.Qscale()) if q else 0.0,
        float(q.ZeroPoint()) if q else 0.0,
        _s(t.PixelFormat()),
        bool(t.Aligned()),
        int(t.Size()),
    )


def _io_bytes(t) -> int:
    """model_tool's count of a tensor in io memory (N·C·H·W × element size)."""
    dims = [int(t.Shape().Dim(i)) for i in range(t.Shape().DimLength())]
    dims = (dims + [1, 1, 1, 1])[:4]
    n = 1
    for d in dims:
        n *= d
    return n * _DTYPES.get(t.Dtype(), ("", 1))[1]


def _describe(path: Path, data: bytes, m) -> CviModelInfo:
    v = m.Version()
    sections = []
    for i in range(m.SectionsLength()):
        s = m.Sections(i)
        sections.append(
            SectionInfo(
                _SECTION_TYPES.get(s.Type(), str(s.Type())),
                _s(s.Name()),
                int(s.Size()),
                int(s.Offset()),
                bool(s.Compress()),
                bool(s.Encrypt()),
            )
        )
    programs = []
    for i in range(m.ProgramsLength()):
        p = m.Programs(i)
        tensors = {}
        io = 0
        old = p.NeuronSize() > 0
        for j in range(p.TensorMapLength()):
            t = p.TensorMap(j)
            tensors[_s(t.Name())] = t
            gaddr = int(t.Offset())
            if gaddr != -1:
                mem = (gaddr >> 40) & 0x07
                if (mem > 1 or old) and mem >= _MEM_IO:
                    io += _io_bytes(t)
        ins = [_tensor(tensors[_s(p.InputTensors(j))]) for j in range(p.InputTensorsLength())]
        outs = [_tensor(tensors[_s(p.OutputTensors(j))]) for j in range(p.OutputTensorsLength())]
        routines = [
            "tpu" if p.Routines(j).Type() == 0 else "cpu" for j in range(p.RoutinesLength())
        ]
        cmdbufs = [
            _s(p.Routines(j).TpuRoutine().CmdbufSection())
            for j in range(p.RoutinesLength())
            if p.Routines(j).Type() == 0 and p.Routines(j).TpuRoutine() is not None
        ]
        batch = int(p.BatchNum()) or (ins[0].shape[0] if ins and ins[0].shape else 1)
        programs.append(
            ProgramInfo(
                batch,
                ins,
                outs,
                int(p.SharedGmem()),
                int(p.PrivateGmem()),
                int(p.NeuronSize()),
                io,
                routines,
                cmdbufs,
            )
        )
    # The same sum model_tool --info prints as "CviModel Need ION Memory Size".
    ion = sum(s.size for s in sections)
    ion += sum(p.neuron_size + p.private_gmem for p in programs)
    ion += max((p.shared_gmem for p in programs), default=0)
    ion += sum(p.io_bytes for p in programs)
    return CviModelInfo(
        path=str(path),
        file_size=len(data),
        chip=_s(m.Target()),
        header_version="",
        version=f"{v.Major_()}.{v.Minor_()}.{v.SubMinor()}",
        name=_s(m.Name()),
        build_time=_s(m.BuildTime()),
        mlir_version=_s(m.MlirVersion()),
        md5="",
        programs=programs,
        sections=sections,
        weight_bytes=sum(s.size for s in sections if s.type == "weight"),
        ion_bytes=ion,
    )


def board_fit(info: CviModelInfo, ion_mb: dict[str, float] | None = None) -> dict[str, dict]:
    """Per board: whether the model's chip matches and its memory need fits the ION heap
    assumed for that board (``ion_mb`` overrides the assumptions, by board key)."""
    out = {}
    for key, board in chips.BOARDS.items():
        label, chip = board.label, board.chip
        ion = (ion_mb or {}).get(key, board.ion_mb)
        chip_ok = info.chip == chip
        mem_ok = info.ion_mb <= ion
        if not chip_ok:
            verdict = f"no: built for {info.chip}, the board is {chip}"
        elif not mem_ok:
            verdict = f"no: needs {info.ion_mb:.2f} MB of {ion:g} MB ION"
        else:
            verdict = f"yes: {info.ion_mb:.2f} of {ion:g} MB ION"
        out[key] = {
            "board": label,
            "chip": chip,
            "ion_mb_assumed": ion,
            "chip_ok": chip_ok,
            "fits": chip_ok and mem_ok,
            "verdict": verdict,
        }
    return out
