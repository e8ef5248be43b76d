"""The best checkpoint's choice and the evaluation's progress (training/checkpoint_eval.py)."""
from types import SimpleNamespace

from pipeline.training import checkpoint_eval
from tests.training.test_curves import _metrics


def test_best_is_chosen_by_the_metric_and_its_direction():
    assert checkpoint_eval.is_better("map", _metrics(0.5, 1.0), _metrics(0.4, 0.5))
    assert not checkpoint_eval.is_better("val_loss", _metrics(0.5, 1.0), _metrics(0.4, 0.5))
    assert checkpoint_eval.is_better("val_loss", _metrics(0.1, 0.4), _metrics(0.4, 0.5))
    assert not checkpoint_eval.is_better("map", _metrics(0.4, 1.0), _metrics(0.4, 0.5))  # tie
    assert checkpoint_eval.is_better("map", _metrics(0.0, 1.0), None)


def test_the_evaluation_bar_totals_the_batches_of_the_eval_input(tmp_path):
    import tensorflow as tf

    for shard, count in (("val.tfrecord-00000-of-00002", 3), ("val.tfrecord-00001-of-00002", 2)):
        with tf.io.TFRecordWriter(str(tmp_path / shard)) as writer:
            for index in range(count):
                writer.write(b"example %d" % index)
    reader = SimpleNamespace(input_path=[str(tmp_path / "val.tfrecord-*")])
    configs = {"eval_input_configs": [SimpleNamespace(tf_record_input_reader=reader)],
               "eval_config": SimpleNamespace(batch_size=2)}
    assert checkpoint_eval.eval_batches(configs) == 3  # 5 records in batches of 2
    configs["eval_config"].batch_size = 1
    assert checkpoint_eval.eval_batches(configs) == 5
