"""Single-setting checks of the fmlite chart: defaults, rejected values and the optional parts."""

from __future__ import annotations

import json
import re
from typing import Any

import helm_python as helm
import pytest

from chart_rendering import (
    CHART_DIR,
    REPO_ROOT,
    all_containers,
    lint_findings,
    option_value,
    pod_spec,
    render,
    selects,
    validate_manifest,
)

DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def validate_all(documents: tuple[dict[str, Any], ...]) -> None:
    for document in documents:
        validate_manifest(document)


def test_defaults_render_valid_and_lint_clean() -> None:
    chart = render(with_test_images=False)

    validate_all(chart.documents)
    assert lint_findings() == []
    (router,) = chart.with_component("Deployment", "l0")
    assert pod_spec(router)["containers"][0]["image"] == "fmlite-controller:0.1.0"
    assert "trial-fmlite-l0.fmlite.svc:9090/thrift" in chart.notes


def test_traffic_config_loads_in_router() -> None:
    from controller.traffic import TrafficSplit

    traffic = {
        "variants": {"fmlite": {}, "cosine": {}},
        "buckets": [
            {"name": "control", "fraction": 0.9, "variant": "fmlite"},
            {"name": "baseline", "fraction": 0.1, "variant": "cosine"},
        ],
    }
    chart = render({"traffic": traffic})

    config_map = chart.get("ConfigMap", "trial-fmlite-traffic")
    split = TrafficSplit.from_dict(json.loads(config_map["data"]["traffic.json"]))
    assert [(b.name, b.fraction, b.variant) for b in split.buckets] == [
        ("control", 0.9, "fmlite"),
        ("baseline", 0.1, "cosine"),
    ]
    (router,) = chart.with_component("Deployment", "l0")
    spec = pod_spec(router)
    assert option_value(spec["containers"][0]["args"], "--traffic") == "/etc/fmlite/traffic.json"
    (volume,) = [v for v in spec["volumes"] if "configMap" in v]
    assert volume["configMap"]["name"] == "trial-fmlite-traffic"


def test_traffic_change_rolls_router() -> None:
    def checksum(fraction: float) -> str:
        traffic = {"buckets": [{"name": "a", "fraction": fraction, "variant": "fmlite"},
                               {"name": "b", "fraction": round(1 - fraction, 6), "variant": "cosine"}]}
        (router,) = render({"traffic": traffic}).with_component("Deployment", "l0")
        return router["spec"]["template"]["metadata"]["annotations"]["checksum/traffic"]

    assert checksum(0.9) != checksum(0.8)


BAD_VALUES = [
    pytest.param({"shards": 0}, "/shards", id="zero-shards"),
    pytest.param({"leaf": {"replicasPerShard": 0}}, "/leaf/replicasPerShard", id="zero-leaf-replicas"),
    pytest.param({"l1": {"replicasPerShard": 0}}, "/l1/replicasPerShard", id="zero-l1-replicas"),
    pytest.param({"leaf": {"nodePools": {"spotFraction": 1.5}}}, "/leaf/nodePools/spotFraction", id="spot-above-1"),
    pytest.param({"leaf": {"nodePools": {"spotFraction": -0.1}}}, "/leaf/nodePools/spotFraction", id="spot-negative"),
    pytest.param({"leaf": {"runner": "tfserving"}}, "/leaf/runner", id="runner-without-sidecar"),
    pytest.param({"leaf": {"framedPort": 0}}, "/leaf/framedPort", id="zero-framed-port"),
    pytest.param({"leaf": {"tfServing": {"image": {"tag": "latest"}}}}, "/leaf/tfServing/image/tag", id="unpinned-tfserving"),
    pytest.param({"redis": {"mode": "cluster"}}, "/redis/mode", id="unknown-redis-mode"),
    pytest.param({"redis": {"mode": "external", "external": {"url": "http://redis:6379"}}}, "/redis/external/url", id="redis-url-scheme"),
    pytest.param({"artifacts": {"source": "s3"}}, "/artifacts/source", id="unknown-artifact-source"),
    pytest.param({"drain": {"timeoutSeconds": 0}}, "/drain/timeoutSeconds", id="zero-drain"),
    pytest.param({"traffic": {"buckets": []}}, "/traffic/buckets", id="no-buckets"),
    pytest.param({"traffic": {"buckets": [{"name": "a", "fraction": 0, "variant": "fmlite"}]}}, "/traffic/buckets/0/fraction",
                 id="zero-fraction"),
]


@pytest.mark.parametrize(("values", "path"), BAD_VALUES)
def test_schema_rejects_bad_value(values: dict[str, Any], path: str) -> None:
    with pytest.raises(helm.HelmValuesError) as raised:
        render(values)
    assert f"at '{path}'" in str(raised.value)


TEMPLATE_CHECKS = [
    pytest.param({"traffic": {"buckets": [{"name": "a", "fraction": 0.9, "variant": "fmlite"}]}},
                 "fractions sum to 0.9, expected 1", id="fractions-below-1"),
    pytest.param({"traffic": {"buckets": [{"name": "a", "fraction": 0.6, "variant": "fmlite"},
                                          {"name": "b", "fraction": 0.6, "variant": "cosine"}]}},
                 "fractions sum to 1.2, expected 1", id="fractions-above-1"),
    pytest.param({"traffic": {"buckets": [{"name": "a", "fraction": 1, "variant": "wide-deep"}]}},
                 'names variant "wide-deep", which is not in traffic.variants (cosine, fmlite)', id="unknown-variant"),
    pytest.param({"traffic": {"buckets": [{"name": "a", "fraction": 0.5, "variant": "fmlite"},
                                          {"name": "a", "fraction": 0.5, "variant": "cosine"}]}},
                 'bucket name "a" is used twice', id="duplicate-bucket"),
    pytest.param({"redis": {"mode": "external"}}, "set redis.external.url", id="external-redis-without-url"),
    pytest.param({"artifacts": {"source": "sync"}}, "set artifacts.sync.remote", id="sync-without-remote"),
    pytest.param({"l1": {"chunkTimeoutMs": 50}}, "l1.chunkTimeoutMs (50) must be below l0.deadlineMs (50)",
                 id="chunk-timeout-at-deadline"),
    pytest.param({"leaf": {"affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": []}}}},
                 "set leaf node placement through leaf.nodePools", id="node-affinity-conflict"),
    pytest.param({"port": 9100, "leaf": {"framedPort": 9100}}, "leaf.framedPort 9100 equals port 9100", id="framed-port-clash"),
]


@pytest.mark.parametrize(("values", "message"), TEMPLATE_CHECKS)
def test_template_rejects_bad_value(values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm.HelmRenderError) as raised:
        render(values)
    assert message in str(raised.value)


# Helm's lint mode only logs the template's `fail` calls, so lint reports schema violations alone.
# Install and template (the render above) stop at both.
@pytest.mark.parametrize(("values", "path"), BAD_VALUES[:4])
def test_lint_reports_schema_violation(values: dict[str, Any], path: str) -> None:
    findings = lint_findings(values)
    assert any(f"at '{path}'" in finding for finding in findings), findings


def test_long_release_name_keeps_dns_labels() -> None:
    release = "a-very-long-release-name-for-the-fmlite-platform-x"
    chart = render({"shards": 12, "leaf": {"nodePools": {"spotFraction": 0.5}}}, release=release)

    for document in chart.documents:
        name = document["metadata"]["name"]
        assert len(name) <= 63, name
        assert DNS_LABEL.match(name), name
    leaf_names = [d["metadata"]["name"] for d in chart.with_component("Deployment", "leaf")]
    assert len(set(leaf_names)) == 24


def test_spot_fraction_one_without_dedicated_minimum() -> None:
    chart = render({"leaf": {"replicasPerShard": 3, "nodePools": {"spotFraction": 1, "minDedicatedPerShard": 0}}})

    pools = sorted(d["metadata"]["labels"]["fmlite/node-pool"] for d in chart.with_component("Deployment", "leaf"))
    assert pools == ["spot", "spot"]


def test_autoscaling_off_sets_router_replicas() -> None:
    chart = render({"l0": {"autoscaling": {"enabled": False}, "replicas": 5}})

    (router,) = chart.with_component("Deployment", "l0")
    assert router["spec"]["replicas"] == 5
    assert chart.of_kind("HorizontalPodAutoscaler") == []


def test_autoscaler_targets_router() -> None:
    chart = render()

    (autoscaler,) = chart.of_kind("HorizontalPodAutoscaler")
    (router,) = chart.with_component("Deployment", "l0")
    assert autoscaler["spec"]["scaleTargetRef"]["name"] == router["metadata"]["name"]
    assert "replicas" not in router["spec"]


def test_external_redis_from_secret() -> None:
    chart = render({"redis": {"mode": "external", "external": {"existingSecret": {"name": "profile-store", "key": "dsn"}}}})

    for deployment in chart.with_component("Deployment", "leaf"):
        (container,) = pod_spec(deployment)["containers"]
        (variable,) = container["env"]
        assert variable["valueFrom"]["secretKeyRef"] == {"name": "profile-store", "key": "dsn"}
    validate_all(chart.documents)


def test_no_redis_leaves_out_url() -> None:
    chart = render({"redis": {"mode": "none"}})

    for deployment in chart.with_component("Deployment", "leaf"):
        (container,) = pod_spec(deployment)["containers"]
        assert "--redis-url" not in container["args"]
        assert "env" not in container


def test_bundled_redis_persistence() -> None:
    chart = render({"redis": {"mode": "bundled", "bundled": {"persistence": {"enabled": True, "size": "8Gi"}}}})

    (statefulset,) = chart.of_kind("StatefulSet")
    (claim,) = statefulset["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "8Gi"
    args = pod_spec(statefulset)["containers"][0]["args"]
    assert option_value(args, "--appendonly") == "yes"
    assert option_value(args, "--maxmemory-policy") == "noeviction"
    validate_all(chart.documents)


def test_artifacts_volume_mounted_read_only() -> None:
    chart = render({"artifacts": {"volume": {"persistentVolumeClaim": {"claimName": "models-and-profiles", "readOnly": True}}},
                    "leaf": {"tfServing": {"enabled": True}}})

    for deployment in chart.with_component("Deployment", "leaf"):
        spec = pod_spec(deployment)
        (volume,) = [v for v in spec["volumes"] if v["name"] == "artifacts"]
        assert volume["persistentVolumeClaim"]["claimName"] == "models-and-profiles"
        for container in all_containers(deployment):
            (mount,) = [m for m in container["volumeMounts"] if m["name"] == "artifacts"]
            assert mount == {"name": "artifacts", "mountPath": "/var/lib/fmlite", "readOnly": True}


def test_artifacts_sync_containers() -> None:
    chart = render({
        "artifacts": {"source": "sync", "sync": {"remote": "blob:fmlite-artifacts", "envFromSecret": "blob-credentials"}},
        "leaf": {"tfServing": {"enabled": True}},
    })
    validate_all(chart.documents)

    config_map = chart.get("ConfigMap", "trial-fmlite-artifact-sync")
    script = (CHART_DIR / "files" / "sync-artifacts.sh").read_text()
    assert config_map["data"]["sync-artifacts.sh"].strip() == script.strip()
    for deployment in chart.with_component("Deployment", "leaf"):
        spec = pod_spec(deployment)
        # The one-off copy finishes first, then the sync and TF Serving sidecars start.
        assert [c["name"] for c in spec["initContainers"]] == ["artifacts-init", "artifacts-sync", "tfserving"]
        first, loop, _ = spec["initContainers"]
        assert first["command"][-1] == "once"
        assert "restartPolicy" not in first
        assert loop["command"][-1] == "loop"
        assert loop["restartPolicy"] == "Always"
        for container in (first, loop):
            env = {e["name"]: e["value"] for e in container["env"]}
            assert env["FMLITE_ARTIFACT_REMOTE"] == "blob:fmlite-artifacts"
            assert container["envFrom"] == [{"secretRef": {"name": "blob-credentials"}}]
            (mount,) = [m for m in container["volumeMounts"] if m["name"] == "artifacts"]
            assert "readOnly" not in mount
        (volume,) = [v for v in spec["volumes"] if v["name"] == "artifacts"]
        assert "emptyDir" in volume
        assert "checksum/sync-script" in deployment["spec"]["template"]["metadata"]["annotations"]


def test_leaf_ingress_policy() -> None:
    scraper = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    chart = render({"shards": 3, "leaf": {"networkPolicy": {"enabled": True, "extraFrom": [scraper]}}})
    validate_all(chart.documents)

    policies = [p for p in chart.of_kind("NetworkPolicy") if p["spec"]["policyTypes"] == ["Ingress"]]
    assert len(policies) == 3
    for policy in policies:
        shard = policy["spec"]["podSelector"]["matchLabels"]["fmlite/shard"]
        (rule,) = policy["spec"]["ingress"]
        own_l1, extra = rule["from"]
        assert extra == scraper
        allowed = [
            d for d in chart.of_kind("Deployment")
            if selects(own_l1["podSelector"]["matchLabels"], d["spec"]["template"]["metadata"]["labels"])
        ]
        assert [d["metadata"]["name"] for d in allowed] == [f"trial-fmlite-l1-{shard}"]
        assert [port["port"] for port in rule["ports"]] == [9090, 9091]


def test_service_monitor_and_dashboard() -> None:
    chart = render({
        "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}}},
        "grafanaDashboard": {"enabled": True},
    })
    validate_all(chart.documents)

    (monitor,) = chart.of_kind("ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    selector = monitor["spec"]["selector"]
    (expression,) = selector["matchExpressions"]
    scraped = [
        s for s in chart.of_kind("Service")
        if selects(selector["matchLabels"], s["metadata"]["labels"])
        and s["metadata"]["labels"]["app.kubernetes.io/component"] in expression["values"]
    ]
    assert len(scraped) == 1 + 2 * 2
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == "http"
    for service in scraped:
        # Leaf Services also carry the framed Thrift port, which serves no /metrics.
        assert [p["name"] for p in service["spec"]["ports"]][0] == "http"

    dashboard = chart.get("ConfigMap", "trial-fmlite-dashboard")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    shipped = json.loads((CHART_DIR / "dashboards" / "fmlite-platform.json").read_text())
    assert json.loads(dashboard["data"]["fmlite-platform.json"]) == shipped


def test_containers_run_unprivileged() -> None:
    chart = render({"redis": {"mode": "bundled"}, "leaf": {"tfServing": {"enabled": True}}})

    for workload in chart.of_kind("Deployment") + chart.of_kind("StatefulSet"):
        spec = pod_spec(workload)
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["automountServiceAccountToken"] is False
        for container in all_containers(workload):
            assert container["securityContext"]["allowPrivilegeEscalation"] is False
            assert container["securityContext"]["readOnlyRootFilesystem"] is True


def test_readme_install_values_render() -> None:
    readme = (REPO_ROOT / "deploy" / "README.md").read_text()
    blocks = re.findall(r"```yaml\n# my-values\.yaml\n(.*?)```", readme, flags=re.S)
    assert len(blocks) == 1, "deploy/README.md must hold one yaml block that starts with '# my-values.yaml'"

    import yaml

    values = yaml.safe_load(blocks[0])
    chart = render(values, with_test_images=False)
    validate_all(chart.documents)
    assert lint_findings(values) == []
