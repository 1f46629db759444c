"""onebit report: tables and plots rebuilt from run folders; the README table generated from records."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from onebit.cli import main
from onebit.errors import OnebitError
from onebit.experiments import plots
from onebit.experiments.records import README_END, README_START, readme_block, update_readme
from onebit.experiments.report import (
    find_runs,
    format_table,
    mixed_methods,
    summarize,
    table_columns,
)
from tests.test_compare import run_comparison

ROOT = Path(__file__).parents[1]


@pytest.fixture
def comparison(tmp_path_factory) -> Path:
    return run_comparison(tmp_path_factory)


def _row(method: str, seed: int, best: float, last: float, run: str = "") -> dict:
    return {
        "run": run or f"{method}-s{seed}",
        "method": method,
        "seed": seed,
        "test_acc_best_val": best,
        "test_acc_last": last,
        "epochs": 4,
        "seconds": 8.0,
        "binary_params": 0 if method == "fp" else 1000,
        "float_params": 10,
        "size_bytes": 4040 if method == "fp" else 165,
        "float_size_bytes": 4040,
    }


def test_summarize_orders_methods_and_measures_the_gap():
    rows = [
        _row("bc", 1, 0.80, 0.78),
        _row("fp", 0, 0.90, 0.90),
        _row("bc", 0, 0.82, 0.80),
        _row("fp", 1, 0.92, 0.90),
    ]
    fp, bc = summarize(rows)
    assert (fp["method"], bc["method"]) == ("fp", "bc") and bc["seed_list"] == [0, 1]
    assert bc["test_best_val_mean"] == pytest.approx(81.0)
    assert bc["test_best_val_std"] == pytest.approx(np.std([80, 82], ddof=1))
    assert bc["gap_best_val"] == pytest.approx(-10.0) and bc["gap_last"] == pytest.approx(-11.0)
    assert fp["gap_best_val"] is None and bc["s_per_epoch"] == 2.0
    assert summarize(list(reversed(rows))) == summarize(rows)  # order of the folders is irrelevant
    text = format_table(summarize(rows))
    assert text[1]["test_best_val"] == "81.00 ± 1.41" and text[1]["gap"] == "-10.00"
    assert text[0]["gap"] == "—" and text[1]["size"] == "165 B"
    (only,) = format_table(summarize(rows[:1]))
    assert only["test_best_val"] == "80.00" and only["gap"] == "—"


def test_relaxed_and_off_binary_columns_appear_only_when_reported():
    rows = [_row("fp", 0, 0.9, 0.9), _row("gwt", 0, 0.8, 0.8), _row("gwt", 1, 0.82, 0.8)]
    assert "relaxed" not in table_columns(summarize(rows))
    for r, (acc, off) in zip(rows[1:], [(0.85, 0.1), (0.87, 0.3)], strict=True):
        r["relaxed_test_acc"], r["off_binary"] = acc, off
    summary = summarize(rows)
    assert table_columns(summary)[-2:] == ["relaxed", "off_pm1"]
    fp, gwt = format_table(summary)
    assert fp["relaxed"] == "—" and fp["off_pm1"] == "—"
    assert gwt["relaxed"] == "86.00 ± 1.41" and gwt["off_pm1"] == "20.00%"


def _decodes(path: Path | None) -> None:
    assert path is not None and path.stat().st_size > 0
    with Image.open(path) as im:
        im.load()
        assert im.format == "PNG"


def test_plot_functions(tmp_path):
    curves = {"fp": [[0.5, 0.7, 0.8], [0.6, 0.7, 0.9]], "bc": [[0.4, 0.6]]}
    _decodes(plots.plot_curves(curves, tmp_path / "acc.png", ylabel="test accuracy"))
    _decodes(plots.plot_flips({"bc": [[0.1, 0.01, 0.0]]}, {}, tmp_path / "flips.png"))
    rng = np.random.default_rng(0)
    weights = {"bc": {"0 (32×16)": rng.normal(size=512), "2 (4×32)": rng.normal(size=128)}}
    _decodes(plots.plot_weight_histograms(weights, tmp_path / "w.png"))
    sens = {"bc": [("0", [0.7, 0.8]), ("2", [0.9, 0.9])], "bwn": [("0", [0.75])]}
    _decodes(plots.plot_sensitivity(sens, tmp_path / "sens.png"))
    # nothing to draw: no file, None
    assert plots.plot_curves({"fp": []}, tmp_path / "none.png") is None
    assert plots.plot_flips({}, {}, tmp_path / "none.png") is None
    assert plots.plot_weight_histograms({"fp": {}}, tmp_path / "none.png") is None
    assert plots.plot_sensitivity({}, tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()


def test_report_reproduces_the_comparison(comparison, tmp_path, capsys):
    """`onebit report` on a comparison's run folders writes the same results.json, and draws
    the sensitivity plot where runs carry a (hand-written) sensitivity.json."""
    folder = tmp_path / "tiny"
    shutil.copytree(comparison / "runs" / "tiny", folder)
    made_by_compare = json.loads((folder / "results.json").read_text())
    for name in ("results.json", "results.md", "results.csv"):
        (folder / name).unlink()
    shutil.rmtree(folder / "plots")
    for seed, accs in ((0, [0.6, 0.9]), (1, [0.7, 0.85])):
        layers = [{"name": n, "val_acc": a} for n, a in zip(["1", "4"], accs, strict=True)]
        (folder / f"bc-s{seed}" / "sensitivity.json").write_text(json.dumps({"layers": layers}))
    assert main(["report", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "| fp " in out and "| bc " in out
    assert json.loads((folder / "results.json").read_text()) == made_by_compare
    assert (folder / "results.md").read_text() != ""
    for name in ("accuracy", "weights", "flips", "sensitivity"):
        _decodes(folder / "plots" / f"{name}.png")

    # run folders listed one by one, in another order, the report elsewhere: the same table
    runs = [str(folder / k) for k in ("bc-s1", "fp-s0", "bc-s0", "fp-s1")]
    assert main(["report", *runs, "--out", str(tmp_path / "elsewhere"), "--no-plots"]) == 0
    again = json.loads((tmp_path / "elsewhere" / "results.json").read_text())
    assert again == made_by_compare
    assert not (tmp_path / "elsewhere" / "plots").exists()

    assert mixed_methods(find_runs([folder])) == []
    cfg = json.loads((folder / "bc-s1" / "config.json").read_text())
    cfg["train"]["lr"] = 0.5
    (folder / "bc-s1" / "config.json").write_text(json.dumps(cfg))
    assert mixed_methods(find_runs([folder])) == ["bc"]


def test_report_errors(tmp_path, capsys):
    assert main(["report"]) == 2
    assert "give run folders" in capsys.readouterr().err
    assert main(["report", str(tmp_path)]) == 2
    assert "neither a onebit run folder" in capsys.readouterr().err
    with pytest.raises(OnebitError, match="is not a folder"):
        find_runs([tmp_path / "nope"])


def test_readme_generated_from_records(comparison, tmp_path, capsys):
    records = tmp_path / "records"
    shutil.copytree(comparison / "rec", records / "2026-11-22_tiny")
    readme = tmp_path / "README.md"
    readme.write_text(f"# onebit\n\nintro\n\n{README_START}\nstale\n{README_END}\n\nmore\n")
    assert update_readme(readme, records, check=True)  # differs, and --check writes nothing
    assert "stale" in readme.read_text()
    args = ["report", "--readme", str(readme), "--records", str(records)]
    assert main([*args, "--check"]) == 1
    assert "disagrees" in capsys.readouterr().err
    assert main(args) == 0
    text = readme.read_text()
    assert text.startswith("# onebit\n\nintro\n") and text.endswith(f"{README_END}\n\nmore\n")
    assert "stale" not in text
    assert "[2026-11-22_tiny](records/2026-11-22_tiny/)" in text
    assert "| fp " in text and "| bc " in text
    assert "(records/2026-11-22_tiny/plots/accuracy.png)" in text
    header = next(line for line in text.splitlines() if line.startswith("| record"))
    assert "paper" not in header
    # a record's paper.json puts the published number beside ours
    (records / "2026-11-22_tiny" / "paper.json").write_text(json.dumps({"bc": "98.7 (paper)"}))
    assert main(args) == 0
    text = readme.read_text()
    header = next(line for line in text.splitlines() if line.startswith("| record"))
    assert "paper" in header and "98.7 (paper)" in text
    assert main([*args, "--check"]) == 0
    assert not update_readme(readme, records)

    empty = tmp_path / "empty"
    empty.mkdir()
    assert "No records yet." in readme_block(empty, readme)
    (tmp_path / "plain.md").write_text("# no markers\n")
    with pytest.raises(OnebitError, match="no results table markers"):
        update_readme(tmp_path / "plain.md", records)


def test_repo_readme_agrees_with_records():
    """The README's results table is what `onebit report --readme README.md --records records`
    generates from records/; fix a failure by running that command and committing the result."""
    readme = ROOT / "README.md"
    assert readme.is_file(), f"{readme} is missing"
    text = readme.read_text()
    assert README_START in text and README_END in text, (
        f"README.md needs the markers {README_START} and {README_END} around its results table"
    )
    assert not update_readme(readme, ROOT / "records", check=True), (
        "README.md's results table disagrees with records/; run: "
        "onebit report --readme README.md --records records"
    )
