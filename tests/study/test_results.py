"""The run directory's CSVs after a kill: a last line a kill tore is left out."""

from pathlib import Path

from fogsim.study.results import CsvLog, finished_rounds, read_csv


def test_a_torn_last_line_is_left_out_when_reading_and_cut_when_resuming(tmp_path: Path) -> None:
    """Rows are appended whole and fsynced, so a last line without a newline is a row a
    kill tore: ``--resume`` once died on it (``int(None)``), and a torn ``10,...`` kept
    as round ``1`` survived the cut past the checkpoint."""
    rounds = tmp_path / "rounds.csv"
    rounds.write_text("round,accuracy\n1,0.9\n2,0.95\n3,0.9")
    assert read_csv(rounds) == [{"round": 1, "accuracy": 0.9}, {"round": 2, "accuracy": 0.95}]
    assert finished_rounds(tmp_path) == 2
    nodes = tmp_path / "nodes.csv"
    nodes.write_text("round,node,status\n9,7,ok\n10,2,ok\n1")
    log = CsvLog(nodes)
    log.truncate(9)
    assert nodes.read_text().splitlines() == ["round,node,status", "9,7,ok"]
    log.append([{"round": 10, "node": 3, "status": "ok"}])
    assert nodes.read_text().splitlines()[-1] == "10,3,ok"


def test_a_quoted_line_break_survives_the_cut(tmp_path: Path) -> None:
    """A client's error text may hold a line break, which csv writes as CR LF inside
    quotes: cutting the rows past the checkpoint keeps it as written."""
    nodes = tmp_path / "nodes.csv"
    log = CsvLog(nodes)
    log.append([{"round": 1, "error": "first\r\nsecond"}, {"round": 2, "error": ""}])
    log.truncate(1)
    assert read_csv(nodes) == [{"round": 1, "error": "first\r\nsecond"}]
