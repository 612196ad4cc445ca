import yaml

from components.serving.manifests import ManifestConfig, vllm_manifests


def test_manifests_name_model_uri_probes_and_resources():
    text = vllm_manifests("posttrain-policy", "7", "s3://bucket/compress/x/compressed", ManifestConfig(gpus=1))
    dep, svc = list(yaml.safe_load_all(text))
    assert dep["kind"] == "Deployment" and svc["kind"] == "Service"
    assert dep["metadata"]["name"] == "posttrain-policy-v7" == svc["metadata"]["name"]
    c = dep["spec"]["template"]["spec"]["containers"][0]
    assert c["args"][:2] == ["--model", "s3://bucket/compress/x/compressed"]
    assert c["readinessProbe"]["httpGet"]["path"] == "/health"
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    cpu_only = list(yaml.safe_load_all(vllm_manifests("m", "1", "/x", ManifestConfig(gpus=0))))[0]
    assert "nvidia.com/gpu" not in cpu_only["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
