"""The chart over every combination of shards, leaf replicas, TF Serving, Redis and spot fraction.

Each combination is rendered once with Helm's own code. The tests check the objects and their
counts and the wiring from L0 to each shard's L1 and from each L1 to its own shard's leaves.
Every manifest must pass the Kubernetes schemas and ``helm lint --strict``.
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass
from typing import Any

import pytest

from chart_rendering import (
    RELEASE,
    Rendered,
    all_containers,
    lint_findings,
    option_value,
    option_values,
    pod_spec,
    render,
    selects,
    validate_manifest,
)

FULLNAME = f"{RELEASE}-fmlite"
SPOT_LABEL = "kubernetes.azure.com/scalesetpriority"
EXTERNAL_REDIS_URL = "redis://profiles.redis.internal:6379/0"
# leaf.framedPort in values.yaml.
DEFAULT_FRAMED_PORT = 9091


@dataclass(frozen=True)
class Combination:
    shards: int
    replicas: int
    tf_serving: bool
    redis: str
    spot_fraction: float

    @property
    def id(self) -> str:
        spot = "spot2of3" if self.spot_fraction else "spot0"
        tfs = "tfs" if self.tf_serving else "notfs"
        return f"shards{self.shards}-replicas{self.replicas}-{tfs}-{self.redis}-{spot}"

    def values(self) -> dict[str, Any]:
        redis: dict[str, Any] = {"mode": self.redis}
        if self.redis == "external":
            redis["external"] = {"url": EXTERNAL_REDIS_URL}
        return {
            "shards": self.shards,
            "leaf": {
                "replicasPerShard": self.replicas,
                "tfServing": {"enabled": self.tf_serving},
                "nodePools": {"spotFraction": self.spot_fraction},
            },
            "redis": redis,
        }

    @property
    def expected_spot(self) -> int:
        # round(replicas x fraction), leaving at least one dedicated pod (minDedicatedPerShard 1).
        return min(round(self.replicas * self.spot_fraction), self.replicas - 1)

    @property
    def expected_dedicated(self) -> int:
        return self.replicas - self.expected_spot


COMBINATIONS = [
    Combination(*values)
    for values in itertools.product((1, 4), (1, 3), (False, True), ("bundled", "external"), (0.0, 2 / 3))
]
parametrize_combinations = pytest.mark.parametrize("combination", COMBINATIONS, ids=lambda c: c.id)


@functools.cache
def rendered(combination: Combination) -> Rendered:
    return render(combination.values())


def leaf_deployments(chart: Rendered, shard: int) -> list[dict[str, Any]]:
    return [
        deployment
        for deployment in chart.with_component("Deployment", "leaf")
        if deployment["metadata"]["labels"]["fmlite/shard"] == str(shard)
    ]


def leaf_container(deployment: dict[str, Any]) -> dict[str, Any]:
    (container,) = [c for c in pod_spec(deployment)["containers"] if c["name"] == "leaf"]
    return container


@parametrize_combinations
def test_object_counts(combination: Combination) -> None:
    chart = rendered(combination)
    shards = combination.shards
    leaf_workloads_per_shard = (combination.expected_spot > 0) + (combination.expected_dedicated > 0)
    bundled = combination.redis == "bundled"

    assert len(chart.with_component("Deployment", "l0")) == 1
    assert len(chart.of_kind("HorizontalPodAutoscaler")) == 1
    assert len(chart.with_component("Deployment", "l1")) == shards
    assert len(chart.with_component("Deployment", "leaf")) == shards * leaf_workloads_per_shard
    assert len(chart.of_kind("Deployment")) == 1 + shards + shards * leaf_workloads_per_shard
    assert len(chart.of_kind("StatefulSet")) == (1 if bundled else 0)
    assert len(chart.of_kind("Service")) == 1 + 2 * shards + (1 if bundled else 0)
    assert len(chart.of_kind("PodDisruptionBudget")) == 1 + 2 * shards
    assert len(chart.of_kind("NetworkPolicy")) == shards
    assert [c["metadata"]["name"] for c in chart.of_kind("ConfigMap")] == [f"{FULLNAME}-traffic"]
    assert len(chart.of_kind("ServiceAccount")) == 1


@parametrize_combinations
def test_leaf_replicas_split_over_node_pools(combination: Combination) -> None:
    chart = rendered(combination)
    for shard in range(combination.shards):
        replicas = {
            deployment["metadata"]["labels"]["fmlite/node-pool"]: deployment["spec"]["replicas"]
            for deployment in leaf_deployments(chart, shard)
        }
        expected = {"spot": combination.expected_spot, "dedicated": combination.expected_dedicated}
        assert replicas == {pool: count for pool, count in expected.items() if count > 0}


@parametrize_combinations
def test_spot_and_dedicated_placement(combination: Combination) -> None:
    chart = rendered(combination)
    for deployment in chart.with_component("Deployment", "leaf"):
        pool = deployment["metadata"]["labels"]["fmlite/node-pool"]
        spec = pod_spec(deployment)
        tolerations = spec.get("tolerations", [])
        terms = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
        expressions = terms[0]["matchExpressions"]

        if pool == "spot":
            assert {"key": SPOT_LABEL, "operator": "In", "values": ["spot"]} in expressions
            assert [t["key"] for t in tolerations] == [SPOT_LABEL]
        else:
            assert {"key": SPOT_LABEL, "operator": "NotIn", "values": ["spot"]} in expressions
            assert tolerations == []


@parametrize_combinations
def test_l0_routes_each_shard_to_its_l1(combination: Combination) -> None:
    chart = rendered(combination)
    (router,) = chart.with_component("Deployment", "l0")
    args = pod_spec(router)["containers"][0]["args"]
    routes = dict(entry.split("=", 1) for entry in option_values(args, "--shard"))

    assert sorted(routes) == [str(shard) for shard in range(combination.shards)]
    for shard_text, address in routes.items():
        host, port = address.split(":")
        service = chart.get("Service", host)
        assert service["spec"]["ports"][0]["port"] == int(port)
        targets = [
            deployment
            for deployment in chart.of_kind("Deployment")
            if selects(service["spec"]["selector"], deployment["spec"]["template"]["metadata"]["labels"])
        ]
        assert [t["metadata"]["labels"]["app.kubernetes.io/component"] for t in targets] == ["l1"]
        l1_args = pod_spec(targets[0])["containers"][0]["args"]
        assert option_value(l1_args, "--shard") == shard_text


@parametrize_combinations
def test_each_l1_points_at_its_own_shard_leaves(combination: Combination) -> None:
    chart = rendered(combination)
    controllers = chart.with_component("Deployment", "l1")
    assert len(controllers) == combination.shards

    for controller in controllers:
        args = pod_spec(controller)["containers"][0]["args"]
        shard = option_value(args, "--shard")
        assert option_value(args, "--num-shards") == str(combination.shards)
        leaves = option_value(args, "--leaves")
        assert leaves.startswith("dns+framed://")
        host, port = leaves.removeprefix("dns+framed://").split(":")

        service = chart.get("Service", host)
        assert service["spec"]["clusterIP"] == "None"
        ports = {entry["name"]: entry for entry in service["spec"]["ports"]}
        assert ports["thrift-framed"]["port"] == int(port)
        assert ports["thrift-framed"]["targetPort"] == "thrift-framed"
        selected = [
            deployment
            for deployment in chart.of_kind("Deployment") + chart.of_kind("StatefulSet")
            if selects(service["spec"]["selector"], deployment["spec"]["template"]["metadata"]["labels"])
        ]
        assert selected, f"leaf Service {host} selects no pods"
        for deployment in selected:
            assert deployment["metadata"]["labels"]["app.kubernetes.io/component"] == "leaf"
            container = leaf_container(deployment)
            assert option_value(container["args"], "--shard") == shard
            assert option_value(container["args"], "--framed-port") == port
            container_ports = {entry["name"]: entry["containerPort"] for entry in container["ports"]}
            assert container_ports["thrift-framed"] == int(port)


@parametrize_combinations
def test_l1_egress_limited_to_own_shard(combination: Combination) -> None:
    chart = rendered(combination)
    for policy in chart.of_kind("NetworkPolicy"):
        shard = policy["metadata"]["labels"]["fmlite/shard"]
        assert policy["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "l1"
        assert policy["spec"]["podSelector"]["matchLabels"]["fmlite/shard"] == shard
        leaf_rule, dns_rule = policy["spec"]["egress"]
        assert {port["port"] for port in dns_rule["ports"]} == {53}
        assert "to" not in dns_rule
        # L1 reaches the leaves on their framed Thrift port only.
        assert [port["port"] for port in leaf_rule["ports"]] == [DEFAULT_FRAMED_PORT]
        peer = leaf_rule["to"][0]["podSelector"]["matchLabels"]
        reachable = [
            deployment
            for deployment in chart.of_kind("Deployment")
            if selects(peer, deployment["spec"]["template"]["metadata"]["labels"])
        ]
        assert reachable == leaf_deployments(chart, int(shard))


@parametrize_combinations
def test_leaf_model_runner_and_sidecar(combination: Combination) -> None:
    chart = rendered(combination)
    for deployment in chart.with_component("Deployment", "leaf"):
        args = leaf_container(deployment)["args"]
        init_containers = pod_spec(deployment).get("initContainers", [])

        if combination.tf_serving:
            (sidecar,) = init_containers
            assert sidecar["image"] == "tensorflow/serving:2.20.0"
            assert sidecar["restartPolicy"] == "Always"
            assert option_value(args, "--runner") == "tfserving"
            grpc_port = next(p["containerPort"] for p in sidecar["ports"] if p["name"] == "tfs-grpc")
            assert option_value(args, "--tfserving-address") == f"localhost:{grpc_port}"
            assert f"--port={grpc_port}" in sidecar["args"]
            assert "--model_base_path=/var/lib/fmlite/models/fmlite" in sidecar["args"]
        else:
            assert init_containers == []
            assert option_value(args, "--runner") == "savedmodel"
            assert "--tfserving-address" not in args
        assert option_value(args, "--model") == "fmlite=/var/lib/fmlite/models/fmlite"
        assert option_value(args, "--profiles") == "/var/lib/fmlite/profiles"


@parametrize_combinations
def test_leaf_redis_url(combination: Combination) -> None:
    chart = rendered(combination)
    for deployment in chart.with_component("Deployment", "leaf"):
        container = leaf_container(deployment)
        assert option_value(container["args"], "--redis-url") == "$(FMLITE_REDIS_URL)"
        (variable,) = [e for e in container["env"] if e["name"] == "FMLITE_REDIS_URL"]

        if combination.redis == "bundled":
            redis_service = chart.get("Service", f"{FULLNAME}-redis")
            assert variable["value"] == f"redis://{FULLNAME}-redis:6379/0"
            assert redis_service["spec"]["ports"][0]["port"] == 6379
            (statefulset,) = chart.of_kind("StatefulSet")
            assert selects(redis_service["spec"]["selector"], statefulset["spec"]["template"]["metadata"]["labels"])
            assert statefulset["spec"]["serviceName"] == redis_service["metadata"]["name"]
        else:
            assert variable["value"] == EXTERNAL_REDIS_URL


@parametrize_combinations
def test_termination_grace_covers_drain(combination: Combination) -> None:
    chart = rendered(combination)
    servers = chart.with_component("Deployment", "l0") + chart.with_component("Deployment", "l1") + chart.with_component(
        "Deployment", "leaf"
    )
    for workload in servers:
        spec = pod_spec(workload)
        server = spec["containers"][0]
        drain = int(option_value(server["args"], "--drain-timeout-s"))
        pre_stop = server["lifecycle"]["preStop"]["sleep"]["seconds"]
        assert drain == 10
        assert spec["terminationGracePeriodSeconds"] == pre_stop + drain + 5


@parametrize_combinations
def test_probes_resources_and_scrape_annotations(combination: Combination) -> None:
    chart = rendered(combination)
    for workload in chart.of_kind("Deployment") + chart.of_kind("StatefulSet"):
        for container in all_containers(workload):
            assert container["resources"]["requests"], container["name"]
            assert container["resources"]["limits"], container["name"]
            assert "readinessProbe" in container or container["name"] == "artifacts-init", container["name"]
            assert "livenessProbe" in container or container["name"] == "artifacts-init", container["name"]

    for workload in chart.of_kind("Deployment"):
        server = pod_spec(workload)["containers"][0]
        assert server["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
        assert server["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
        annotations = workload["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert annotations["prometheus.io/port"] == str(server["ports"][0]["containerPort"])
        assert annotations["prometheus.io/path"] == "/metrics"


@parametrize_combinations
def test_pod_disruption_budgets_cover_each_tier(combination: Combination) -> None:
    chart = rendered(combination)
    workloads = chart.of_kind("Deployment")
    for budget in chart.of_kind("PodDisruptionBudget"):
        covered = [
            w for w in workloads if selects(budget["spec"]["selector"]["matchLabels"], w["spec"]["template"]["metadata"]["labels"])
        ]
        assert covered, f"{budget['metadata']['name']} selects no pods"
        assert budget["spec"]["maxUnavailable"] == 1
    for workload in workloads:
        labels = workload["spec"]["template"]["metadata"]["labels"]
        budgets = [b for b in chart.of_kind("PodDisruptionBudget") if selects(b["spec"]["selector"]["matchLabels"], labels)]
        assert len(budgets) == 1, workload["metadata"]["name"]


@parametrize_combinations
def test_workload_selectors_disjoint(combination: Combination) -> None:
    # Two controllers whose selectors overlap would adopt and delete each other's pods.
    chart = rendered(combination)
    workloads = chart.of_kind("Deployment") + chart.of_kind("StatefulSet")
    for workload in workloads:
        selector = workload["spec"]["selector"]["matchLabels"]
        owners = [w for w in workloads if selects(selector, w["spec"]["template"]["metadata"]["labels"])]
        assert owners == [workload], workload["metadata"]["name"]


@parametrize_combinations
def test_manifests_pass_kubernetes_schemas(combination: Combination) -> None:
    for document in rendered(combination).documents:
        validate_manifest(document)


@parametrize_combinations
def test_lint_strict_is_clean(combination: Combination) -> None:
    assert lint_findings(combination.values()) == []


def test_container_args_parse_with_fmlite_cli() -> None:
    from fmlite.cli import build_parser

    parser = build_parser()
    rejected: set[str] = set()
    for combination in COMBINATIONS:
        for workload in rendered(combination).of_kind("Deployment"):
            args = pod_spec(workload)["containers"][0]["args"]
            # Kubernetes substitutes $(FMLITE_REDIS_URL) from the container's environment.
            args = [argument.replace("$(FMLITE_REDIS_URL)", EXTERNAL_REDIS_URL) for argument in args]
            try:
                parser.parse_args(args)
            except SystemExit:
                rejected.add(" ".join(args))
    assert sorted(rejected) == []
