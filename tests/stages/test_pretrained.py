"""The pretrained stage writes the folder configure reads; real `dvc repro`, push and pull share
it (slow)."""
from __future__ import annotations

import argparse
import shutil

import pytest
import yaml

from pipeline.core import layout
from pipeline.core.params import Params
from pipeline.odapi import checkpoints
from pipeline.odapi import templates as zoo
from pipeline.stages import pretrained
from tests.odapi import test_pretrained
from tests.odapi.test_pretrained import NAME

checkpoint_dir = test_pretrained.checkpoint_dir  # fixtures: a tiny checkpoint served as the zoo's
served_zoo = test_pretrained.served_zoo


def test_the_stage_writes_the_folder_for_the_params(tmp_path):
    output = tmp_path / "models" / "pretrained"
    pretrained.run(argparse.Namespace(output=output), Params())
    assert (output / layout.PRETRAINED_NONE).is_file()


@pytest.mark.slow
def test_dvc_tracks_the_pretrained_checkpoint_and_shares_it_by_push_and_pull(
        served_zoo, tmp_path):
    """Real `dvc repro pretrained` in a copy of the project: the first run downloads and pins
    (the project's lock file), dvc.lock records the folder's hash, a second run does nothing,
    and `dvc pull` gives the same bytes back with no server and an empty cache."""
    from tests.stages.test_end_to_end import make_project, run

    project = make_project(tmp_path / "proj", {"model": {
        "name": NAME, "checkpoint": "zoo", "checkpoint_url": served_zoo.url}})
    lock_file = project / "configs" / layout.CHECKPOINTS_LOCK
    run(["dvc", "repro", "pretrained"], project)
    assert zoo.spec_for(NAME).zoo_archive in checkpoints.read_lock(lock_file)
    assert served_zoo.requests == 1
    stage = yaml.safe_load((project / layout.DVC_LOCK).read_text())["stages"]["pretrained"]
    assert stage["outs"][0]["path"] == str(layout.PRETRAINED_DIR) and stage["outs"][0]["md5"]
    result = run(["dvc", "repro", "pretrained"], project)
    assert "Running stage" not in result.stdout and served_zoo.requests == 1

    run(["dvc", "remote", "add", "-d", "local", str(tmp_path / "remote")], project)
    run(["dvc", "push", "pretrained"], project)
    index = project / layout.PRETRAINED_DIR / "checkpoint" / "ckpt-0.index"
    expected = index.read_bytes()
    shutil.rmtree(project / layout.PRETRAINED_DIR)
    shutil.rmtree(project / ".dvc" / "cache")
    shutil.rmtree(tmp_path / "cache")
    served_zoo.httpd.shutdown()
    run(["dvc", "pull", "pretrained"], project)
    assert index.read_bytes() == expected
    assert "Running stage" not in run(["dvc", "repro", "pretrained"], project).stdout
