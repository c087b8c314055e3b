"""The report builds from fixture rows: expected tables, missing and stale rows reported, and
every number in a table row traced to the row it names."""

import json
import re
import shutil
import subprocess

import pytest

from analysis.report import BEGIN, END, build, load, update_readme
from analysis.tables import fmt
from experiments.report import expected
from tests.conftest import ROOT

FIXTURES = ROOT / "tests" / "fixtures" / "results"
EXPECTED = expected()


@pytest.fixture
def results(tmp_path):
    shutil.copytree(FIXTURES, tmp_path / "results")
    return tmp_path / "results"


def test_sections_from_fixture_rows(results):
    report, snippet = build(results, ROOT, expected=EXPECTED)
    assert "## 1. Throughput measured here" in report and "### Engine" in report
    assert "| tspipe | 2 | 2 |" in report
    assert "## 2. Throughput at paper scale (simulated" in report and "**Simulated, not measured.**" in report
    assert "| mocov3_vit_large_halfblocks_bf16 | 450 GB/s | 16 | realistic, no sweep |" in report
    assert "| byol_resnet50_bf16 | realistic |" in report  # the calibration check
    # the paper's table row by row: beside a calibrated pair, our simulated figures; else not calibrated
    paper = report.split("## 3. The paper's table, row by row")[1].split("## 4.")[0]
    assert "| moco_v3 | ViT-Large -> ViT-Large | 11.31 | 33.95 | 54.70 | 4.840 |" in paper
    assert "mocov3_vit_large_halfblocks_bf16 (no sweep: upper bound) |" in paper
    assert paper.count("| not calibrated |") == 12
    assert "No GPU benchmark rows yet" in report and "has not run on a GPU yet: it is owed" in report
    assert "### BYOL" in report and "| sync | sequential | knn_top1 | 2 | 0.7100 |" in report
    assert "teacher_drift_rel_l2" in report
    assert "tspipe (M=" in snippet and "simulated H200, realistic" in snippet
    assert "knn_top1 tspipe - synchronous (2 seeds)" in snippet
    assert (results / "report_speedups.png").stat().st_size > 10_000


def test_distillation_accuracy_rows_reach_the_tables_and_the_headline(results):
    folder = results / "distilbert" / "accuracy"
    folder.mkdir(parents=True)
    base = json.loads((FIXTURES / "byol" / "accuracy" / "rows.jsonl").read_text().splitlines()[0])
    rows = [
        {
            **base,
            "method": "distilbert",
            "label": label,
            "schedule": schedule,
            "metric": "mlm_acc",
            "metric_value": value,
            "seed": 0,
        }
        for label, schedule, value in (
            ("distil-sequential", "sequential", 0.25),
            ("distil-tspipe", "tspipe", 0.25),
        )
    ]
    rows.append(
        {
            **base,
            "method": "distilbert",
            "label": None,
            "schedule": "tspipe",
            "metric": "max_param_diff",
            "metric_value": 3e-7,
            "seed": 0,
        }
    )
    (folder / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    report, snippet = build(results, ROOT, expected=EXPECTED)
    section = report.split("### DistilBERT")[2]  # [1] is the throughput section's
    assert "| max_param_diff |" in section and "by-epoch plot" not in section.split("\n\n")[1]
    assert "mlm_acc tspipe - synchronous (1 seeds)" in snippet


def test_missing_rows_are_reported_with_their_command(results):
    report, _ = build(results, ROOT, expected=EXPECTED)
    assert "missing: no rows under `results/moco_v3/`; run `make bench-mocov3`." in report
    assert "missing: no rows under `results/soft_target/accuracy/`; run `make accuracy-kd`." in report
    shutil.rmtree(results / "simulated")
    report, _ = build(results, ROOT, expected=EXPECTED)
    assert "missing: no rows under `results/simulated/`; run `make simulate`." in report


def test_stale_and_unknown_rows_are_flagged(results):
    report, _ = build(results, ROOT, expected=EXPECTED)
    env = report.split("## 8. Environment and freshness")[1]
    assert re.search(r"\| synthetic \| 4 \| deadbeef0000 \| unknown commit \|", env)
    assert re.search(r"\| simulated \| \d+ \| [0-9a-f]{12} \| stale: code changed since \|", env)


def test_every_number_traces_to_its_row(results):
    report, _ = build(results, ROOT, expected=EXPECTED)
    data = {r["_source"]: r for df in load(results).values() for r in df.to_dict("records")}
    checked = 0
    for line in report.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if not line.startswith("|") or not re.fullmatch(r"[\w/]+\.jsonl#\d+", cells[-1]):
            continue
        if cells[-1].startswith("results/"):  # the headline: its value is a ratio of two rows
            continue
        row = data[cells[-1]]
        if "->" in cells[1]:  # the paper's table: its own figures, our row cited for the simulated ones
            continue
        if row.get("calibration") is None and row.get("samples_per_s") is not None:
            assert cells[3] == fmt(row["samples_per_s"]), line  # measured samples/s
            assert cells[6] == fmt(row["efficiency"]), line
            if row.get("prediction_error") is not None:  # the same error the fidelity table counts
                assert cells[8] == fmt(100 * row["prediction_error"]), line
        elif row.get("kind") == "check":
            assert cells[2] == fmt(row["measured_step_ms"]) and cells[3] == fmt(row["step_ms"]), line
        elif row.get("kind") == "sim":
            assert cells[4] == fmt(row["samples_per_s"]), line  # simulated samples/s
            assert cells[6] == fmt(row["efficiency"]), line
        checked += 1
    for line in report.splitlines():  # accuracy tables: per-seed values from the named rows
        cells = [c.strip() for c in line.strip("|").split("|")]
        sources = [c.strip() for c in cells[-1].split(",")] if line.startswith("|") else []
        if len(sources) > 1 and all(re.fullmatch(r"[\w/]+\.jsonl#\d+", x) for x in sources):
            assert cells[6] == ", ".join(f"{data[x]['metric_value']:.4f}" for x in sources), line
            checked += 1
    assert checked >= 7


def test_readme_snippet_between_markers(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{BEGIN}\nold\n{END}\noutro\n")
    assert update_readme(readme, "| new |\n")
    assert readme.read_text() == f"intro\n{BEGIN}\n| new |\n{END}\noutro\n"
    assert not update_readme(readme, "| new |\n")


def test_committed_report_is_regenerated_byte_for_byte(tmp_path):
    committed = ROOT / "results" / "REPORT.md"
    if not committed.exists():
        pytest.skip("no committed report yet")
    report, snippet = build(ROOT / "results", ROOT, expected=EXPECTED, plots=tmp_path)
    assert report == committed.read_text()
    readme = (ROOT / "README.md").read_text()
    assert f"{BEGIN}\n{snippet}{END}" in readme


def test_fixture_rows_have_the_schema():
    from core.metrics import ROW_KEYS

    for path in FIXTURES.rglob("rows.jsonl"):
        for line in path.read_text().splitlines():
            row = json.loads(line)
            assert set(ROW_KEYS) <= set(row), path


def test_accuracy_rows_follow_their_methods_numerics_fingerprint(results):
    from analysis.provenance import golden_digests

    digest = golden_digests()["byol"]
    path = results / "byol" / "accuracy" / "rows.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    head = subprocess.run(
        ["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT, capture_output=True, text=True
    )
    root = subprocess.run(
        ["git", "rev-list", "--max-parents=0", "HEAD"], cwd=ROOT, capture_output=True, text=True
    )
    before = root.stdout.split()[0][:12]  # the first commit: no fingerprint file yet
    for fingerprint, sha, state in (
        (digest, head.stdout.strip(), "current (numerics fingerprint)"),
        ("0" * 16, head.stdout.strip(), "stale: numerics changed"),
        # today's fingerprint stamped on rows made before it existed vouches for nothing
        (digest, before, "stale: its commit had another numerics fingerprint"),
    ):
        path.write_text(
            "".join(json.dumps({**r, "fingerprint": fingerprint, "git_sha": sha}) + "\n" for r in rows)
        )
        env = build(results, ROOT, expected=EXPECTED)[0].split("## 8. Environment and freshness")[1]
        assert re.search(
            rf"\| byol/accuracy \| {len(rows)} \| [0-9a-f]{{12}} \| {re.escape(state)} \|", env
        ), env


def test_distillation_gain_and_bitwise_parity_reach_the_headline(results):
    folder = results / "distilbert" / "accuracy"
    folder.mkdir(parents=True)
    base = json.loads((FIXTURES / "byol" / "accuracy" / "rows.jsonl").read_text().splitlines()[0])
    common = {**base, "method": "distilbert", "metric": "mlm_acc", "schedule": "sequential"}
    rows = [
        {**common, "label": "distil-sequential", "metric_value": 0.40 + 0.01 * s, "seed": s} for s in range(3)
    ]
    rows += [{**common, "label": "mlm-only", "metric_value": 0.35 + 0.012 * s, "seed": s} for s in range(3)]
    rows.append({**common, "label": "distil-tspipe", "schedule": "tspipe", "metric_value": 0.40, "seed": 0})
    rows.append({**common, "label": None, "metric": "max_param_diff", "metric_value": 0.0, "seed": 0})
    (folder / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    report, snippet = build(results, ROOT, expected=EXPECTED)
    section = report.split("### DistilBERT")[2]
    assert "| distil-sequential - mlm-only | 3 |" in section
    assert "`distil-tspipe` - `distil-sequential`: the students are bitwise identical" in section
    gain = next(line for line in snippet.splitlines() if "distilled - mlm-only (3 seeds)" in line)
    assert "+4.80 points" in gain and "gain: the interval lies above 0" in gain
    parity = next(line for line in snippet.splitlines() if "tspipe - synchronous (1 seeds)" in line)
    assert "| 0 (bitwise) | no loss: the students are bitwise identical (1 seed(s) compared)" in parity
    # a distillation gain inside its noise is not called one
    for r in rows[3:6]:
        r["metric_value"] = 0.41 + (0.02 if r["seed"] == 1 else 0.0)
    (folder / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    _, snippet = build(results, ROOT, expected=EXPECTED)
    gain = next(line for line in snippet.splitlines() if "distilled - mlm-only (3 seeds)" in line)
    assert "no gain shown: the interval reaches" in gain and "no loss" not in gain
    # a difference row of another seed says nothing about seed 0
    rows[-1]["seed"] = 1
    (folder / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    _, snippet = build(results, ROOT, expected=EXPECTED)
    assert "bitwise" not in next(line for line in snippet.splitlines() if "tspipe - synchronous" in line)
    rows[-1]["seed"] = 0
    # a nonzero difference is no bitwise parity: one seed then supports nothing
    rows[-1]["metric_value"] = 1e-7
    (folder / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    _, snippet = build(results, ROOT, expected=EXPECTED)
    parity = next(line for line in snippet.splitlines() if "tspipe - synchronous (1 seeds)" in line)
    assert "too few seeds" in parity and "bitwise" not in parity
    # every paired seed bitwise equal: said so rather than as an interval of zeros
    rows = [r for r in rows if r["label"] != "distil-tspipe" and r["metric"] != "max_param_diff"]
    rows += [{**r, "label": "distil-tspipe", "schedule": "tspipe"} for r in rows[:3]]
    rows += [
        {**common, "label": None, "metric": "max_param_diff", "metric_value": 0.0, "seed": s}
        for s in range(3)
    ]
    (folder / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    _, snippet = build(results, ROOT, expected=EXPECTED)
    parity = next(line for line in snippet.splitlines() if "tspipe - synchronous (3 seeds)" in line)
    assert "| 0 (bitwise) | no loss: the students are bitwise identical (3 seed(s) compared)" in parity


@pytest.mark.parametrize("when", ["head", "first", "unknown"])
def test_micro_benchmarks_name_their_commit_and_state(results, when):
    sha = {
        "head": subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout,
        "first": subprocess.run(
            ["git", "rev-list", "--max-parents=0", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.split()[-1],
        "unknown": "deadbeef" * 5,
    }[when].strip()
    stats = {"median": 0.01, "q1": 0.009, "q3": 0.011, "rounds": 10}
    (results / "micro").mkdir()
    (results / "micro" / "benchmark.json").write_text(
        json.dumps(
            {
                "datetime": "2026-12-07T01:34:01",
                "commit_info": {"id": sha, "dirty": True},
                "machine_info": {"cpu": {"brand_raw": "a cpu"}},
                "benchmarks": [
                    {
                        "name": "test_engine_over_plain_loop",
                        "stats": stats,
                        # per-round ratios 1.05, 1.10, 0.98: median +5 %, from -2 % to +10 %
                        "extra_info": {"plain_s": [1.0, 2.0, 1.0], "engine_s": [1.05, 2.2, 0.98], "steps": 4},
                    },
                ],
            }
        )
    )
    report, _ = build(results, ROOT, expected=EXPECTED)
    state = {"head": "current", "first": "stale: code changed since", "unknown": "unknown commit"}[when]
    assert f"a cpu, 2026-12-07, git {sha[:12]}: {state})" in report
    assert "takes 262.5 ms (median per step) against 250.0 ms" in report
    assert "+5.0% (median of the 3 rounds' ratios; from -2.0% to +10.0%)" in report
