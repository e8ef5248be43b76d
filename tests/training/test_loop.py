"""The segmented training loop (pipeline/training/loop.py) and its typed inputs: model_main_tf2
flags, segments, the schedule read from the config, the events trackers attach to."""
import dataclasses
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.core import compat
from pipeline.core.errors import PipelineError
from pipeline.core.params import TrainParams
from pipeline.training import inputs, loop


def test_default_argv_lets_model_main_use_mirrored_strategy_on_local_devices(tmp_path):
    argv = loop.model_main_argv(tmp_path / "p.config", tmp_path / "m", 300, 100)
    assert argv[0] == "model_main_tf2"
    assert f"--pipeline_config_path={tmp_path / 'p.config'}" in argv
    assert "--num_train_steps=300" in argv and "--checkpoint_every_n=100" in argv
    assert "--num_workers=1" in argv
    assert not any(a.startswith(("--use_tpu", "--tpu_name")) for a in argv)


# model_main_tf2's absl flags clash with exporter_main_v2's (both define pipeline_config_path),
# so they are parsed in a fresh interpreter, as the train stage's own process does.
_PARSE_MODEL_MAIN_FLAGS = """
import json, sys
from pipeline.core import compat
compat.apply()
from absl import flags
from object_detection import model_main_tf2  # noqa: F401 - defines the flags
flags.FLAGS(json.loads(sys.argv[1]))
print(json.dumps({k: flags.FLAGS[k].value for k in ("num_workers", "use_tpu", "tpu_name",
                                                      "num_train_steps")}))
"""


def parsed_model_main_flags(argv: list[str]) -> dict:
    result = subprocess.run([sys.executable, "-c", _PARSE_MODEL_MAIN_FLAGS, json.dumps(argv)],
                            capture_output=True, text=True, timeout=300, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_workers_and_tpu_become_model_main_flags_it_parses(tmp_path):
    argv = loop.model_main_argv(tmp_path / "p.config", tmp_path / "m", 10, 5, num_workers=4)
    parsed = parsed_model_main_flags(argv)
    assert parsed["num_workers"] == 4 and not parsed["use_tpu"]
    argv = loop.model_main_argv(tmp_path / "p.config", tmp_path / "m", 10, 5, tpu_name="tpu-1")
    parsed = parsed_model_main_flags(argv)
    assert parsed["use_tpu"] and parsed["tpu_name"] == "tpu-1"
    assert parsed["num_train_steps"] == 10


@pytest.mark.parametrize("start, steps, every, expected", [
    (0, 800, 200, [200, 400, 600, 800]),
    (300, 800, 200, [400, 600, 800]),
    (0, 50, 0, [50]),
    (0, 250, 100, [100, 200, 250]),
    (800, 800, 200, []),
])
def test_segments_end_at_each_evaluation_and_at_the_last_step(start, steps, every, expected):
    assert loop.segment_ends(start, steps, every) == expected


def make_run(config: Path, **changes) -> inputs.TrainingRun:
    """A run of 20 steps evaluated every 10, its files beside ``config``."""
    folder = config.parent
    run = inputs.TrainingRun(
        config=config, model_dir=folder / "train", data_dir=folder / "data",
        curves=folder / "curves.csv", eval_curves=folder / "eval.csv", metrics=folder / "m.json",
        schedule=inputs.Schedule(num_steps=20, batch_size=2, peak_learning_rate=0.1),
        checkpoint_every_n=10, eval_every_n=10, best_metric="map", seed=0)
    return dataclasses.replace(run, **changes)


CONFIG = """model {{ ssd {{ num_classes: 1 }} }}
train_config {{ batch_size: 3 num_steps: {steps} optimizer {{ momentum_optimizer {{ learning_rate
  {{ cosine_decay_learning_rate {{ learning_rate_base: 0.04 total_steps: 77 }} }} }} }} }}
"""


def test_batch_size_and_steps_come_from_the_config_not_from_params(tmp_path):
    compat.apply()
    config = tmp_path / "p.config"
    config.write_text(CONFIG.format(steps=77))
    run = inputs.TrainingRun.from_config(
        config, TrainParams(batch_size=16, num_steps=800, eval_every_n=5), model_dir=tmp_path,
        data_dir=tmp_path, curves=tmp_path, eval_curves=tmp_path, metrics=tmp_path)
    assert (run.num_steps, run.batch_size) == (77, 3)
    assert run.schedule.peak_learning_rate == pytest.approx(0.04)
    assert run.eval_every_n == 5
    config.write_text(CONFIG.format(steps=0))
    with pytest.raises(PipelineError, match="num_steps is 0"):
        inputs.read_schedule(config)


class FakeTracker:
    """Records the events it is called for; has no on_checkpoint (optional events)."""

    def __init__(self):
        self.events = []

    def on_train_start(self):
        self.events.append(("start",))

    def on_evaluation(self, step, metrics):
        self.events.append(
            ("evaluation", step, metrics and metrics["DetectionBoxes_Precision/mAP"]))

    def on_best_checkpoint(self, step, folder):
        self.events.append(("best", step, (folder / "checkpoint").is_file()))

    def on_train_end(self):
        self.events.append(("end",))

    def on_train_failed(self, error):
        self.events.append(("failed", str(error).split(";")[0]))

    def on_budget_planned(self, plan):
        self.events.append(("planned", plan.num_steps))

    def on_stopped_early(self, step, reason):
        self.events.append(("stopped", step, reason))


@pytest.fixture
def fake_od_api(tmp_path, monkeypatch):
    """The loop with model_main_tf2 replaced by a fake that checkpoints the segment's last
    step (or hands the monitor a NaN loss at a step in ``nan_at``), and evaluation by a table."""
    compat.apply()
    state = {"monitor": None, "nan_at": None, "disk_reads": 0}
    monkeypatch.setattr(loop.training_hooks, "observe_train_steps",
                        lambda monitor, every_n: state.update(monitor=monitor))
    monkeypatch.setattr(loop, "has_records", lambda data_dir, split: True)
    monkeypatch.setattr(loop, "fingerprint", lambda config, run: {"model": "m"})
    maps = {10: 0.5, 20: 0.4}
    monkeypatch.setattr(loop.checkpoint_eval, "evaluate_checkpoint", lambda config, checkpoint,
                        summary_dir: {"DetectionBoxes_Precision/mAP": maps[int(checkpoint[-2:])]})

    def read_step_from_disk(model_dir):
        state["disk_reads"] += 1
        return 10

    monkeypatch.setattr(loop.training_hooks, "checkpoint_step", read_step_from_disk)

    def save(model_dir: Path, step: int) -> None:
        prefix = model_dir / f"ckpt-{step}"
        prefix.with_suffix(".index").write_text("x")
        (model_dir / "checkpoint").write_text(f'model_checkpoint_path: "{prefix.name}"\n')
        loop.training_hooks._checkpoint_callback(step, str(prefix))  # what hook A reports

    def model_main(argv):
        """As train_loop: a checkpoint every checkpoint_every_n steps and at the last step."""
        flags = dict(a.lstrip("-").split("=", 1) for a in argv[1:])
        model_dir = Path(flags["model_dir"])
        state.setdefault("intervals", []).append(int(flags["checkpoint_every_n"]))
        if not (model_dir / "checkpoint").is_file():
            if state.get("restored"):  # as hook E reports a fine-tuning restore
                loop.restore_report._callback(state["restored"])
            save(model_dir, 0)  # as train_loop does before its first step
        if state["nan_at"]:
            state["monitor"](state["nan_at"], math.nan)
        start, end = step_on_disk(model_dir), int(flags["num_train_steps"])
        every = int(flags["checkpoint_every_n"])
        for step in range(start + every, end, every):
            save(model_dir, step)
        save(model_dir, end)

    def latest_checkpoint(model_dir: Path) -> str | None:
        listed = model_dir / "checkpoint"
        return str(model_dir / listed.read_text().split('"')[1]) if listed.is_file() else None

    monkeypatch.setattr(loop, "train_with_model_main", model_main)
    monkeypatch.setattr(loop, "latest_checkpoint", latest_checkpoint)
    return state


def test_the_loop_reports_its_events_to_an_attached_tracker(tmp_path, fake_od_api):
    training = loop.SegmentedTraining(make_run(tmp_path / "p.config"))
    tracker, saved = FakeTracker(), []
    training.add_callbacks(tracker)
    training.add_callback("on_checkpoint", lambda step, path: saved.append(step))
    training.train()
    assert tracker.events == [("start",), ("best", 10, True), ("evaluation", 10, 0.5),
                              ("evaluation", 20, 0.4), ("end",)]
    assert saved == [0, 10, 20] and training.step == 20
    assert json.loads((tmp_path / "m.json").read_text())["best_step"] == 10
    assert fake_od_api["disk_reads"] == 0  # a fresh directory: nothing to read
    with pytest.raises(ValueError, match="unknown training event 'on_epoch'"):
        training.add_callback("on_epoch", print)


def test_one_process_evaluates_inside_training_without_restarting_it(tmp_path, fake_od_api):
    # Evaluations every 10 steps, checkpoints every 4: one model_main call to step 20 whose
    # checkpoints land on every 2nd step (gcd), each evaluation step's evaluated as it is saved.
    run = make_run(tmp_path / "p.config", checkpoint_every_n=4)
    training = loop.SegmentedTraining(run)
    tracker, saved = FakeTracker(), []
    training.add_callbacks(tracker)
    training.add_callback("on_checkpoint", lambda step, path: saved.append(step))
    training.train()
    assert fake_od_api["intervals"] == [2]  # a single training call
    assert saved == list(range(0, 21, 2))
    assert [e[1] for e in tracker.events if e[0] == "evaluation"] == [10, 20]


@pytest.mark.parametrize("checkpoint_every_n, eval_every_n, expected", [
    (200, 400, 200), (200, 300, 100), (1000, 400, 200), (7, 0, 7)])
def test_checkpoints_land_on_every_evaluation_step(checkpoint_every_n, eval_every_n, expected):
    assert loop.checkpoint_interval(checkpoint_every_n, eval_every_n) == expected


def test_a_fine_tuning_restore_is_written_and_reported_once(tmp_path, fake_od_api):
    from pipeline.core import layout

    fake_od_api["restored"] = {"restored_variables": 7, "unrestored_variables": 0}
    training = loop.SegmentedTraining(make_run(tmp_path / "p.config"))
    reports = []
    training.add_callback("on_fine_tune_restore", reports.append)
    training.train()
    assert reports == [fake_od_api["restored"]]  # the second segment resumes: no restore
    written = tmp_path / "train" / layout.FINE_TUNE_RESTORE_FILE
    assert json.loads(written.read_text()) == fake_od_api["restored"]
    assert loop.restore_report._callback is None  # not left behind after training


def test_a_nan_loss_reports_failure_not_end_and_names_the_last_checkpoint(tmp_path,
                                                                           fake_od_api):
    training = loop.SegmentedTraining(make_run(tmp_path / "p.config"))
    tracker = FakeTracker()
    training.add_callbacks(tracker)
    fake_od_api["nan_at"] = 3
    with pytest.raises(PipelineError, match=r"Last good checkpoint: .*ckpt-0 \(step 0\)"):
        training.train()
    assert tracker.events == [
        ("start",), ("failed", "training stopped: the total loss is nan at step 3")]


def test_the_checkpoint_step_is_read_from_disk_once_then_tracked(tmp_path, fake_od_api):
    run = make_run(tmp_path / "p.config")
    run.model_dir.mkdir()
    (run.model_dir / "checkpoint").write_text('model_checkpoint_path: "ckpt-10"\n')
    (run.model_dir / "fingerprint.json").write_text(json.dumps({"model": "m"}))
    (run.model_dir / "eval_history.json").write_text(json.dumps(
        {"10": {"DetectionBoxes_Precision/mAP": 0.5}}))
    training = loop.SegmentedTraining(run)
    tracker = FakeTracker()
    training.add_callbacks(tracker)
    training.train()  # resumes at step 10 (evaluated already), trains to 20
    assert fake_od_api["disk_reads"] == 1 and training.step == 20
    assert tracker.events == [("start",), ("best", 20, True), ("evaluation", 20, 0.4), ("end",)]


@pytest.fixture
def fake_workers(fake_od_api, monkeypatch):
    """``num_workers > 1``: each segment runs on a fake group whose chief checkpoints the
    segment's last step in another process (no hook A callback here), or reports a NaN loss at
    ``nan_at`` without checkpointing."""
    state = {"segments": []}
    monkeypatch.setattr(loop, "train_record_files", lambda config: ["shard-0", "shard-1"])

    def train_segment(argv, run, last_step):
        flags = dict(a.lstrip("-").split("=", 1) for a in argv[1:])
        end = int(flags["num_train_steps"])
        state["segments"].append((end, flags["num_workers"]))
        if fake_od_api["nan_at"] and fake_od_api["nan_at"] < end:
            return fake_od_api["nan_at"], math.nan
        run.model_dir.joinpath(f"ckpt-{end}.index").write_text("x")
        run.model_dir.joinpath("checkpoint").write_text(f'model_checkpoint_path: "ckpt-{end}"\n')
        return None

    def step_on_disk(model_dir):
        listed = model_dir / "checkpoint"
        return int(listed.read_text().split('"')[1].split("-")[1]) if listed.is_file() else 0

    monkeypatch.setattr(loop.cluster, "train_segment", train_segment)
    monkeypatch.setattr(loop.training_hooks, "checkpoint_step", step_on_disk)
    return state


def test_with_workers_each_segment_trains_on_the_group_its_step_read_from_the_chiefs_files(
        tmp_path, fake_workers):
    training = loop.SegmentedTraining(make_run(tmp_path / "p.config", num_workers=2))
    tracker, saved = FakeTracker(), []
    training.add_callbacks(tracker)
    training.add_callback("on_checkpoint", lambda step, path: saved.append(step))
    training.train()
    assert fake_workers["segments"] == [(10, "2"), (20, "2")]
    assert saved == [10, 20] and training.step == 20
    assert tracker.events == [("start",), ("best", 10, True), ("evaluation", 10, 0.5),
                              ("evaluation", 20, 0.4), ("end",)]


def test_with_workers_a_nan_loss_fails_the_run_at_the_chiefs_last_checkpoint(tmp_path,
                                                                            fake_workers,
                                                                            fake_od_api):
    training = loop.SegmentedTraining(make_run(tmp_path / "p.config", num_workers=2))
    fake_od_api["nan_at"] = 13
    with pytest.raises(PipelineError, match=r"the total loss is nan at step 13; .* Last good "
                                            r"checkpoint: .*ckpt-10 \(step 10\)"):
        training.train()


def test_with_more_workers_than_train_shards_nothing_is_touched(tmp_path, fake_workers,
                                                               monkeypatch):
    monkeypatch.setattr(loop, "train_record_files", lambda config: ["shard-0"])
    run = make_run(tmp_path / "p.config", num_workers=2)
    with pytest.raises(PipelineError, match="train split has 1 record shard"):
        loop.SegmentedTraining(run).train()
    assert not run.model_dir.exists() and fake_workers["segments"] == []


def step_on_disk(model_dir: Path) -> int:
    """The step of the fake latest checkpoint (``ckpt-<step>``), as read back on resume."""
    listed = model_dir / "checkpoint"
    return int(listed.read_text().split('"')[1].split("-")[1]) if listed.is_file() else 0


def test_early_stopping_ends_training_after_patience_evaluations_and_writes_the_files(
        tmp_path, fake_od_api, monkeypatch):
    monkeypatch.setattr(loop.training_hooks, "checkpoint_step", step_on_disk)
    run = make_run(tmp_path / "p.config", early_stopping=1,
                   schedule=inputs.Schedule(num_steps=40, batch_size=2, peak_learning_rate=0.1))
    training = loop.SegmentedTraining(run)
    tracker = FakeTracker()
    training.add_callbacks(tracker)
    training.train()  # map 0.5 at step 10, 0.4 at step 20: no better after 1 evaluation
    assert fake_od_api["intervals"] == [10]  # stopped inside its one training call
    stop = ("stopped", 20, "map has not improved for 1 evaluation (patience "
                           "train.early_stopping: 1; best 0.5000 at step 10)")
    assert tracker.events == [("start",), ("best", 10, True), ("evaluation", 10, 0.5),
                              ("evaluation", 20, 0.4), stop, ("end",)]
    metrics = json.loads(run.metrics.read_text())
    assert (metrics["best_step"], metrics["final_step"]) == (10, 20)
    assert [row.split(",")[0] for row in run.eval_curves.read_text().splitlines()] == [
        "step", "10", "20"]
    assert run.curves.is_file()
    resumed = loop.SegmentedTraining(run)  # `dvc repro` again: the same history, the same stop
    tracker.events.clear()
    resumed.add_callbacks(tracker)
    resumed.train()
    assert tracker.events == [("start",), stop, ("end",)] and resumed.step == 20


RESTART_S, STEP_S, EVAL_S = 4.0, 0.25, 4.0


@pytest.fixture
def fake_clock(tmp_path, fake_od_api, monkeypatch):
    """The loop's clock, advanced by the fake trainings (``RESTART_S`` per segment, ``STEP_S``
    per step up to each checkpoint, each step summary recorded) and evaluations (``EVAL_S``:
    the estimate, as there are no val records); ``slow``: extra seconds by checkpoint step;
    ``kill_at``: a segment end whose training is killed."""
    state = {"now": 1000.0, "segments": [], "points": [], "slow": {}, "kill_at": None}
    monkeypatch.setattr(loop, "time", type("Clock", (), {"time": lambda: state["now"]}))
    monkeypatch.setattr(loop.budget, "step_wall_times", lambda event_dir: state["points"])
    monkeypatch.setattr(loop.training_hooks, "checkpoint_step", step_on_disk)
    train_without_clock = loop.train_with_model_main
    observe_without_clock = loop.training_hooks.observe_checkpoints

    def observe_checkpoints(callback):
        def timed(step, path):  # the steps up to this checkpoint took their time
            state["now"] += max(step - state["last"], 0) * STEP_S + state["slow"].get(step, 0.0)
            state["last"] = step
            callback(step, path)
        observe_without_clock(timed if callback else None)

    def timed_model_main(argv):
        flags = dict(a.lstrip("-").split("=", 1) for a in argv[1:])
        start, end = step_on_disk(Path(flags["model_dir"])), int(flags["num_train_steps"])
        if end == state["kill_at"]:
            raise KeyboardInterrupt  # as SIGKILL, nothing after it runs
        state["now"] += RESTART_S
        state["last"] = start
        state["points"] += [(s, state["now"] + (s - start) * STEP_S)
                            for s in range(start + 10, end + 1, 10)]
        state["segments"].append((start, end, Path(flags["pipeline_config_path"]).name))
        train_without_clock(argv)

    def evaluate(config, checkpoint, summary_dir):
        state["now"] += EVAL_S
        return {"DetectionBoxes_Precision/mAP": 0.1 * len(state["segments"])}

    monkeypatch.setattr(loop, "train_with_model_main", timed_model_main)
    monkeypatch.setattr(loop.training_hooks, "observe_checkpoints", observe_checkpoints)
    monkeypatch.setattr(loop.checkpoint_eval, "evaluate_checkpoint", evaluate)
    config = tmp_path / "p.config"
    config.write_text(CONFIG.format(steps=800))
    state["run"] = make_run(config, time_budget_minutes=1, started_at=1000.0, eval_every_n=100,
                            schedule=inputs.Schedule(800, 3, 0.04))
    return state


def test_a_time_budget_plans_the_steps_that_fit_and_ends_the_schedule_with_them(
        fake_clock, caplog):
    from object_detection.utils import config_util

    from pipeline.core import layout

    run = fake_clock["run"]
    configured = run.config.read_text()
    training = loop.SegmentedTraining(run)
    tracker = FakeTracker()
    training.add_callbacks(tracker)
    with caplog.at_level("INFO"):
        training.train()
    # Measured: 30 steps in 4 + 7.5 s. Left: 60 - 11.5 = 48.5 s = 1 start-up (4 s), 162 steps
    # (40.5 s) and the evaluation at step 100 (4 s, inside training: no restart after it):
    # step 192; the final evaluation follows.
    copy = layout.BUDGET_CONFIG_FILE
    assert fake_clock["segments"] == [(0, 30, copy), (30, 192, copy)]
    assert fake_clock["now"] - EVAL_S <= 1000.0 + 60  # the last step within the budget
    assert ("planned", 192) in tracker.events and training.run.num_steps == 192
    assert [e[1] for e in tracker.events if e[0] == "evaluation"] == [100, 192]
    assert "time budget 1 min: 192 steps at 0.25 s/step, 1 evaluation (estimated 4 s each; " \
           "4 s to start each training segment)" in caplog.text
    cosine = config_util.get_configs_from_pipeline_file(str(run.model_dir / copy))[
        "train_config"].optimizer.momentum_optimizer.learning_rate.cosine_decay_learning_rate
    assert cosine.total_steps == 192  # the learning rate schedule ends with the budget
    assert run.config.read_text() == configured  # configure's output is never changed
    assert json.loads(run.metrics.read_text())["final_step"] == 192


def test_a_resumed_budget_run_keeps_its_plan_and_trains_to_it(fake_clock):
    run = fake_clock["run"]
    fake_clock["kill_at"] = 192
    with pytest.raises(KeyboardInterrupt):
        loop.SegmentedTraining(run).train()
    plan = (run.model_dir / "budget_plan.json").read_text()
    fake_clock["now"] += 3600  # resumed an hour later: past the budget, but the plan is kept
    fake_clock["kill_at"] = None
    resumed = loop.SegmentedTraining(dataclasses.replace(run, started_at=fake_clock["now"]))
    tracker = FakeTracker()
    resumed.add_callbacks(tracker)
    resumed.train()
    assert fake_clock["segments"][-1] == (30, 192, "budget_pipeline.config")
    assert len(fake_clock["segments"]) == 2  # not measured nor planned again
    assert not [e for e in tracker.events if e[0] in ("planned", "stopped")]
    assert (run.model_dir / "budget_plan.json").read_text() == plan and resumed.step == 192


def test_a_budget_spent_sooner_than_planned_stops_at_the_next_evaluation(fake_clock):
    fake_clock["slow"] = {100: 30.0}  # steps 30-100 ran 30 s longer than measured
    run = fake_clock["run"]
    training = loop.SegmentedTraining(run)
    tracker = FakeTracker()
    training.add_callbacks(tracker)
    training.train()
    assert [end for _, end, _ in fake_clock["segments"]] == [30, 192]
    assert ("stopped", 100, "the time budget of 1 min is spent (training ran slower than "
                            "measured)") in tracker.events
    assert [e[1] for e in tracker.events if e[0] == "evaluation"] == [100]  # none after it
    assert tracker.events[-1] == ("end",) and training.step == 100
    assert json.loads(run.metrics.read_text())["final_step"] == 100
