"""Pieces of the reports that need no build: axis limits, the random-weights note."""

from __future__ import annotations

from duotpu.builder.report import random_weights
from duotpu.config.recipe import recipe_from_dict
from duotpu.core.htmlpage import zoomed_limits


def test_a_tiny_cosine_drop_does_not_look_like_a_cliff():
    lo, hi = zoomed_limits([0.99992, 0.99999, 1.0])
    assert hi - lo >= 0.01  # before: 0.99991..1.0, the drop filled the axis
    lo, hi = zoomed_limits([0.80, 0.95, 1.0])
    assert lo < 0.80 < 0.95 < hi  # a real drop is still shown whole, zoomed


def test_random_weights_are_named():
    def recipe(**model):
        return recipe_from_dict({"name": "n", "model": model}, "test")

    assert random_weights(recipe(source="torchvision:mobilenet_v2"))
    assert not random_weights(recipe(source="torchvision:mobilenet_v2", weights="DEFAULT"))
    assert not random_weights(recipe(source="model.onnx"))


def test_long_names_wrap_at_their_separators_not_mid_word():
    from duotpu.core.htmlpage import breakable

    assert breakable("/model.22/cv2.0/Conv_output_0") == (
        "/<wbr>model.<wbr>22/<wbr>cv2.<wbr>0/<wbr>Conv_<wbr>output_<wbr>0"
    )
    assert breakable("<b>") == "&lt;b&gt;"  # still escaped


def test_every_build_says_which_boards_hold_it():
    """The fit verdict the build summary and report give every model (issue 27 item 4): a
    model above every board's ION heap of its chip is flagged, not hidden."""
    from duotpu.builder.summary import board_fits, fit_text

    assert [(f.board, f.fits) for f in board_fits("cv180x", 3.2)] == [("Duo", True)]
    assert fit_text("cv180x", 3.2) == "ION 3.20 MB: Duo ✓"
    big = fit_text("cv180x", 20.96)  # a 480x640 text detector in INT8
    assert "fits NO cv180x board" in big and "the Duo reserves 16 MB" in big
    mid = fit_text("cv181x", 72.0)  # between the Duo S's and the Duo 256M's heaps
    assert mid == "ION 72.00 MB: Duo 256M ✓, Duo S ✗ (reserves 70 MB)"
    assert "no Duo board" in fit_text("cv183x", 1.0)


def test_one_table_of_chips_and_boards_is_what_every_layer_reads():
    """The chip table (config/chips.py) is the only source: the latency model's lanes, the fit
    verdict's ION heaps, the board check's SoC names."""
    from duotpu import latency
    from duotpu.board.checks import chip_of_soc
    from duotpu.builder.summary import board_fits
    from duotpu.config.chips import BOARDS, CHIPS, boards_of

    assert latency.LANES == {name: c.lanes for name, c in CHIPS.items()}
    assert latency.constants_for("cv183x").lanes == CHIPS["cv183x"].lanes == 32
    assert [f.ion_mb for f in board_fits("cv181x", 1.0)] == [b.ion_mb for b in boards_of("cv181x")]
    assert {b.chip for b in BOARDS.values()} <= set(CHIPS)
    assert chip_of_soc("cvitek,cv1800b") == "cv180x" and chip_of_soc("sophgo,sg2002") == "cv181x"
    assert chip_of_soc("allwinner,d1") == ""
