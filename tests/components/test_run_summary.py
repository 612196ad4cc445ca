"""The Prefect Markdown summary: one row per stage, links to the MLflow run and the model version."""

from components.summary import markdown_summary

SUMMARY = {
    "mlflow_run_id": "r1",
    "stages": {
        "curate": {"cached": True, "seconds": 0.0, "metrics": {"rows_out": 64.0}},
        "deploy": {"cached": False, "seconds": 1.5, "metrics": {"registered": 1.0},
                   "deployment": {"model_name": "posttrain-policy", "version": "3", "registered": "rl",
                                  "decision": "rl passes", "endpoint": "http://127.0.0.1:8100/v1"}},
    },
}


def test_markdown_summary_links_run_and_model_version():
    md = markdown_summary(SUMMARY, "http://127.0.0.1:5000/#/experiments/1/runs/r1")
    assert "[r1](http://127.0.0.1:5000/#/experiments/1/runs/r1)" in md
    assert "| curate | yes | 0.0 | rows_out=64 |" in md
    assert "| deploy | no | 1.5 | registered=1 |" in md
    assert "(http://127.0.0.1:5000/#/models/posttrain-policy/versions/3)" in md
    assert "`http://127.0.0.1:8100/v1`" in md


def test_markdown_summary_has_no_bold_in_links_and_names_the_gate():
    md = markdown_summary(SUMMARY, "http://127.0.0.1:5000/#/experiments/1/runs/r1")
    assert "**" not in md  # Prefect's renderer showed them literally inside the link
    assert "[posttrain-policy version 3](http://127.0.0.1:5000/#/models/posttrain-policy/versions/3) (rl)" in md
    assert "Gate: rl passes" in md
