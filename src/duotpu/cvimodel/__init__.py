"""The cvimodel file format: the header, the flatbuffer model description (programs, tensors,
sections) and the TPU command buffers, read without starting a process.

``reader`` reads and checks a file and its board memory; ``cmdbuf`` decodes its TIU / TDMA
commands; ``schema`` loads the flatbuffers code generated at install time.
"""

from __future__ import annotations

from .reader import (
    HEADER_SIZE,
    CviModelInfo,
    ProgramInfo,
    SectionInfo,
    TensorInfo,
    board_fit,
    read_cvimodel,
    section_data,
)

__all__ = [
    "HEADER_SIZE",
    "CviModelInfo",
    "ProgramInfo",
    "SectionInfo",
    "TensorInfo",
    "board_fit",
    "read_cvimodel",
    "section_data",
]
