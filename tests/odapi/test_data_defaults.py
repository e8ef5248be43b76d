"""Defaults derived from a data report (pure functions on a report fixture, no TensorFlow)."""
from __future__ import annotations

import math

import pytest

from pipeline.core.errors import PipelineError
from pipeline.core.params import ModelParams, TrainParams
from pipeline.core.records import ImageRecord, ObjectAnnotation
from pipeline.data import health
from pipeline.data.beam import SplitSummaryFn
from pipeline.odapi import data_defaults
from pipeline.odapi.data_defaults import DERIVED, PINNED, TEMPLATE, TemplateFacts

#: The default template as data_defaults sees it: 256 px (up to 384), squashing resizer,
#: ratios 1, 2, 0.5, smallest anchor 3 x 2^3 = 24 px, 50 boxes.
CPU = TemplateFacts(image_size=256, input_sizes=(256, 320, 384), keeps_aspect=False,
                    aspect_ratios=(1.0, 2.0, 0.5), smallest_anchor=(24.0, 0.0), max_boxes=50)

#: BCCD-like: 640x480 images, five 100 px cells and one 30 px platelet in each.
BLOOD = [[("cell", 100, 100)] * 5 + [("platelet", 30, 30)]] * 20
#: The same with 10 px platelets: too small for every input size of the template.
SPECKS = [[("cell", 100, 100)] * 5 + [("platelet", 10, 10)]] * 20
STEP_COST_320 = " (a step costs ~1.56x 256 px's)"


def data_report(images: list[list[tuple[str, float, float]]],
                size: tuple[int, int] = (640, 480)) -> dict:
    """The data report convert writes for train ``images`` ((label, width, height) boxes in
    pixels), through the same statistics code (health.image_stats, SplitSummaryFn)."""
    summary, combine = SplitSummaryFn().create_accumulator(), SplitSummaryFn()
    for index, boxes in enumerate(images):
        objects = tuple(ObjectAnnotation(label, 1, 1, 1 + w, 1 + h) for label, w, h in boxes)
        record = ImageRecord(str(index), f"{index}.jpg", size[0], size[1], "train", objects)
        summary = combine.add_input(summary, health.image_stats(record))
    train = health.split_report(len(images), summary, 1, [])
    return {"max_objects_per_image": train["max_objects_per_image"], "splits": {"train": train}}


def derive(report: dict, model=ModelParams(), train=TrainParams(), facts=CPU,
           fine_tuning=False) -> data_defaults.Defaults:
    return data_defaults.derive(report, facts, model, train, fine_tuning)


def test_input_size_is_the_smallest_that_keeps_every_class_s_small_boxes_visible():
    # A 30 px platelet of a 640x480 image is 13.9 px at 256 (squashed), 17.3 px at 320.
    defaults = derive(data_report(BLOOD))
    assert (defaults.image_size.value, defaults.image_size.source) == (320, DERIVED)
    assert defaults.image_size.reason == ("input 320 px: keeps 100% of every class's boxes "
                                          f">= 16 px{STEP_COST_320}")
    # Without the small class, the template's own size is enough.
    cells_only = data_report([[("cell", 100, 100)] * 5] * 20)
    assert derive(cells_only).image_size.value == 256
    assert derive(cells_only).image_size.reason.endswith("boxes >= 16 px")  # no extra cost


def test_one_rare_small_class_counts_as_much_as_a_frequent_one():
    """95% of *every* class: 2 small boxes among 200 still raise the input size."""
    images = [[("cell", 100, 100)] * 10] * 20 + [[("platelet", 30, 30)]] * 2
    assert derive(data_report(images)).image_size.value == 320


def test_input_size_stops_at_the_templates_cost_cap():
    defaults = derive(data_report([[("dot", 5, 5), ("cell", 100, 100)]] * 10))
    assert defaults.image_size.value == 384
    assert defaults.image_size.reason.startswith(
        "input 384 px (the template's cost cap): keeps only 0% of class 'dot'")
    assert defaults.image_size.reason.endswith(" (a step costs ~2.25x 256 px's)")


def test_the_template_s_aspect_ratios_are_kept_while_they_fit_every_class():
    # Round cells squashed to 0.75 and square platelets: 1 fits both (IoU 0.76 and 1).
    ratios = derive(data_report(BLOOD)).aspect_ratios
    assert (ratios.value, ratios.source) == ((1.0, 2.0, 0.5), TEMPLATE)
    assert ratios.reason == ("anchor aspect ratios 1, 2, 0.5: the template's (they fit 100% of "
                             "every class's boxes)")


@pytest.mark.parametrize("ratio, fits", [(1.0, True), (0.4, True), (1.4, True), (2.6, True),
                                         (0.25, False), (4.0, False), (8.0, False)])
def test_a_template_ratio_fits_a_box_when_a_same_area_anchor_overlaps_it_enough(ratio, fits):
    boxes = data_defaults.train_boxes(data_report([[("a", 40 * ratio, 40)]], size=(800, 800)),
                                      keeps_aspect=False)
    assert (data_defaults.ratios_fit(boxes, CPU.aspect_ratios)["a"] >= 0.95) == fits


def test_aspect_ratios_are_a_k_means_of_the_boxes_when_the_template_s_do_not_fit():
    # Square images: the aspect ratio at the input is the boxes' own; text-line-like boxes
    # 4, 6 and 8 times wider than high, which no template ratio (0.5, 1, 2) fits.
    images = [[("a", 80, 20), ("b", 120, 20), ("c", 160, 20), ("b", 90, 15)]] * 10
    ratios = derive(data_report(images, size=(400, 400))).aspect_ratios
    assert ratios.source == DERIVED and len(ratios.value) == 3
    for fitted, wanted in zip(ratios.value, (4.0, 6.0, 8.0)):
        assert fitted == pytest.approx(wanted, rel=0.1)  # within a bin of the report (9%)
    assert ratios.reason.startswith(
        f"anchor aspect ratios {', '.join(f'{r:g}' for r in ratios.value)}: k-means of 40 train")
    assert ratios.reason.endswith("(the template's fit only 0% of class 'a''s boxes)")


def test_one_class_the_template_does_not_fit_is_enough_to_fit_the_ratios():
    images = [[("cell", 50, 50)] * 20 + [("line", 200, 20)]] * 5
    ratios = derive(data_report(images, size=(400, 400))).aspect_ratios
    assert ratios.source == DERIVED and ratios.reason.endswith("of class 'line''s boxes)")


def test_aspect_ratios_follow_the_resizer_frame():
    """A 400x40 box of a 640x480 image squashed into a square is 7.5 wide per high; a
    keep-aspect resizer keeps it at 10."""
    report = data_report([[("line", 400, 40)]] * 5)
    squashed = derive(report).aspect_ratios.value
    kept = derive(report, facts=TemplateFacts(**{**vars(CPU), "keeps_aspect": True}))
    assert squashed == (pytest.approx(7.5, rel=0.1),)  # one cluster: the ratios are distinct
    assert kept.aspect_ratios.value == (pytest.approx(10.0, rel=0.1),)


def test_anchors_shrink_to_match_small_boxes_but_never_grow():
    # At 384 px (the cost cap) 10 px platelets are 7 px: a 24 px anchor overlaps them with
    # IoU 0.09, so the anchors shrink, by at most half (12 px: IoU 0.34 still needs the next
    # closest anchor).
    small = derive(data_report(SPECKS)).anchor_factor
    assert (small.value, small.source) == (data_defaults.MIN_ANCHOR_FACTOR, DERIVED)
    assert small.reason.startswith("anchors x0.5: smallest 12 px matches boxes down to 8 px "
                                   "(class 'platelet'")
    # 20 px boxes at 256 px: sqrt(2) x 20 = 28 px > 24 px, the template's anchors match them.
    large = derive(data_report([[("cell", 50, 50)]] * 10, size=(640, 640))).anchor_factor
    assert large.value == 1.0
    # In between: 12 px boxes want a 17 px anchor: 24 px x 0.71.
    between = derive(data_report([[("cell", 12, 12)]] * 10, size=(256, 256)),
                     ModelParams(image_size=256)).anchor_factor
    assert between.value == pytest.approx(math.sqrt(2) * 12 / 24, abs=0.05)


def test_steps_are_epochs_times_train_images_over_the_batch_when_num_steps_is_0():
    report = data_report(BLOOD)  # 20 train images
    steps = derive(report, train=TrainParams(num_steps=0, epochs=30, batch_size=16)).num_steps
    assert (steps.value, steps.source) == (math.ceil(30 * 20 / 16), DERIVED)
    assert steps.reason == "num_steps 38: 30 epochs x 20 train images / batch 16"
    assert data_defaults.steps_for_epochs(32, 400, 8) == 1600  # the demo's 1600 steps
    with pytest.raises(PipelineError, match="train.num_steps 0 .* run the convert stage"):
        derive({}, train=TrainParams(num_steps=0))


def test_max_boxes_is_the_busiest_image_and_never_fewer():
    report = data_report(BLOOD)  # 6 objects per image
    assert (derive(report).max_boxes.value, derive(report).max_boxes.source) == (6, DERIVED)
    assert derive(report, train=TrainParams(max_boxes=9)).max_boxes.value == 9
    floor = derive(report, train=TrainParams(max_boxes=2)).max_boxes
    assert (floor.value, floor.source) == (6, DERIVED)
    assert "train.max_boxes 2 would drop labelled boxes" in floor.reason


def test_a_pinned_param_always_wins_over_the_derived_value():
    model = ModelParams(image_size=256, anchor_aspect_ratios=(1.0, 3.0), anchor_min_size=30)
    train = TrainParams(num_steps=500, max_boxes=40)
    defaults = derive(data_report(BLOOD), model, train)
    assert [(c.key, c.value, c.source) for c in defaults.choices()] == [
        ("image_size", 256, PINNED), ("anchor_aspect_ratios", (1.0, 3.0), PINNED),
        ("anchor_factor", 1.25, PINNED), ("max_boxes", 40, PINNED), ("num_steps", 500, PINNED)]
    # ... and the same data without the pins derives other values (the template's ratios
    # fit these boxes: kept, not pinned).
    derived = derive(data_report(BLOOD), train=TrainParams(num_steps=0))
    assert [c.source for c in derived.choices()] == [DERIVED, TEMPLATE, DERIVED, DERIVED,
                                                     DERIVED]
    assert [c.value for c in derived.choices()] != [c.value for c in defaults.choices()]


def test_without_box_shapes_the_template_s_values_are_kept():
    """An older report (no box_shapes) or none at all: configure renders what it did before."""
    for report in ({}, {"max_objects_per_image": 77}):
        defaults = derive(report)
        assert defaults.image_size.value == 256 and defaults.image_size.source == TEMPLATE
        assert defaults.aspect_ratios.value == (1.0, 2.0, 0.5)
        assert defaults.anchor_factor.value == 1.0
    assert derive({}).max_boxes.value == 50
    assert derive({"max_objects_per_image": 77}).max_boxes.value == 77


def test_fine_tuning_keeps_the_template_s_anchors():
    defaults = derive(data_report(BLOOD), fine_tuning=True)
    assert defaults.aspect_ratios.value == CPU.aspect_ratios
    assert defaults.anchor_factor.value == 1.0
    assert "fine-tuning" in defaults.anchor_factor.reason
    assert defaults.image_size.value == 320  # the input size is still the data's


def test_each_value_has_one_log_line_and_mlflow_params():
    defaults = derive(data_report(BLOOD))
    assert len(defaults.lines()) == len(defaults.choices()) == 5
    assert defaults.lines()[0] == ("input 320 px: keeps 100% of every class's boxes >= 16 px"
                                   f"{STEP_COST_320} [derived]")
    params = defaults.mlflow_params()
    assert params["derived.image_size"] == "320"
    assert params["derived.image_size.why"] == defaults.lines()[0]
    assert params["derived.anchor_factor"] == "1.0"
