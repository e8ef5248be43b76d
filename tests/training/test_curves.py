"""The curves and metrics files (pipeline/training/curves.py)."""
import json

from pipeline.training import curves


def _metrics(map_value, loss):
    return {"DetectionBoxes_Precision/mAP": map_value, "DetectionBoxes_Precision/mAP@.50IOU": 0.9,
            "Loss/total_loss": loss}


def test_eval_curves_and_metrics_files(tmp_path):
    history = {"20": _metrics(0.3, 0.8), "10": _metrics(0.5, 0.9)}
    curves.write_eval_curves(history, tmp_path / "eval.csv")
    assert (tmp_path / "eval.csv").read_text().splitlines() == [
        "step,map,map_50,map_75,mar_100,val_loss", "10,0.5,0.9,,,0.9", "20,0.3,0.9,,,0.8"]
    curves.write_metrics(history, {"step": 10}, "map", 20, tmp_path / "m.json")
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["best_step"] == 10 and metrics["best"]["map"] == 0.5
    assert metrics["final_step"] == 20 and metrics["final"]["val_loss"] == 0.8
