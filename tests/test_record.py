"""CellRecord: one definition of what a cell produced, its JSON round trip and the columns derived from it."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from bench.config import IDENTITY_COLUMNS, Cell, Recipe
from bench.record import KEY_COLUMNS, RESULT_COLUMNS, CellRecord, format_value

OLD = Path(__file__).parent / "old_runs"


def test_results_columns_are_the_cell_identity_then_the_records_fields():
    assert RESULT_COLUMNS[:1 + len(IDENTITY_COLUMNS)] == ["cell_id", *IDENTITY_COLUMNS]
    assert {"status", "test_acc", "weights", "fused_size"} <= set(RESULT_COLUMNS)
    fields = {f.name for f in dataclasses.fields(CellRecord)}
    assert all(c in fields or c in IDENTITY_COLUMNS for c in RESULT_COLUMNS)


def test_a_record_written_before_reads_and_writes_back_the_same():
    for path in sorted(OLD.glob("*/cells/*.json")):
        data = json.loads(path.read_text())
        record = CellRecord.from_json(data)
        assert record.cell_id == path.stem and record.test_acc == data["row"]["test_acc"]
        again = record.to_json()
        assert {k: v for k, v in again["row"].items() if v is not None} == \
            {k: v for k, v in data["row"].items() if v is not None}
        assert {k: v for k, v in again.items() if k != "row"} == {k: v for k, v in data.items() if k != "row"}
        assert CellRecord.from_json(json.loads(json.dumps(again))) == record


def test_a_column_this_version_does_not_know_is_kept():
    record = CellRecord.of(Cell("linear", "mse", "mnist", 3, "cpu", Recipe(lr=0.01)))
    record.set({"test_acc": 0.5, "cooldown_s": 1.25})
    assert record.extra == {"cooldown_s": 1.25} and record.row()["cooldown_s"] == 1.25
    again = CellRecord.from_json(json.loads(json.dumps(record.to_json())))
    assert again.extra == {"cooldown_s": 1.25} and again.config["lr"] == 0.01 and again.seed == 3
    assert list(record.key()) == list(KEY_COLUMNS)
    assert record["row"]["test_acc"] == record["test_acc"] == 0.5  # the dict form plugins of earlier versions read


def test_one_number_format_for_every_table():
    assert format_value("test_acc", 0.91234) == "0.9123"
    assert format_value("val_loss", 0.0812345) == "0.08123"
    assert format_value("samples_per_s", 660711.3) == "660,711"
    assert format_value("n_params", 7850) == "7,850"
    assert format_value("epochs", 2.0) == "2" and format_value("lr", 0.001) == "0.001"
    assert format_value("test_acc", None, "-") == "-" and format_value("params", "{}") == ""
