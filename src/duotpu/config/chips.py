"""The one table of CV18xx chips and the Duo boards: every layer reads its chip and board facts
here (the fit check, the latency model's lane count, the board's SoC → chip, messages)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Chip:
    """A CV18xx TPU family as tpu_mlir names it (``--chip``)."""

    name: str  # "cv180x"
    lanes: int  # TPU lanes (NPU_NUM), sophgo/cvikernel cv18xx_tpu_cfg.h
    socs: tuple[str, ...]  # SoC names (device tree) whose TPU it is
    boards: str  # the boards it is in, for messages


@dataclass(frozen=True)
class Board:
    """A board duotpu checks fits against: its chip and the ION (TPU) memory its stock image
    reserves. The Duo's images reserve between ~16 and ~27 MB by release: 16 is the cautious
    default (``duotpu info --ion duo=MB`` overrides it)."""

    key: str  # "duo"
    label: str  # "Milk-V Duo (CV1800B, 64 MB)"
    short: str  # "Duo"
    chip: str
    ion_mb: float


#: local memory per TPU lane in KB (cvikernel cv18xx_tpu_cfg.h): the same on every CV18xx
LOCAL_MEMORY_KB = 32

CHIPS: dict[str, Chip] = {
    c.name: c
    for c in (
        Chip("cv180x", 2, ("cv1800b", "cv1801b", "cv180"), "Milk-V Duo (CV1800B)"),
        Chip(
            "cv181x",
            8,
            ("sg2002", "sg2000", "cv1812", "cv181"),
            "Milk-V Duo 256M / Duo S (SG2002/SG2000)",
        ),
        Chip("cv182x", 8, ("cv182",), "CV182x boards"),
        Chip("cv183x", 32, ("cv183",), "CV183x boards"),
    )
}

BOARDS: dict[str, Board] = {
    b.key: b
    for b in (
        Board("duo", "Milk-V Duo (CV1800B, 64 MB)", "Duo", "cv180x", 16.0),
        Board("duo256m", "Milk-V Duo 256M (SG2002)", "Duo 256M", "cv181x", 75.0),
        Board("duos", "Milk-V Duo S (SG2000, 512 MB)", "Duo S", "cv181x", 70.0),
    )
}


def chip_of_soc(soc: str) -> str:
    """The TPU chip (cv180x, cv181x, …) of a SoC name from the device tree ("" if unknown)."""
    s = soc.lower()
    return next((c.name for c in CHIPS.values() for key in c.socs if key in s), "")


def boards_of(chip: str) -> list[Board]:
    """The boards with ``chip``'s TPU, in table order."""
    return [b for b in BOARDS.values() if b.chip == chip]
