"""The data engine end to end on the real stardist nuclei with real MobileSAM, the CI-short variant of
bench/engine_stardist.py: 4 nuclei per quadrant, 2 training steps, 3 seeds; round 1 manual and round
2 semi by the simulated annotator, each fine-tuned and judged on the held-out quadrant; round 3 auto,
scored with COCOeval."""

import json

import pytest

from grounded.testing.engine_data import SHORT, run_stardist_rounds

pytestmark = [pytest.mark.timeout(600), pytest.mark.usefixtures("one_torch_thread")]


def test_three_rounds_on_the_stardist_quadrants(mobile_sam_checkpoint, stardist_nuclei, tmp_path):
    from grounded.engine.project import Project
    from grounded.engine.report import round_figures

    image, labels = stardist_nuclei
    state = run_stardist_rounds(image, labels, tmp_path, str(mobile_sam_checkpoint), SHORT, log=lambda *_: None)
    project = Project.open(tmp_path / "project")
    manual, semi, auto = state["rounds"]
    assert [r["stage"] for r in state["rounds"]] == ["manual", "semi", "auto"]
    assert all(r["status"] == "done" for r in state["rounds"])
    for entry in (manual, semi):
        figures = round_figures(project, entry)
        assert entry["masks"] == 4  # the simulated annotator labelled every nucleus of the quadrant
        assert 0 <= figures["clicks_per_mask"] <= 20
        decision = entry["decision"]
        assert decision["objects"] == 4 and set(decision["models"]) == {"current", "seed_0", "seed_1", "seed_2"}
        assert len(list((project.round_dir(entry) / "train").glob("seed_*/final/model.safetensors"))) == 3
        for m in decision["models"].values():
            assert 0 <= m["mIoU"]["value"] <= 1 and 1 <= m["NoC@90"]["value"] <= SHORT["clicks"]
        kept = project.root / "models" / f"v{entry['index']:03d}"
        assert kept.exists() == decision["accepted"]
    assert round_figures(project, manual)["clicks_per_mask"] >= 1  # manual: every mask from clicks
    # semi: its log has a line per accepted, corrected or clicked mask, and every nucleus ends labelled
    log = [json.loads(t) for t in (project.round_dir(semi) / "labels" / "log.jsonl").read_text().splitlines()]
    assert len(log) >= 4
    accepted = [e for e in state["rounds"] if e.get("decision", {}).get("accepted")]
    expected = f"models/v{accepted[-1]['index']:03d}" if accepted else str(mobile_sam_checkpoint)
    assert state["model"]["current"] == expected and auto["model"].endswith(expected)
    assert "decision" not in auto and 0 <= auto["auto_ap"]["AP"] <= 1 and auto["auto_ap"]["truth"] == 4
    sizes = [len(json.loads(project.dataset_path(i).read_text())["annotations"]) for i in (1, 2, 3)]
    assert sizes[:2] == [4, 8] and sizes[2] == 8 + auto["masks"]  # every version holds the ones before
    report = (project.root / "report.md").read_text()
    assert "| 1 | manual | done |" in report and "COCOeval segm" in report
    assert (project.root / "report_heldout.png").stat().st_size > 0 and (project.root / "report_clicks.png").exists()
