"""The conversion on other Beam runners: DaskRunner against a real ``dask.distributed`` cluster
(equal output to the DirectRunner's), and the options for Flink, Spark and Dataflow."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from apache_beam.runners.dask.dask_runner import DaskOptions

from pipeline.core.params import ConvertParams, DataParams, params_from_dict
from pipeline.data.conversion import DASK_RUNNER, convert_dataset, pipeline_options

from tests.data.helpers import decode_records
from tests.paths import ROOT, SHARED
from tests.services import dask_cluster

DATASETS = {"bccd": DataParams(format="voc", root=str(SHARED / "datasets/bccd_voc/BCCD")),
            "rbc_coco": DataParams(format="coco", root=str(SHARED / "datasets/rbc_coco"))}


def test_dask_runner_options() -> None:
    """``runner: dask`` names Beam's DaskRunner by class path (the short name is not
    registered), the scheduler address reaches it, one shard per Dask partition unless
    ``pipeline_args`` choose."""
    options = pipeline_options(ConvertParams(runner="dask", dask_address="tcp://10.0.0.5:8786"), 9)
    assert options.get_all_options()["runner"] == DASK_RUNNER
    dask = options.view_as(DaskOptions).get_all_options(drop_default=True, current_only=True)
    assert dask == {"address": "tcp://10.0.0.5:8786", "partition_size": 1}
    mine = ConvertParams(runner="dask", pipeline_args=("--dask_npartitions=3",))
    dask = pipeline_options(mine, 9).view_as(DaskOptions).get_all_options(
        drop_default=True, current_only=True)
    assert dask == {"npartitions": 3}  # no address: DaskRunner starts a local cluster


def _examples(shard: Path) -> list:
    """The shard's records parsed as tf.train.Example, in order (protobuf equality compares
    every feature; the bytes may differ: a map's serialization order is not fixed)."""
    import tensorflow as tf

    return [tf.train.Example.FromString(record.numpy())
            for record in tf.data.TFRecordDataset(str(shard))]


def _converted(folder: Path) -> dict:
    """Everything a conversion wrote that must not depend on the runner."""
    shards = sorted(folder.glob("*.tfrecord-*"))
    return {
        "examples": {f.name: _examples(f) for f in shards},
        "label_map": (folder / "label_map.pbtxt").read_text(),
        "report": json.loads((folder / "data_report.json").read_text()),
        "report_md": (folder / "data_report.md").read_text(),
        "decoded": decode_records(shards),
    }


@pytest.mark.slow
@pytest.mark.skipif(not SHARED.is_dir(), reason=f"{SHARED} (shared datasets) absent")
def test_dask_cluster_output_equals_direct_runner(tmp_path: Path) -> None:
    """BCCD (VOC) and the RBC COCO set on a scheduler and 2 worker processes started here: the
    records (every feature, and as the OD API decodes them), label map, data report and counters equal the DirectRunner's."""
    direct = {name: convert_dataset(data, ConvertParams(num_shards=3), tmp_path / f"direct-{name}")
              for name, data in DATASETS.items()}
    with dask_cluster(tmp_path / "dask") as address:
        dask = ConvertParams(num_shards=3, runner="dask", dask_address=address)
        on_dask = {name: convert_dataset(data, dask, tmp_path / f"dask-{name}")
                   for name, data in DATASETS.items()}
    for name in DATASETS:
        assert on_dask[name] == direct[name]  # the report the stage returns, counters included
        expected, got = (_converted(tmp_path / f"{kind}-{name}") for kind in ("direct", "dask"))
        assert got["report"]["counters"]["images_written"] == got["report"]["images"] > 0
        for key in ("examples", "label_map", "report", "report_md"):
            assert got[key] == expected[key], f"{name}: {key} differs on Dask"
        assert sorted(got["decoded"]) == sorted(expected["decoded"])
        for source_id, want in expected["decoded"].items():
            np.testing.assert_array_equal(got["decoded"][source_id]["boxes"], want["boxes"])
            assert got["decoded"][source_id]["classes"] == want["classes"]
            assert got["decoded"][source_id]["shape"] == want["shape"]


def _documented_convert_params(heading: str) -> dict:
    """The ``convert:`` params of the first YAML block under ``### heading`` in
    docs/scale-out.md."""
    section = (ROOT / "docs/scale-out.md").read_text().split(f"\n### {heading}\n", 1)[1]
    block = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    return yaml.safe_load(block)["convert"]


@pytest.mark.parametrize("heading,runner", [("Dataflow", "DataflowRunner"),
                                            ("Flink", "FlinkRunner"), ("Spark", "SparkRunner")])
def test_documented_runner_options_reach_beam(heading: str, runner: str) -> None:
    """Every option docs/scale-out.md gives for a runner reaches Beam's PipelineOptions with
    the value written there (these runners cannot run here)."""
    documented = _documented_convert_params(heading)
    convert = params_from_dict({"convert": documented}).convert
    options = pipeline_options(convert, 100_000).get_all_options()
    assert documented["runner"] == options["runner"] == runner
    assert len(documented["pipeline_args"]) >= 3
    for arg in documented["pipeline_args"]:
        name, value = arg.removeprefix("--").split("=", 1)
        assert str(options[name]) == value, arg


def test_documented_dask_params() -> None:
    documented = _documented_convert_params("Dask")
    options = pipeline_options(params_from_dict({"convert": documented}).convert, 10)
    assert options.get_all_options()["runner"] == DASK_RUNNER
    assert options.view_as(DaskOptions).address == documented["dask_address"]
