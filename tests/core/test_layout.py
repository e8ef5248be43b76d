"""dvc.yaml and the stages agree on every path: the stage commands pass the defaults of
pipeline.core.layout, so running a stage by hand without options does what DVC does."""
import shlex
from pathlib import Path

import pytest
import yaml

from pipeline.cli import build_parser
from pipeline.core import layout
from tests.paths import ROOT

DVC_STAGES = yaml.safe_load((ROOT / layout.DVC_FILE).read_text())["stages"]


@pytest.mark.parametrize("stage", sorted(DVC_STAGES))
def test_dvc_commands_pass_the_stage_defaults(stage):
    argv = shlex.split(DVC_STAGES[stage]["cmd"])
    assert argv[:4] == ["python", "-m", "pipeline", stage]
    parser = build_parser(stage)
    given = vars(parser.parse_args(argv[3:]))
    defaults = vars(parser.parse_args([stage]))
    options = [a for a in argv[4:] if a.startswith("--")]
    assert options, f"stage {stage} passes no paths"
    for option in options:
        key = option[2:].replace("-", "_")
        assert Path(str(given[key])) == Path(str(defaults[key])), (
            f"dvc.yaml passes {option} {given[key]} to {stage}, the stage's default is "
            f"{defaults[key]}")


def test_dvc_outputs_are_the_layout_paths():
    outs = {stage: [next(iter(o)) if isinstance(o, dict) else o for o in spec.get("outs", [])]
            for stage, spec in DVC_STAGES.items()}
    assert str(layout.SAMPLE_DIR) in outs["sample"]
    assert str(layout.RECORDS_DIR) in outs["convert"]
    assert str(layout.PIPELINE_CONFIG) in outs["configure"]
    assert str(layout.MODEL_DIR) in outs["train"]
    assert str(layout.EXPORT_DIR) in outs["export"]
    report_outs = outs["report"] + [next(iter(m)) for m in DVC_STAGES["report"]["metrics"]]
    assert str(layout.REPORTS_DIR / layout.METRICS_FILE) in report_outs
    assert str(layout.REPORTS_DIR / layout.REPORT_HTML) in report_outs


def test_record_files_lists_only_the_split_shards_in_order(tmp_path):
    for split, index in [("train", 1), ("train", 0), ("test", 0)]:
        (tmp_path / layout.shard_name(split, index, 2)).write_bytes(b"")
    (tmp_path / "train.tfrecord-dir").mkdir()  # not a file: not a shard
    assert [Path(p).name for p in layout.record_files(tmp_path, "train")] == [
        "train.tfrecord-00000-of-00002", "train.tfrecord-00001-of-00002"]
