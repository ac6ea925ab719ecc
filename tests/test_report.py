"""``longtail.report`` on synthetic results: figures are real PNGs, tables carry the right numbers,
and the HTML page is self-contained and renders (with every image decoded) in headless Chromium.

The metrics come from ``classification_metrics`` on random predictions (fixed numpy seed) and
``aggregate_seeds`` over two seeds, so the report sees exactly the dictionaries a real study writes.
"""

from __future__ import annotations

import html
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from longtail import report
from longtail.metrics import aggregate_seeds, classification_metrics
from longtail.priors import DEFAULT_TEST_PRIORS, with_test_priors
from longtail.report import figures as report_figures
from longtail.report import html as report_html
from longtail.report import tables as report_tables

CLASS_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
# CIFAR-10-LT, imbalance factor 100.
COUNTS = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
SEEDS = (0, 1)
# The study's strategies plus an extra whose name needs escaping (HTML) and a safe file name.
STRATEGIES = (
    "baseline",
    "reweight",
    "decoupled-modified-ce",
    "decoupled-balanced-softmax",
    "decoupled-focal",
    "decoupled-class-balanced",
    "decoupled-cb-focal",
    "mixup & <tuned>",
)
ENVIRONMENT = {
    "data source": "CIFAR-10 python archive, https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    "hardware": "1x NVIDIA H100 80GB",
    "wall time": "1 h 23 min",
    "torch": "2.14.1",
}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CHROMIUM_TIMEOUT_S = 120


def _fake_metrics(rng: np.random.Generator, skill: float, head: float = 0.95, tail: float = 0.35) -> dict:
    """Metrics of random predictions that are right more often for frequent classes (hit rates
    from ``head`` down to ``tail``, plus ``skill``), with their metrics under the default test
    priors, as ``save_evaluation`` writes them."""
    y_true = np.repeat(np.arange(len(CLASS_NAMES)), 100)
    hit_rate = np.clip(np.linspace(head, tail, len(CLASS_NAMES)) + skill, 0.0, 1.0)[y_true]
    guesses = rng.integers(0, len(CLASS_NAMES), len(y_true))
    y_pred = np.where(rng.random(len(y_true)) < hit_rate, y_true, guesses)
    return with_test_priors(classification_metrics(y_true, y_pred, CLASS_NAMES, COUNTS), DEFAULT_TEST_PRIORS)


def _fake_results(names: tuple[str, ...] = STRATEGIES) -> dict:
    """A ``results.json``-shaped dict with one aggregated entry per strategy name."""
    rng = np.random.default_rng(1234)
    strategies = {
        name: aggregate_seeds([_fake_metrics(rng, 0.02 * index) for _ in SEEDS], SEEDS)
        for index, name in enumerate(names)
    }
    config = {
        "dataset": "cifar10-lt",
        "imbalance_factor": 100,
        "epochs": 200,
        "seeds": list(SEEDS),
        "lr": 0.1,
        "augment": {"crop": 32, "flip": True},
    }
    return {"config": config, "strategies": strategies}


def _assert_png(path: Path, min_bytes: int = 10_000) -> None:
    """``path`` is a PNG file of some substance."""
    assert path.is_file(), path
    assert path.read_bytes()[:8] == PNG_MAGIC, f"{path} is not a PNG"
    assert path.stat().st_size > min_bytes, f"{path} is only {path.stat().st_size} bytes"


def _md_row(markdown: str, strategy: str) -> list[str]:
    """The cells of the comparison-table row of ``strategy`` in results.md."""
    escaped = strategy.replace("|", "\\|")
    for line in markdown.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if cells[0] == escaped and len(cells) == len(report.COMPARISON_HEADER):
            return cells
    raise AssertionError(f"no comparison row for {strategy!r}")


def _chromium(*args: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """Run headless Chromium with a throwaway profile and no network chatter; fail if it is missing."""
    binary = shutil.which("chromium")
    if binary is None:
        pytest.fail("chromium is not on PATH: install it with `apt-get install chromium` (CI installs it)")
    command = [
        binary,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--virtual-time-budget=5000",
        *args,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=CHROMIUM_TIMEOUT_S, check=False)
    assert done.returncode == 0, f"chromium exited {done.returncode}: {done.stderr[-2000:]}"
    return done


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> tuple[dict, Path]:
    """The synthetic results and the folder ``render_study`` wrote them to."""
    results = _fake_results()
    out_dir = tmp_path_factory.mktemp("study")
    report.render_study(results, out_dir, environment=ENVIRONMENT)
    return results, out_dir


def test_run_figures_are_pngs(tmp_path):
    metrics = _fake_metrics(np.random.default_rng(0), 0.0)
    paths = report.write_run_figures(metrics, tmp_path)
    names = ["confusion_matrix.png", "precision_recall.png", "class_histogram.png"]
    assert paths == [tmp_path / "figures" / name for name in names]
    for path in paths:
        _assert_png(path)


def _drawn_figures(monkeypatch) -> list:
    """The matplotlib figures the report saves from now on, in order."""
    figures = []
    save = report_figures._save

    def keep(fig, path):
        figures.append(fig)
        return save(fig, path)

    monkeypatch.setattr(report_figures, "_save", keep)
    return figures


def test_run_figures_at_10_classes_label_every_class_and_cell(tmp_path, monkeypatch):
    figures = _drawn_figures(monkeypatch)
    report.write_run_figures(_fake_metrics(np.random.default_rng(0), 0.0), tmp_path)
    confusion, bars, histogram = (figure.axes[0] for figure in figures)
    assert len(confusion.texts) == 100
    for axes in (confusion, bars, histogram):
        assert [label.get_text() for label in axes.get_xticklabels()] == list(CLASS_NAMES)  # CIFAR-10-LT's order
    assert len(histogram.texts) == 10  # each bar labelled with its count


def test_run_figures_stay_readable_at_100_classes(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    counts = rng.permutation([int(500 * 100 ** (-i / 99)) for i in range(100)]).tolist()
    names = [f"class_{i}" for i in range(100)]
    y_true = np.repeat(np.arange(100), 5)
    y_pred = np.where(rng.random(500) < 0.5, y_true, rng.integers(0, 100, 500))
    metrics = classification_metrics(y_true, y_pred, names, counts, "shots")
    figures = _drawn_figures(monkeypatch)
    for path in report.write_run_figures(metrics, tmp_path):
        _assert_png(path)
    confusion, bars, histogram = (figure.axes[0] for figure in figures)
    assert len(confusion.texts) == len(histogram.texts) == 0  # no per-cell or per-bar numbers
    by_count = list(np.argsort(-np.asarray(counts), kind="stable"))
    for axes in (confusion, bars, histogram):
        labels = [label.get_text() for label in axes.get_xticklabels()]
        assert 5 <= len(labels) <= report.LABELLED_CLASSES
    assert [label.get_text() for label in bars.get_xticklabels()][:2] == [names[by_count[0]], names[by_count[5]]]
    heights = [patch.get_height() for patch in histogram.patches]
    assert heights == sorted(counts, reverse=True)  # bars sorted by training count
    recall = [patch.get_height() for patch in bars.patches[100:]]  # precision bars first, then recall
    assert recall == pytest.approx([100 * metrics["per_class"]["recall"][c] for c in by_count])


def test_confusion_matrix_size(tmp_path):
    path = report.plot_confusion_matrix(_fake_metrics(np.random.default_rng(0), 0.0), tmp_path / "cm.png", "t")
    height, width = imread(path).shape[:2]
    assert (width, height) == (600, 550)


def test_study_figures_one_confusion_per_strategy(rendered):
    results, out_dir = rendered
    figures = sorted((out_dir / "figures").glob("*.png"))
    assert len(figures) == len(STRATEGIES) + 5
    for path in figures:
        _assert_png(path)
    names = {path.name for path in figures}
    assert {
        "summary.png",
        "precision_recall_baseline.png",
        "recall_comparison.png",
        "class_histogram.png",
        "prior_accuracy.png",
        "confusion_baseline.png",
        "confusion_mixup_tuned.png",
    } <= names


def test_markdown_lists_every_strategy_and_config(rendered):
    results, out_dir = rendered
    markdown = (out_dir / "results.md").read_text(encoding="utf-8")
    for name in STRATEGIES:
        assert _md_row(markdown, name)
        assert f"### {name}" in markdown
    assert "- imbalance_factor: 100" in markdown
    assert "| " + " | ".join(report.COMPARISON_HEADER) + " |" in markdown


def test_markdown_delta_versus_our_baseline(rendered):
    results, out_dir = rendered
    markdown = (out_dir / "results.md").read_text(encoding="utf-8")
    delta_column = report.COMPARISON_HEADER.index("Δ vs baseline (points)")
    strategies = results["strategies"]
    expected = 100 * (strategies["reweight"]["mean"]["accuracy"] - strategies["baseline"]["mean"]["accuracy"])
    assert _md_row(markdown, "baseline")[delta_column] == "+0.00"
    assert float(_md_row(markdown, "reweight")[delta_column]) == pytest.approx(expected, abs=0.005)


def test_markdown_mean_std_and_study_columns(rendered):
    results, out_dir = rendered
    row = _md_row((out_dir / "results.md").read_text(encoding="utf-8"), "baseline")
    entry = results["strategies"]["baseline"]
    mean, std = 100 * entry["mean"]["accuracy"], 100 * entry["std"]["accuracy"]
    assert row[1] == "84.15"
    assert row[2] == f"{mean:.2f} ± {std:.2f} (n={len(SEEDS)})"
    assert _md_row((out_dir / "results.md").read_text(encoding="utf-8"), "decoupled-focal")[1] == "—"


def test_markdown_delta_blank_without_baseline(tmp_path):
    report.write_results_markdown(_fake_results(("reweight", "decoupled-focal")), tmp_path / "results.md")
    markdown = (tmp_path / "results.md").read_text(encoding="utf-8")
    delta_column = report.COMPARISON_HEADER.index("Δ vs baseline (points)")
    assert _md_row(markdown, "reweight")[delta_column] == ""


def test_html_is_self_contained(rendered):
    results, out_dir = rendered
    page = (out_dir / "report.html").read_text(encoding="utf-8")
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", page, re.IGNORECASE)
    assert "<link" not in page.lower()
    images = re.findall(r"<img\b[^>]*>", page)
    assert len(images) == len(STRATEGIES) + 5
    assert all('src="data:image/png;base64,' in image for image in images)


def test_html_escapes_and_shows_everything(rendered):
    results, out_dir = rendered
    page = (out_dir / "report.html").read_text(encoding="utf-8")
    assert "mixup &amp; &lt;tuned&gt;" in page
    assert "<tuned>" not in page
    for key, value in ENVIRONMENT.items():
        assert key in page and value in page
    for key in results["config"]:
        assert f"<td>{key}</td>" in page
    assert "Study-reported numbers" in page and "85.84" in page


def test_html_renders_in_headless_chromium(rendered, tmp_path):
    results, out_dir = rendered
    dom = _chromium("--dump-dom", (out_dir / "report.html").as_uri(), tmp_path=tmp_path).stdout
    assert f'data-images-loaded="{len(STRATEGIES) + 5}"' in dom
    for name in STRATEGIES:
        strategy = name.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        assert re.search(rf"<tr><td>{re.escape(strategy)}</td><td>", dom), name


def test_html_screenshot_is_not_blank(rendered, tmp_path):
    results, out_dir = rendered
    shot = tmp_path / "shot.png"
    _chromium(f"--screenshot={shot}", "--window-size=1280,2000", (out_dir / "report.html").as_uri(), tmp_path=tmp_path)
    _assert_png(shot)
    assert imread(shot).std() > 0


def test_the_report_opens_with_the_answer(rendered, tmp_path):
    # The summary chart and the comparison table come first; configuration and environment last.
    results, out_dir = rendered
    dom = _chromium("--dump-dom", (out_dir / "report.html").as_uri(), tmp_path=tmp_path).stdout
    chart = dom.index('alt="Top-1 by strategy')
    positions = [dom.index(heading) for heading in ("<h2>Comparison</h2>", "<h2>Run configuration</h2>")]
    assert chart < positions[0] < positions[1] < dom.index("<h2>Environment</h2>")
    markdown = (out_dir / "results.md").read_text(encoding="utf-8")
    assert markdown.index("figures/summary.png") < markdown.index("## Comparison") < markdown.index("## Configuration")


def test_flip_tta_rows_stand_apart_from_the_study_rows(tmp_path):
    results = _fake_results(("baseline", "reweight"))
    flipped = _fake_results(("baseline", "reweight"))["strategies"]
    flipped["baseline"]["mean"]["accuracy"] = 0.5
    results["strategies_tta_flip"] = flipped
    report.write_results_markdown(results, tmp_path / "results.md")
    markdown = (tmp_path / "results.md").read_text(encoding="utf-8")
    plain, tta = markdown.split("## With flip test-time augmentation")
    assert _md_row(plain, "baseline")[2].startswith(
        report_tables.percent(results["strategies"]["baseline"]["mean"]["accuracy"])
    )
    assert _md_row(tta, "baseline")[2].startswith("50.00")


def test_the_title_names_the_data_and_its_imbalance():
    assert (
        report.study_title({"config": {"data": "../shared/data/cifar10.npz", "imbalance": 100.0}})
        == "Long-tail study: results (cifar10.npz, imbalance factor 100)"
    )
    assert (
        report.study_title({"config": {"data": "/data/defects", "imbalance": "natural"}})
        == "Long-tail study: results (defects, natural imbalance)"
    )
    assert report.study_title({}) == "Long-tail study: results"


# ---------------------------------------------------------------- fixed vs tuned, balanced vs imbalanced tests


def _with_tuned(results: dict) -> dict:
    """``results`` with what ``reproduce`` adds: per-head stage-2 settings and the tuned results."""
    strategies = results["strategies"]
    results["config"]["stage2"] = {
        "decoupled-modified-ce": {"loss": "modified-ce", "tau": None, "tuned": ["tau"]},
        "decoupled-balanced-softmax": {"loss": "balanced-softmax", "gamma": None, "beta": None},
        "decoupled-focal": {"loss": "focal", "gamma": 1.0},
        "decoupled-focal-tuned": {"loss": "focal", "gamma": None, "tune": True, "tuned": ["gamma"]},
        "decoupled-cb-focal": {"loss": "cb-focal", "beta": 0.9999, "gamma": 1.0},
    }
    modified = strategies["decoupled-modified-ce"]
    modified["tuned"] = {
        "accuracy": modified["mean"]["accuracy"],
        "std": modified["std"]["accuracy"],
        "accuracy_by_seed": modified["by_seed"]["accuracy"],
        "seeds": list(SEEDS),
        "chosen": [{"tau": 3.0}, {"tau": 3.5}],
        "grid": [{"tau": t} for t in (0.5, 1.0, 3.0, 3.5)],
        "run": "decoupled-modified-ce",
    }
    focal = strategies["decoupled-focal"]
    by_seed = [a + 0.01 * (k + 1) for k, a in enumerate(focal["by_seed"]["accuracy"])]  # +1 and +2 points
    strategies["decoupled-focal"]["tuned"] = {
        "accuracy": float(np.mean(by_seed)),
        "std": float(np.std(by_seed, ddof=1)),
        "accuracy_by_seed": by_seed,
        "seeds": list(SEEDS),
        "chosen": [{"gamma": 2.0}, {"gamma": 0.5}],
        "grid": [{"gamma": g} for g in (0.0, 0.5, 1.0, 2.0)],
        "run": "decoupled-focal-tuned",
    }
    cb_focal = strategies["decoupled-cb-focal"]
    cb_focal["tuned"] = {
        "accuracy": cb_focal["mean"]["accuracy"],
        "std": cb_focal["std"]["accuracy"],
        "accuracy_by_seed": cb_focal["by_seed"]["accuracy"],
        "seeds": list(SEEDS),
        "chosen": [{"beta": 0.999, "gamma": 0.5}, {"beta": 0.9999, "gamma": 1.0}],
        "grid": [{"beta": b, "gamma": g} for b in (0.999, 0.9999) for g in (0.5, 1.0)],
        "run": "decoupled-cb-focal-tuned",
    }
    return results


def _table(markdown: str, heading: str) -> list[list[str]]:
    """The rows (cells) of the first table after ``heading`` in results.md, header first."""
    lines = markdown.split(heading, 1)[1].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return [rows[0], *rows[2:]]


def test_the_report_shows_fixed_and_tuned_on_validation_side_by_side(tmp_path):
    results = _with_tuned(_fake_results())
    report.write_results_markdown(results, tmp_path / "results.md")
    markdown = (tmp_path / "results.md").read_text(encoding="utf-8")
    strategies = results["strategies"]
    # The comparison table: the tuned top-1 beside the fixed one, "—" for a row with no knob.
    tuned_column = report.COMPARISON_HEADER.index("Top-1 tuned on validation (mean ± std)")
    focal = strategies["decoupled-focal"]["tuned"]
    assert (
        _md_row(markdown, "decoupled-focal")[tuned_column]
        == f"{100 * focal['accuracy']:.2f} ± {100 * focal['std']:.2f}"
    )
    assert _md_row(markdown, "decoupled-balanced-softmax")[tuned_column] == "—"
    assert _md_row(markdown, "baseline")[tuned_column] == "—"
    # The table of its own: fixed setting, both top-1s, the paired per-seed gains, what was chosen.
    header, *rows = _table(markdown, "## Fixed setting vs tuned on validation")
    assert tuple(header) == report.TUNED_HEADER
    by_name = {row[0]: row for row in rows}
    assert list(by_name) == [
        "decoupled-modified-ce",
        "decoupled-balanced-softmax",
        "decoupled-focal",
        "decoupled-cb-focal",
    ]
    row = by_name["decoupled-focal"]
    assert row[1] == "γ = 1"
    assert row[2] == report_tables._mean_std(strategies["decoupled-focal"], "accuracy")
    assert row[4] == "+1.50" and row[5] == "+1.00 / +2.00"
    assert row[6] == "γ = 2 / γ = 0.5" and row[7] == "γ ∈ {0, 0.5, 1, 2} (4 heads)"
    assert by_name["decoupled-modified-ce"][1] == "τ tuned on validation (this row)"
    assert by_name["decoupled-modified-ce"][4:6] == ["+0.00", "+0.00 / +0.00"]
    assert by_name["decoupled-balanced-softmax"][1] == "no knob: logit-adjusted CE at τ = 1"
    assert by_name["decoupled-balanced-softmax"][3:] == ["—"] * 5
    assert by_name["decoupled-cb-focal"][1] == "β = 0.9999, γ = 1"
    assert by_name["decoupled-cb-focal"][6] == "β = 0.999, γ = 0.5 / β = 0.9999, γ = 1"
    assert by_name["decoupled-cb-focal"][7] == "β ∈ {0.999, 0.9999} × γ ∈ {0.5, 1} (4 heads)"
    assert "Balanced Softmax has no knob" in markdown and "sample standard deviation" in markdown
    # The same in report.html.
    report.write_report_html(results, tmp_path, environment=ENVIRONMENT)
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "<h2>Fixed setting vs tuned on validation</h2>" in page
    assert '<td>decoupled-focal</td><td class="text">γ = 1</td>' in page and "<td>+1.00 / +2.00</td>" in page


def test_results_without_tuned_results_have_no_tuned_table(rendered):
    results, out_dir = rendered
    markdown = (out_dir / "results.md").read_text(encoding="utf-8")
    assert "Fixed setting vs tuned on validation" not in markdown


def _imbalanced_metrics(rng: np.random.Generator) -> dict:
    """Metrics on a test split with its own imbalance (as --test-fraction holds out of long-tailed data)."""
    support = [200, 120, 80, 60, 40, 30, 20, 15, 10, 5]
    y_true = np.repeat(np.arange(len(CLASS_NAMES)), support)
    y_pred = np.where(rng.random(len(y_true)) < 0.7, y_true, rng.integers(0, len(CLASS_NAMES), len(y_true)))
    return classification_metrics(y_true, y_pred, CLASS_NAMES, COUNTS)


def test_columns_equal_on_a_balanced_test_set_appear_once_and_all_appear_on_an_imbalanced_one(tmp_path):
    balanced = _fake_results(("baseline", "reweight"))
    report.write_results_markdown(balanced, tmp_path / "balanced.md")
    markdown = (tmp_path / "balanced.md").read_text(encoding="utf-8")
    header = _table(markdown, "## Comparison")[0]
    assert tuple(header) == report.COMPARISON_HEADER
    assert {"Balanced accuracy", "Weighted R", "Macro F1"}.isdisjoint(header)
    assert "The test set is balanced (100 images per class)" in markdown
    # Those columns would have repeated others: top-1 = balanced accuracy = weighted recall, macro F1 = weighted F1.
    entry = balanced["strategies"]["baseline"]
    assert entry["balanced_accuracy"] == pytest.approx(entry["accuracy"]) == entry["weighted"]["recall"]
    assert entry["macro"]["f1"] == pytest.approx(entry["weighted"]["f1"])

    rng = np.random.default_rng(5)
    imbalanced = {
        "config": {"seeds": list(SEEDS)},
        "strategies": {
            name: aggregate_seeds([_imbalanced_metrics(rng) for _ in SEEDS], SEEDS) for name in ("baseline", "reweight")
        },
    }
    report.write_results_markdown(imbalanced, tmp_path / "imbalanced.md")
    markdown = (tmp_path / "imbalanced.md").read_text(encoding="utf-8")
    header, baseline_row, _ = _table(markdown, "## Comparison")
    assert tuple(header) == report.COMPARISON_HEADER_IMBALANCED
    assert {"Balanced accuracy", "Weighted R", "Weighted F1", "Macro F1"} <= set(header)
    assert "The test set is imbalanced (5 to 200 images per class)" in markdown
    entry = imbalanced["strategies"]["baseline"]
    cells = dict(zip(header, baseline_row, strict=True))
    assert cells["Balanced accuracy"] == report_tables._mean_std(entry, "balanced_accuracy")
    assert cells["Macro F1"] == report_tables._mean_std(entry, "macro_f1")
    assert cells["Balanced accuracy"] != cells["Top-1 (mean ± std)"].split(" (n=")[0]
    assert cells["Macro F1"] != cells["Weighted F1"]
    report.write_report_html(imbalanced, tmp_path, environment=ENVIRONMENT)
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert all(f"<th>{html.escape(column)}</th>" in page for column in report.COMPARISON_HEADER_IMBALANCED)


def test_one_seed_shows_the_mean_alone_and_says_why(tmp_path):
    rng = np.random.default_rng(0)
    results = {"config": {}, "strategies": {"baseline": aggregate_seeds([_fake_metrics(rng, 0.0)], [0])}}
    report.write_results_markdown(results, tmp_path / "results.md")
    markdown = (tmp_path / "results.md").read_text(encoding="utf-8")
    assert "±" not in _md_row(markdown, "baseline")[2] and _md_row(markdown, "baseline")[2].endswith("(n=1)")
    assert "one seed has no standard deviation" in markdown
    report.plot_summary(results["strategies"], tmp_path / "summary.png")  # no error bar, no error


# ---------------------------------------------------------------- under the deployment prior


def _deployment_results() -> dict:
    """Two seeds of three strategies as the study sees them: a baseline that recalls the head
    classes best, a balanced head that recalls every class alike, and one in between."""
    rng = np.random.default_rng(7)
    profiles = {"baseline": (0.99, 0.40), "reweight": (0.93, 0.62), "decoupled-modified-ce": (0.86, 0.80)}
    strategies = {
        name: aggregate_seeds([_fake_metrics(rng, 0.0, head, tail) for _ in SEEDS], SEEDS)
        for name, (head, tail) in profiles.items()
    }
    return {"config": {"data": "cifar10.npz", "imbalance": 100.0, "seeds": list(SEEDS)}, "strategies": strategies}


def test_the_report_shows_top1_under_each_test_prior_and_says_which_strategy_wins_where(tmp_path, monkeypatch):
    results = _deployment_results()
    strategies = results["strategies"]
    figures = _drawn_figures(monkeypatch)
    report.render_study(results, tmp_path, environment=ENVIRONMENT)
    (ax,) = next(figure for figure in figures if figure.axes[0].get_title().startswith("Top-1 by the class prior")).axes
    axis = [label.get_text() for label in ax.get_xticklabels()]
    assert axis == ["forward-50", "forward-25", "forward-10", "forward-5", "forward-2", "uniform", "backward-2",
                    "backward-5", "backward-10", "backward-25", "backward-50"]  # fmt: skip
    lines = {line.get_label(): line.get_ydata() for line in ax.get_lines() if not line.get_label().startswith("_")}
    assert list(lines) == list(strategies)
    for name, values in lines.items():
        expected = [100 * strategies[name]["under_prior"][prior]["accuracy"] for prior in axis]
        assert list(values) == pytest.approx(expected)
    # The head-heavy baseline wins under the training prior and the forward long tails, the
    # balanced head from uniform to the backward ones: the sentence says so, from the numbers.
    best = {p: max(strategies, key=lambda n: strategies[n]["under_prior"][p]["accuracy"]) for p in ["train", *axis]}
    assert best["train"] == best["forward-50"] == "baseline"
    assert best["uniform"] == best["backward-50"] == "decoupled-modified-ce"
    verdict = report.prior_verdict(strategies)
    assert verdict.startswith("The best strategy depends on the prior it is deployed to (mean top-1 over 2 seeds)")
    baseline_train = report_tables.percent(strategies["baseline"]["under_prior"]["train"]["accuracy"])
    assert f"under the training prior, baseline ({baseline_train}%)" in verdict
    assert "decoupled-modified-ce (" in verdict and "to backward-50" in verdict
    # The table: top-1 beside top-1 under train, uniform and backward-10, mean ± sample std.
    markdown = (tmp_path / "results.md").read_text(encoding="utf-8")
    section = _table(markdown, "## Under the deployment prior")
    assert section[0] == list(report.prior_header(strategies))
    assert section[0][2:] == ["Under the training prior (mean ± std)", "Under uniform (mean ± std)",
                              "Under backward-10 (mean ± std)"]  # fmt: skip
    rows = {row[0]: row for row in section[1:]}
    entry = strategies["reweight"]["under_prior"]["backward-10"]
    assert rows["reweight"][4] == f"{report_tables.percent(entry['accuracy'])} ± {report_tables.percent(entry['std'])}"
    assert entry["std"] == pytest.approx(np.std(entry["accuracy_by_seed"], ddof=1))
    assert rows["baseline"][1] == report_tables._mean_std(strategies["baseline"], "accuracy")
    assert verdict in markdown and "figures/prior_accuracy.png" in markdown
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "<h2>Under the deployment prior</h2>" in page and html.escape(verdict) in page


def test_the_prior_figure_in_headless_chromium(tmp_path):
    """The report of fake results opens in Chromium with the new figure decoded; the screenshot
    (``prior-report.png``) is the page from the summary chart down to the deployment table."""
    results = _deployment_results()
    report.render_study(results, tmp_path, environment=ENVIRONMENT)
    uri = (tmp_path / "report.html").as_uri()
    dom = _chromium("--dump-dom", uri, tmp_path=tmp_path).stdout
    assert f'data-images-loaded="{len(results["strategies"]) + 5}"' in dom
    assert dom.index("<h2>Comparison</h2>") < dom.index("<h2>Under the deployment prior</h2>")
    assert dom.index('alt="Top-1 by the class prior of the deployment') < dom.index("<h2>Study-reported numbers</h2>")
    shot = tmp_path / "prior-report.png"
    _chromium(f"--screenshot={shot}", "--window-size=1280,2400", uri, tmp_path=tmp_path)
    _assert_png(shot)
    assert imread(shot).std() > 0
    _assert_png(tmp_path / "figures" / "prior_accuracy.png")


def test_results_without_test_priors_have_no_deployment_section(tmp_path):
    results = _fake_results(("baseline", "reweight"))
    for entry in results["strategies"].values():
        del entry["under_prior"]
    report.render_study(results, tmp_path, environment=ENVIRONMENT)
    assert not (tmp_path / "figures" / "prior_accuracy.png").exists()
    assert "deployment prior" not in (tmp_path / "results.md").read_text(encoding="utf-8")
    assert report.prior_verdict(results["strategies"]) == ""


def test_strategies_equal_under_a_prior_are_named_together():
    results = _deployment_results()
    strategies = {**results["strategies"], "baseline again": results["strategies"]["baseline"]}
    verdict = report.prior_verdict(strategies)
    train = report_tables.percent(strategies["baseline"]["under_prior"]["train"]["accuracy"])
    assert f"under the training prior, baseline and baseline again (tied, {train}%)" in verdict
    only = {"decoupled-modified-ce": results["strategies"]["decoupled-modified-ce"]}
    assert report.prior_verdict(only).startswith(
        "decoupled-modified-ce has the best mean top-1 over 2 seeds under every"
    )


def test_a_long_tuning_grid_is_shown_short_so_the_table_stays_narrow():
    grid = [{"gamma": g} for g in (0.0, 0.25, 0.5, 1.0, 2.0, 5.0)]
    assert report_tables._grid_text(grid) == "γ ∈ {0, 0.25, …, 5} (6 heads)"
    product = [{"beta": b, "gamma": g} for b in (0.99, 0.999) for g in (0.0, 1.0)]
    assert report_tables._grid_text(product) == "β ∈ {0.99, 0.999} × γ ∈ {0, 1} (4 heads)"


def test_number_cells_never_wrap_and_text_cells_may():
    # A mean ± std broken over three lines (seen in the Chromium screenshot of the three-seed study,
    # where the last column was numeric) misreads; grids and choices may wrap.
    table = report_html._TEMPLATES.get_template("elements.html.j2").module.table(
        ("Strategy", "Top-1", "Few", "Grid"),
        [("decoupled-focal", "87.16 ± 0.20 (n=3)", "73.92 ± 0.83", "γ ∈ {0, 0.25, …, 5} (13 heads)")],
    )
    assert "<td>decoupled-focal</td><td>87.16 ± 0.20 (n=3)</td><td>73.92 ± 0.83</td>" in table
    assert '<td class="text">γ ∈ {0, 0.25, …, 5} (13 heads)</td>' in table
    page, _, _ = report_html._TEMPLATES.loader.get_source(report_html._TEMPLATES, "report.html.j2")  # its CSS
    assert "td.text { white-space: normal; text-align: left; }" in page
    assert "td:last-child { white-space" not in page


def _results_of(names: list[str], counts: list[int], strategies=("baseline", "reweight", "decoupled-modified-ce")):
    """A results dict of a study on data with these class ``names`` and training ``counts``."""
    rng = np.random.default_rng(7)
    y_true = np.repeat(np.arange(len(names)), 10)
    entries = {}
    for index, name in enumerate(strategies):
        y_pred = np.where(rng.random(len(y_true)) < 0.5 + 0.1 * index, y_true, rng.integers(0, len(names), len(y_true)))
        metrics = with_test_priors(classification_metrics(y_true, y_pred, names, counts, "shots"), DEFAULT_TEST_PRIORS)
        entries[name] = aggregate_seeds([metrics], [0])
    return {"config": {"data": "data.npz", "imbalance": 100.0}, "strategies": entries}


def test_the_studys_numbers_stand_beside_a_study_on_cifar10_only(tmp_path, monkeypatch):
    """The study measured CIFAR-10-LT: its 84.15 / 85.82 / 93.78 beside CIFAR-100-LT (or any other
    data) would compare unlike with unlike, so the column, the table and the chart's diamonds go."""
    counts = [int(500 * 100 ** (-i / 99)) for i in range(100)]
    for names, shown in ((list(CLASS_NAMES), True), ([f"fine{i:02d}" for i in range(100)], False)):
        results = _results_of(names, counts if len(names) == 100 else list(COUNTS))
        out = tmp_path / str(len(names))
        out.mkdir()
        figures = _drawn_figures(monkeypatch)
        report.render_study(results, out, environment=ENVIRONMENT)
        markdown, page = (out / "results.md").read_text(), (out / "report.html").read_text()
        for text in (markdown, page):
            assert ("Study top-1" in text) is shown and ("Study-reported numbers" in text) is shown
            assert ("93.78" in text) is shown
        summary = next(f for f in figures if f.axes[0].get_title() == "Top-1 by strategy")
        assert any(text.get_text().startswith("study ") for text in summary.axes[0].texts) is shown


def test_the_recall_by_strategy_of_100_classes_is_binned_by_training_count(tmp_path, monkeypatch):
    """A line per strategy over 100 classes is a tangle: beyond LABELLED_CLASSES the study's recall
    figure gives each strategy's mean recall per log-spaced training-count bin."""
    counts = [int(500 * 100 ** (-i / 99)) for i in range(100)]
    results = _results_of([f"fine{i:02d}" for i in range(100)], counts)
    figures = _drawn_figures(monkeypatch)
    report_figures.plot_recall_comparison(results["strategies"], tmp_path / "recall.png")
    (axes,) = figures[0].axes
    assert axes.get_xscale() == "log" and len(axes.lines) == 3
    assert all(len(line.get_xdata()) <= report_figures.COUNT_BINS for line in axes.lines)
    ten = _results_of(list(CLASS_NAMES), list(COUNTS))
    report_figures.plot_recall_comparison(ten["strategies"], tmp_path / "recall10.png")
    assert [len(line.get_xdata()) for line in figures[1].axes[0].lines] == [10, 10, 10]
