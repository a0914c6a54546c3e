"""What the chart decides: GPUs, probes, security, network flows, autoscaling and value checks."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml
from chart_support import (
    CHART_DIR,
    FULLNAME,
    NAMESPACE,
    RELEASE,
    REPO_ROOT,
    SCENARIOS,
    SERVICES,
    SIDECARS,
    adapter_metric_names,
    adapter_rules_file,
    by_name,
    colocated,
    component_name,
    container,
    containers,
    deployed_components,
    deployed_services,
    deployment,
    env_of,
    expected_health_port,
    expected_ports,
    lint,
    merged_values,
    objects,
    of_kind,
    pod_of,
    pod_spec,
    pods_selected,
    render,
    scenario_values,
    schemaless,
    service_container,
)

from services.common.pipelines import PipelineRegistry
from services.common.settings import GatewaySettings
from services.fleet.journal import object_name

GPU = "nvidia.com/gpu"
INNER = ("decoder", "preprocessor", "postprocessor")


# --- Triton -----------------------------------------------------------------------------------


def test_gpu_scenario_requests_gpus_for_triton_only() -> None:
    objs = objects("gpu-production")
    triton = container(deployment(objs, "triton"), "triton")
    assert triton["resources"]["requests"][GPU] == 1
    assert triton["resources"]["limits"][GPU] == 1
    spec = pod_spec(deployment(objs, "triton"))
    assert spec["nodeSelector"]["nvidia.com/gpu.present"] == "true"
    assert any(t["key"] == GPU for t in spec["tolerations"])
    assert spec["runtimeClassName"] == "nvidia"
    assert "--allow-gpu-metrics=true" in triton["args"]
    for svc in SERVICES:
        c = service_container(objs, svc)
        assert GPU not in c["resources"].get("requests", {})
        assert GPU not in c["resources"].get("limits", {})


def test_dev_cpu_scenario_requests_no_gpu() -> None:
    objs = objects("dev-cpu")
    triton = deployment(objs, "triton")
    assert GPU not in yaml.safe_dump(triton)
    spec = pod_spec(triton)
    assert "nodeSelector" not in spec and "tolerations" not in spec
    assert "--allow-gpu-metrics=false" in container(triton, "triton")["args"]
    assert not of_kind(objs, "HorizontalPodAutoscaler")
    assert not [o for o in objs if o["apiVersion"].startswith("monitoring.coreos.com")]


def test_triton_image_probes_ports_and_shm() -> None:
    values = merged_values("default")
    triton_deploy = deployment(objects("default"), "triton")
    c = container(triton_deploy, "triton")
    assert c["image"] == "nvcr.io/nvidia/tritonserver:24.10-py3"
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {
        "http": 8000,
        "grpc": 8001,
        "metrics": 8002,
    }
    assert c["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}
    startup = c["startupProbe"]
    budget = values["triton"]["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] == (
        budget["periodSeconds"] * budget["failureThreshold"]
    )
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300
    shm = next(v for v in pod_spec(triton_deploy)["volumes"] if v["name"] == "dshm")
    assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": values["triton"]["shmSize"]}
    assert any(m["mountPath"] == "/dev/shm" for m in c["volumeMounts"])


@pytest.mark.parametrize(
    ("scenario", "expected"),
    [
        ("default", "--model-repository=/models"),
        ("gpu-production", "--model-repository=s3://imaging-models-prod/triton"),
        ("gpu-keda", "--model-repository=/models"),
        ("mtls", "--model-repository=/models"),
    ],
)
def test_model_repository_source(scenario: str, expected: str) -> None:
    deploy = deployment(objects(scenario), "triton")
    c = container(deploy, "triton")
    assert expected in c["args"]
    volumes = {v["name"]: v for v in pod_spec(deploy)["volumes"]}
    source = merged_values(scenario)["triton"]["modelRepository"]["source"]
    if source == "pvc":
        assert volumes["model-repository"]["persistentVolumeClaim"]["readOnly"] is True
    elif source == "image":
        (init,) = pod_spec(deploy)["initContainers"]
        assert volumes["model-repository"]["emptyDir"]
        # The emptyDir must not shadow the directory copied out of the model image.
        assert init["volumeMounts"][0]["mountPath"] not in init["command"][-1].split()[2]
    else:
        assert "model-repository" not in volumes
        assert c["envFrom"] == [{"secretRef": {"name": "imaging-model-store"}}]


def test_gcs_credentials_are_mounted_as_a_file() -> None:
    values = {
        "triton": {
            "modelRepository": {
                "source": "objectStore",
                "objectStore": {"uri": "gs://bucket/models", "credentialsSecret": "gcs-key"},
            }
        }
    }
    deploy = deployment(_parse(render(values)), "triton")
    c = container(deploy, "triton")
    assert env_of(c)["GOOGLE_APPLICATION_CREDENTIALS"].endswith("/credentials.json")
    assert "envFrom" not in c
    assert any(
        v.get("secret", {}).get("secretName") == "gcs-key" for v in pod_spec(deploy)["volumes"]
    )


def test_model_control_mode() -> None:
    default = container(deployment(objects("default"), "triton"), "triton")["args"]
    assert "--model-control-mode=none" in default
    assert not [a for a in default if a.startswith("--load-model")]
    production = container(deployment(objects("gpu-production"), "triton"), "triton")["args"]
    assert "--model-control-mode=explicit" in production
    # Every pipeline the chart ships has its model loaded (a missing one would fail every call).
    shipped = PipelineRegistry.load(REPO_ROOT / "pipelines").all()
    assert {f"--load-model={p.model.name}" for p in shipped} <= set(production)


# --- services ---------------------------------------------------------------------------------


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_service_env_wiring(scenario: str) -> None:
    objs = objects(scenario)
    values = merged_values(scenario)
    for svc in SERVICES:
        c = service_container(objs, svc)
        env = env_of(c)
        grpc, metrics = expected_ports(values, svc)
        # 0.0.0.0 for sidecars too: kubelet gRPC probes and Prometheus reach the pod IP.
        assert env["IMAGING_HOST"] == "0.0.0.0"
        assert env["IMAGING_PORT"] == str(grpc)
        assert env["IMAGING_METRICS_PORT"] == str(metrics)
        suffix = f"-{svc[:3]}" if colocated(scenario) and svc in SIDECARS else ""
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        declared = {f"grpc{suffix}": grpc, f"metrics{suffix}": metrics}
        health = expected_health_port(values, svc)
        if health is not None:  # tls.enabled: a plaintext grpc.health.v1 port for the probes
            declared[f"health{suffix}"] = health
            assert env["IMAGING_HEALTH_PORT"] == str(health)
        else:
            assert "IMAGING_HEALTH_PORT" not in env
        assert ports == declared
        assert env["IMAGING_REFLECTION"] == str(values["config"]["reflection"]).lower()
        # Each service keeps its own resources and extra env wherever it runs.
        assert c["resources"] == values[svc]["resources"]
        assert env.items() >= values[svc]["env"].items()
        if svc == "decoder":
            assert "IMAGING_PIPELINES_DIR" not in env
        else:
            assert env["IMAGING_PIPELINES_DIR"] == values["pipelines"]["mountPath"]
            mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
            assert mounts[values["pipelines"]["mountPath"]]["readOnly"] is True
    gateway_env = env_of(service_container(objs, "gateway"))
    for peer in INNER:
        if colocated(scenario) and peer in SIDECARS:
            expected = f"127.0.0.1:{expected_ports(values, peer)[0]}"
        else:
            expected = f"dns:///{component_name(peer)}-peers.{NAMESPACE}.svc.cluster.local:50051"
        assert gateway_env[f"IMAGING_{peer.upper()}_ADDRESS"] == expected
    assert gateway_env["IMAGING_TRITON_ADDRESS"] == (
        f"dns:///{component_name('triton')}-peers.{NAMESPACE}.svc.cluster.local:8001"
    )


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_service_address_resolves_to_a_service_port(scenario: str) -> None:
    objs = objects(scenario)
    services = {s["metadata"]["name"]: s for s in of_kind(objs, "Service")}
    for deploy in of_kind(objs, "Deployment"):
        pod_ports = {p["containerPort"] for c in containers(deploy) for p in c.get("ports", [])}
        for c in containers(deploy):
            for name, value in env_of(c).items():
                if not name.endswith("_ADDRESS"):
                    continue
                host, port = value.removeprefix("dns:///").rsplit(":", 1)
                if host == "127.0.0.1":  # a sidecar: some container of this pod listens there
                    assert colocated(scenario)
                    assert int(port) in pod_ports and int(port) != int(env_of(c)["IMAGING_PORT"])
                    continue
                svc_name, ns = host.split(".")[:2]
                assert ns == NAMESPACE
                svc = services[svc_name]
                assert int(port) in {p["port"] for p in svc["spec"]["ports"]}


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_services_select_exactly_their_deployment(scenario: str) -> None:
    objs = objects(scenario)
    for svc in of_kind(objs, "Service"):
        selected = pods_selected(objs, {"matchLabels": svc["spec"]["selector"]})
        # An entry's LoadBalancer (component gateway-lb) selects the gateway's pods too.
        component = svc["metadata"]["labels"]["app.kubernetes.io/component"].removesuffix("-lb")
        assert selected == {component}
        deploy = deployment(objs, component)
        port_names = {p["name"] for c in containers(deploy, init=False) for p in c["ports"]}
        for port in svc["spec"]["ports"]:
            assert port["targetPort"] in port_names


def test_pipelines_configmap_ships_the_repository_pipelines(tmp_path: Path) -> None:
    # files/pipelines is a symlink to the repository's pipelines/: one source of truth.
    link = CHART_DIR / "files" / "pipelines"
    assert link.is_symlink() and link.resolve() == (REPO_ROOT / "pipelines").resolve()
    repo_files = sorted((REPO_ROOT / "pipelines").glob("*.yaml"))
    cm = by_name(objects("default"), "ConfigMap", component_name("pipelines"))
    assert sorted(cm["data"]) == [p.name for p in repo_files]
    for path in repo_files:
        assert cm["data"][path.name].rstrip("\n") == path.read_text().rstrip("\n")
        (tmp_path / path.name).write_text(cm["data"][path.name])
    # What the services will read from the mount loads and validates as pipeline specs.
    registry = PipelineRegistry.load(tmp_path)
    assert {p.name for p in registry.all()} == {
        yaml.safe_load(p.read_text())["name"] for p in repo_files
    }


def test_inline_pipelines_extend_the_configmap() -> None:
    text = (
        (REPO_ROOT / "pipelines" / "cxr_pneumonia.yaml")
        .read_text()
        .replace("name: cxr_pneumonia\n", "name: cxr_copy\n", 1)
    )
    objs = _parse(render({"pipelines": {"inline": {"cxr_copy.yaml": text}}}))
    cm = by_name(objs, "ConfigMap", component_name("pipelines"))
    shipped = {p.name for p in (REPO_ROOT / "pipelines").glob("*.yaml")}
    assert set(cm["data"]) == shipped | {"cxr_copy.yaml"}
    assert yaml.safe_load(cm["data"]["cxr_copy.yaml"])["name"] == "cxr_copy"


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_deployment_has_probes(scenario: str) -> None:
    values = merged_values(scenario)
    for deploy in of_kind(objects(scenario), "Deployment"):
        for c in containers(deploy, init=False):
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                assert probe in c, f"{deploy['metadata']['name']}/{c['name']} lacks {probe}"
            if c["name"] in SERVICES:
                # Each container of a pod probes its own port (sidecars included): the gRPC
                # port, or with TLS (which kubelet probes cannot speak) its health port.
                grpc = expected_ports(values, c["name"])[0]
                assert int(env_of(c)["IMAGING_PORT"]) == grpc
                health = expected_health_port(values, c["name"])
                for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                    assert c[probe]["grpc"]["port"] == (grpc if health is None else health)
            assert c["lifecycle"]["preStop"]["exec"]["command"][0] == "sleep"
            assert c["resources"]["requests"]["cpu"] and c["resources"]["requests"]["memory"]
            assert c["resources"]["limits"]["memory"]


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_termination_grace_covers_prestop_and_drain(scenario: str) -> None:
    values = merged_values(scenario)
    for deploy in of_kind(objects(scenario), "Deployment"):
        spec = pod_spec(deploy)
        for c in spec["containers"]:
            sleep = int(c["lifecycle"]["preStop"]["exec"]["command"][1])
            if c["name"] == "triton":
                drain = values["triton"]["exitTimeoutSeconds"]
            else:
                drain = float(env_of(c)["IMAGING_GRACE_SECONDS"])
            assert spec["terminationGracePeriodSeconds"] >= sleep + drain, c["name"]


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_topology_spread_targets_own_pods(scenario: str) -> None:
    objs = objects(scenario)
    for svc in deployed_services(scenario):
        spec = pod_spec(deployment(objs, svc))
        for tsc in spec.get("topologySpreadConstraints", []):
            assert pods_selected(objs, tsc["labelSelector"]) == {svc}
    if scenario != "dev-cpu":
        assert pod_spec(deployment(objs, "gateway"))["topologySpreadConstraints"]


# --- security ---------------------------------------------------------------------------------


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_security_context_defaults_on_every_container(scenario: str) -> None:
    objs = objects(scenario)
    # The model-rollout Job's pods too; they alone mount an API token (they read pods and
    # EndpointSlices), as the rollout ServiceAccount (test_rollout_job.py).
    for deploy in [*of_kind(objs, "Deployment"), *of_kind(objs, "Job")]:
        spec = pod_spec(deploy)
        pod_sc = spec["securityContext"]
        assert pod_sc["runAsNonRoot"] is True
        assert pod_sc["seccompProfile"] == {"type": "RuntimeDefault"}
        assert spec["automountServiceAccountToken"] is (deploy["kind"] == "Job")
        for c in containers(deploy):
            where = f"{deploy['metadata']['name']}/{c['name']}"
            sc = c["securityContext"]
            assert sc["runAsNonRoot"] is True, where
            assert sc["readOnlyRootFilesystem"] is True, where
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["capabilities"]["drop"] == ["ALL"], where
            assert "add" not in sc["capabilities"], where
            assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, where
            if c["name"] in SERVICES:
                # 10001 unless the scenario unsets it (OpenShift assigns UIDs per namespace).
                uid = merged_values(scenario)["containerSecurityContext"].get("runAsUser")
                assert sc.get("runAsUser") == uid == pod_sc.get("runAsUser"), where
                assert uid in (10001, None)
        # Writable scratch space comes from emptyDirs, never the image.
        assert any(v["name"] == "tmp" and "emptyDir" in v for v in spec["volumes"])


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_service_account_does_not_mount_tokens(scenario: str) -> None:
    objs = objects(scenario)
    for sa in of_kind(objs, "ServiceAccount"):
        assert sa["automountServiceAccountToken"] is False
    names = {pod_spec(d)["serviceAccountName"] for d in of_kind(objs, "Deployment")}
    assert names == {FULLNAME}


def test_rollout_rbac_only_when_asked_and_least_privilege() -> None:
    assert not of_kind(objects("default"), "Role")
    assert not of_kind(objects("default"), "RoleBinding")
    objs = objects("gpu-production")
    (role,) = of_kind(objs, "Role")
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
        {
            "apiGroups": ["discovery.k8s.io"],
            "resources": ["endpointslices"],
            "verbs": ["get", "list", "watch"],
        },
        # The Lease and the journal ConfigMap of services/fleet/journal.py, by name.
        {
            "apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"],
            "resourceNames": [object_name(RELEASE)],
            "verbs": ["get", "patch", "delete"],
        },
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
        {
            "apiGroups": [""],
            "resources": ["configmaps"],
            "resourceNames": [object_name(RELEASE)],
            "verbs": ["get", "patch", "delete"],
        },
        {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["create"]},
    ]
    (binding,) = of_kind(objs, "RoleBinding")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    (subject,) = binding["subjects"]
    sa = by_name(objs, "ServiceAccount", subject["name"])
    assert subject == {
        "kind": "ServiceAccount",
        "name": sa["metadata"]["name"],
        "namespace": NAMESPACE,
    }
    assert sa["metadata"]["name"] != FULLNAME  # not the services' account


@pytest.mark.parametrize(
    "values",
    [{}, {"dataPlane": {"colocated": False}}],
    ids=["colocated", "separate-pods"],
)
def test_mtls_secret_is_mounted_into_all_services(values: dict[str, Any]) -> None:
    objs = _parse(render({**scenario_values("mtls"), **values}))
    for svc in SERVICES:
        spec = pod_spec(pod_of(objs, svc))
        c = service_container(objs, svc)
        env = env_of(c)
        # The gateway serves its public certificate and trusts its clients' CA; every
        # service (the gateway towards its peers) uses the services' own.
        own = "/etc/imaging/tls-gateway" if svc == "gateway" else "/etc/imaging/tls"
        assert env["IMAGING_TLS_CERT"] == f"{own}/tls.crt"
        assert env["IMAGING_TLS_KEY"] == f"{own}/tls.key"
        assert env["IMAGING_TLS_CA"] == f"{own}/ca.crt"
        if svc == "gateway":
            assert env["IMAGING_PEER_TLS_CERT"] == "/etc/imaging/tls/tls.crt"
            assert env["IMAGING_PEER_TLS_KEY"] == "/etc/imaging/tls/tls.key"
            assert env["IMAGING_PEER_TLS_CA"] == "/etc/imaging/tls/ca.crt"
            assert "IMAGING_ALLOWED_PEERS" not in env
            edge = next(v for v in spec["volumes"] if v["name"] == "tls-gateway")
            assert edge["secret"]["secretName"] == "imaging-gateway-tls"
        else:
            assert env["IMAGING_ALLOWED_PEERS"] == "imaging-services"
            assert not [k for k in env if k.startswith("IMAGING_PEER_TLS")]
            assert not any(m["name"] == "tls-gateway" for m in c["volumeMounts"])
        tls = next(v for v in spec["volumes"] if v["name"] == "tls")
        assert tls["secret"]["secretName"] == "imaging-platform-mtls"
        assert any(m["name"] == "tls" and m["readOnly"] for m in c["volumeMounts"])
    for svc in SERVICES:
        c = service_container(objects("default"), svc)
        assert not [k for k in env_of(c) if k.startswith("IMAGING_TLS")]


# --- network policies -------------------------------------------------------------------------


def _policies(objs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    prefix = f"{FULLNAME}-"
    return {p["metadata"]["name"].removeprefix(prefix): p for p in of_kind(objs, "NetworkPolicy")}


def _release_labels(component: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "imaging-platform",
        "app.kubernetes.io/instance": RELEASE,
        "app.kubernetes.io/component": component,
    }


def _rule_ports(rule: dict[str, Any]) -> set[int]:
    return {p["port"] for p in rule.get("ports", [])}


def _in_release_sources(objs: list[dict[str, Any]], rule: dict[str, Any]) -> set[str]:
    """Components a rule's peers select, for peers limited to the policy's namespace."""
    selected: set[str] = set()
    for peer in rule.get("from", rule.get("to", [])):
        assert "ipBlock" not in peer
        if "namespaceSelector" not in peer:
            assert peer["podSelector"].get("matchLabels"), "in-namespace peers use labels"
            selected |= pods_selected(objs, peer["podSelector"])
    return selected


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_network_policies_select_the_pods_they_mean(scenario: str) -> None:
    objs = objects(scenario)
    policies = _policies(objs)
    rollout = merged_values(scenario)["rollout"]["rbac"]["create"]
    components = deployed_components(scenario)
    expected = {"default-deny", "allow-dns", *components} | (
        {"model-rollout"} if rollout else set()
    )
    assert set(policies) == expected
    for name in ("default-deny", "allow-dns"):
        assert pods_selected(objs, policies[name]["spec"]["podSelector"]) == set(components)
    deny = policies["default-deny"]["spec"]
    assert deny["policyTypes"] == ["Ingress", "Egress"]
    assert "ingress" not in deny and "egress" not in deny
    for component in components:
        assert pods_selected(objs, policies[component]["spec"]["podSelector"]) == {component}
    if rollout:
        # The rollout Job's pods are no Deployment's: its policy must select no platform pod,
        # and exactly the labels the Job's pods carry (test_rollout_job.py renders them).
        selector = policies["model-rollout"]["spec"]["podSelector"]
        assert pods_selected(objs, selector) == set()
        assert selector["matchLabels"] == _release_labels("model-rollout")
        assert policies["model-rollout"]["spec"]["ingress"] == []
        (to_triton, *_api) = policies["model-rollout"]["spec"]["egress"]
        assert _in_release_sources(objs, to_triton) == {"triton"}


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_internal_services_only_accept_the_gateway(scenario: str) -> None:
    objs = objects(scenario)
    values = merged_values(scenario)
    grpc, metrics = values["ports"]["grpc"], values["ports"]["metrics"]
    policies = _policies(objs)
    inner = [s for s in deployed_services(scenario) if s != "gateway"]
    assert "postprocessor" in inner
    for svc in inner:
        spec = policies[svc]["spec"]
        assert "Ingress" in spec["policyTypes"]
        for rule in spec["ingress"]:
            sources = _in_release_sources(objs, rule)
            if sources:
                assert sources == {"gateway"}
                assert _rule_ports(rule) == {grpc}
            else:
                # Only Prometheus' namespace, only the metrics port.
                (peer,) = rule["from"]
                assert (
                    peer["namespaceSelector"]
                    == values["networkPolicy"]["metrics"]["namespaceSelector"]
                )
                assert _rule_ports(rule) == {metrics}
        assert any(_in_release_sources(objs, r) == {"gateway"} for r in spec["ingress"])


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_triton_accepts_gateway_and_configured_clients(scenario: str) -> None:
    objs = objects(scenario)
    values = merged_values(scenario)
    ports = values["triton"]["ports"]
    spec = _policies(objs)["triton"]["spec"]
    grpc_clients: set[str] = set()
    for rule in spec["ingress"]:
        peers = rule["from"]
        if any("namespaceSelector" in p for p in peers):
            assert _rule_ports(rule) == {ports["metrics"]}  # Prometheus only scrapes
            continue
        for peer in peers:
            labels = peer["podSelector"]["matchLabels"]
            component = labels["app.kubernetes.io/component"]
            assert labels == _release_labels(component)
            if ports["grpc"] in _rule_ports(rule):
                grpc_clients.add(component)
            if component != "model-rollout":
                assert _rule_ports(rule) == {ports["grpc"]}
    # A colocated sidecar calls Triton from the gateway's pod: no selector of its own.
    allowed = set(values["networkPolicy"]["tritonAllowFrom"])
    expected = {"gateway", *(allowed & set(deployed_services(scenario)))}
    if values["rollout"]["rbac"]["create"]:
        expected.add("model-rollout")
    assert grpc_clients == expected


@pytest.mark.parametrize("scenario", ["mtls", "separate-pods"])
def test_tritonallowfrom_lets_the_preprocessor_reach_triton(scenario: str) -> None:
    objs = objects(scenario)
    assert "preprocessor" in merged_values(scenario)["networkPolicy"]["tritonAllowFrom"]
    policies = _policies(objs)
    assert env_of(service_container(objs, "preprocessor"))["IMAGING_TRITON_ADDRESS"]
    if colocated(scenario):
        # The sidecar shares the gateway's pod, whose egress already reaches Triton.
        assert "preprocessor" not in policies
        egress = policies["gateway"]["spec"]["egress"]
        assert {"triton"} in [_in_release_sources(objs, r) for r in egress]
    else:
        egress = policies["preprocessor"]["spec"]["egress"]
        assert [_in_release_sources(objs, r) for r in egress] == [{"triton"}]
    assert policies["postprocessor"]["spec"]["egress"] == []


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_gateway_is_the_only_entry_point(scenario: str) -> None:
    objs = objects(scenario)
    values = merged_values(scenario)
    spec = _policies(objs)["gateway"]["spec"]
    grpc_rules = [r for r in spec["ingress"] if _rule_ports(r) == {values["ports"]["grpc"]}]
    (rule,) = grpc_rules
    configured = values["networkPolicy"]["gatewayIngressFrom"]
    lb = values["entry"]["loadBalancer"]
    ranges = lb["loadBalancerSourceRanges"] if lb["enabled"] and configured else []
    assert rule.get("from", []) == configured + [{"ipBlock": {"cidr": c}} for c in ranges]
    egress_targets = [_in_release_sources(objs, r) for r in spec["egress"]]
    # Colocated: the sidecars are reached over loopback, so only the postprocessor and Triton.
    peers = [c for c in deployed_components(scenario) if c != "gateway"]
    assert sorted(min(t) for t in egress_targets) == sorted(peers)
    # Every other component's ingress names in-release peers or the monitoring namespace only.
    for component in peers:
        for r in _policies(objs)[component]["spec"]["ingress"]:
            assert r.get("from"), f"{component} has an ingress rule open to any source"


def test_dns_egress_is_allowed() -> None:
    spec = _policies(objects("default"))["allow-dns"]["spec"]
    (rule,) = spec["egress"]
    assert {(p["protocol"], p["port"]) for p in rule["ports"]} == {("UDP", 53), ("TCP", 53)}
    assert rule["to"][0]["podSelector"] == {"matchLabels": {"k8s-app": "kube-dns"}}


def test_network_policies_can_be_disabled() -> None:
    assert not of_kind(_parse(render({"networkPolicy": {"enabled": False}})), "NetworkPolicy")


# --- availability and autoscaling -------------------------------------------------------------


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_pdbs_and_hpas_target_real_workloads(scenario: str) -> None:
    objs = objects(scenario)
    values = merged_values(scenario)
    for pdb in of_kind(objs, "PodDisruptionBudget"):
        component = pdb["metadata"]["labels"]["app.kubernetes.io/component"]
        assert pods_selected(objs, pdb["spec"]["selector"]) == {component}
    for hpa in of_kind(objs, "HorizontalPodAutoscaler"):
        target = hpa["spec"]["scaleTargetRef"]
        deploy = by_name(objs, "Deployment", target["name"])
        assert "replicas" not in deploy["spec"], "an autoscaled Deployment must not pin replicas"
        assert hpa["spec"]["behavior"]["scaleUp"]["stabilizationWindowSeconds"] >= 0
        assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] > 0
        assert hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    hpas = {h["metadata"]["name"] for h in of_kind(objs, "HorizontalPodAutoscaler")}
    pdbs = {p["metadata"]["name"] for p in of_kind(objs, "PodDisruptionBudget")}
    for svc in SERVICES:
        if svc not in deployed_services(scenario):
            # A sidecar scales (and is disrupted) with the gateway's pod.
            assert component_name(svc) not in hpas | pdbs
            continue
        deploy = deployment(objs, svc)
        if values[svc]["autoscaling"]["enabled"]:
            hpa = by_name(objs, "HorizontalPodAutoscaler", component_name(svc))
            (metric,) = hpa["spec"]["metrics"]
            assert metric["type"] == "Resource" and metric["resource"]["name"] == "cpu"
        else:
            assert deploy["spec"]["replicas"] == values[svc]["replicas"]


def test_triton_hpa_scales_on_an_adapter_metric() -> None:
    objs = objects("gpu-production")
    hpa = by_name(objs, "HorizontalPodAutoscaler", component_name("triton"))
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods"
    assert metric["pods"]["target"]["type"] == "AverageValue"
    cm = by_name(objs, "ConfigMap", component_name("adapter-rules"))
    shipped = yaml.safe_load(cm["data"]["config.yaml"])["rules"]
    assert shipped == adapter_rules_file()["rules"]
    assert metric["pods"]["metric"]["name"] in {r["name"]["as"] for r in shipped}
    assert not of_kind(objs, "ScaledObject")


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_custom_hpa_metric_has_an_adapter_rule(scenario: str) -> None:
    for hpa in of_kind(objects(scenario), "HorizontalPodAutoscaler"):
        for metric in hpa["spec"]["metrics"]:
            if metric["type"] in ("Pods", "Object"):
                name = metric[metric["type"].lower()]["metric"]["name"]
                assert name in adapter_metric_names()


def test_keda_scenario_reuses_the_adapter_query() -> None:
    objs = objects("gpu-keda")
    assert component_name("triton") not in {
        h["metadata"]["name"] for h in of_kind(objs, "HorizontalPodAutoscaler")
    }
    (so,) = of_kind(objs, "ScaledObject")
    assert so["spec"]["scaleTargetRef"]["name"] == component_name("triton")
    (trigger,) = so["spec"]["triggers"]
    assert trigger["type"] == "prometheus"
    # A total over the release's pods, which KEDA divides over the replicas.
    assert trigger["metricType"] == "AverageValue"
    rule = next(
        r for r in adapter_rules_file()["rules"] if r["name"]["as"] == "triton_inflight_requests"
    )
    matchers = f'namespace="{NAMESPACE}",pod=~"{component_name("triton")}-[a-z0-9]+-[a-z0-9]+"'
    expected = (
        rule["metricsQuery"]
        .replace("<<.LabelMatchers>>", matchers)
        .replace("<<.GroupBy>>", "namespace")
    )
    assert trigger["metadata"]["query"] == " ".join(expected.split("\n")).strip()
    assert (
        so["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"][
            "stabilizationWindowSeconds"
        ]
        == 600
    )


# --- values that must fail ---------------------------------------------------------------------


def _parse(manifests: dict[str, str]) -> list[dict[str, Any]]:
    from chart_support import parse_manifests

    return parse_manifests(manifests)


BAD_VALUES = {
    "negative replicas": {"gateway": {"replicas": -1}},
    "unknown model repository source": {"triton": {"modelRepository": {"source": "nfs"}}},
    "HPA and KEDA together": {
        "triton": {"autoscaling": {"hpa": {"enabled": True}, "keda": {"enabled": True}}}
    },
    "object store with an http URI": {
        "triton": {
            "modelRepository": {"source": "objectStore", "objectStore": {"uri": "http://x/y"}}
        }
    },
    "image source without an image": {"triton": {"modelRepository": {"source": "image"}}},
    "poll model-control mode": {"triton": {"modelControlMode": "poll"}},
    "misspelt top-level key": {"gatway": {"replicas": 1}},
    "misspelt nested key": {"triton": {"gpu": {"cuont": 2}}},
    "zero GPUs": {"triton": {"gpu": {"count": 0}}},
    "mTLS without a Secret": {"tls": {"enabled": True}},
    "release-wide grace period below zero": {"terminationGracePeriodSeconds": -1},
    "unknown monitor kind": {"monitoring": {"scrape": {"kind": "Probe"}}},
    "bad scrape interval": {"monitoring": {"scrape": {"interval": "15 seconds"}}},
    "Triton reachable from the decoder": {"networkPolicy": {"tritonAllowFrom": ["decoder"]}},
    "labelSelector in a spread constraint": {
        "topologySpreadConstraints": [
            {
                "maxSkew": 1,
                "topologyKey": "kubernetes.io/hostname",
                "whenUnsatisfiable": "DoNotSchedule",
                "labelSelector": {},
            }
        ]
    },
    "resources without requests": {"decoder": {"resources": {"requests": None}}},
    "non-string env value": {"decoder": {"env": {"IMAGING_MAX_PIXELS": 5}}},
    "colocated as a string": {"dataPlane": {"colocated": "yes"}},
    "negative sidecar port": {"dataPlane": {"ports": {"decoder": {"grpc": -1}}}},
    "sidecar port as a string": {"dataPlane": {"ports": {"preprocessor": {"metrics": "9102"}}}},
    "sidecar port above 65535": {"dataPlane": {"ports": {"decoder": {"metrics": 70000}}}},
    "ports of an unknown sidecar": {"dataPlane": {"ports": {"postprocessor": {"grpc": 50054}}}},
    "relative exchange path": {"dataPlane": {"exchange": {"mountPath": "exchange"}}},
    "exchange on /tmp": {"dataPlane": {"exchange": {"mountPath": "/tmp"}}},
    "negative exchange size": {"dataPlane": {"exchange": {"sizeLimit": "-1Gi"}}},
    "zero exchange size": {"dataPlane": {"exchange": {"sizeLimit": "0"}}},
    # A bare number would render as 1.073741824e+09, which no API server accepts.
    "exchange size as a number": {"dataPlane": {"exchange": {"sizeLimit": 1073741824}}},
    "misspelt data-plane key": {"dataPlane": {"colocate": True}},
    "health port above 65535": {"ports": {"health": 70000}},
    "sidecar health port as a string": {"dataPlane": {"ports": {"decoder": {"health": "9301"}}}},
    "reflection as a string": {"config": {"reflection": "yes"}},
    "no study may run": {"gateway": {"admission": {"maxConcurrentStudies": 0}}},
    "negative study queue": {"gateway": {"admission": {"maxQueuedStudies": -1}}},
    "misspelt auth key": {"gateway": {"auth": {"apiKeySecret": "keys"}}},
    "API keys Secret with an invalid name": {"gateway": {"auth": {"apiKeysSecret": "Keys_1"}}},
    "API keys on the decoder": {"decoder": {"auth": {"apiKeysSecret": "keys"}}},
    "audit enabled as a string": {"gateway": {"audit": {"enabled": "true"}}},
    "relative audit path": {"gateway": {"audit": {"path": "audit.jsonl"}}},
    "audit volume with a name": {
        "gateway": {"audit": {"volume": {"source": {"name": "audit", "emptyDir": {}}}}}
    },
    "two audit volume sources": {
        "gateway": {
            "audit": {
                "volume": {"source": {"emptyDir": {}, "persistentVolumeClaim": {"claimName": "a"}}}
            }
        }
    },
    "audit volume on /tmp": {"gateway": {"audit": {"volume": {"mountPath": "/tmp"}}}},
    "Triton admin key name with a colon": {"triton": {"adminKey": {"key": "admin:key"}}},
    "misspelt Triton admin key field": {"triton": {"adminKey": {"secret": "admin"}}},
    "negative Triton connection age": {"triton": {"grpc": {"maxConnectionAgeSeconds": -1}}},
    "Triton connection age as a duration string": {
        "triton": {"grpc": {"maxConnectionAgeSeconds": "30s"}}
    },
    "zero ping interval": {"triton": {"grpc": {"minPingIntervalSeconds": 0}}},
    "misspelt Triton gRPC key": {"triton": {"grpc": {"maxConnectionAge": 30}}},
    "negative progress deadline": {"triton": {"progressDeadlineSeconds": -1}},
    "unknown PVC access mode": {"triton": {"modelRepository": {"pvc": {"accessMode": "RWX"}}}},
    "priority above the user range": {"priorityClass": {"value": 2000000000}},
    "priority class with a bad name": {"priorityClass": {"name": "Imaging_Critical"}},
    "unknown preemption policy": {"priorityClass": {"preemptionPolicy": "Always"}},
    "monitor label with a bad key": {"monitoring": {"labels": {"bad key": "x"}}},
    "adapter resource rules as a list": {"prometheusAdapter": {"rules": {"resourceRules": []}}},
}


@pytest.mark.parametrize("values", BAD_VALUES.values(), ids=BAD_VALUES.keys())
def test_schema_rejects_bad_values(values: dict[str, Any]) -> None:
    with pytest.raises(helm.HelmValuesError):
        render(values)
    assert lint(values, strict=True)["errors"]


_TLS_ON: dict[str, Any] = {
    "tls": {"enabled": True, "secretName": "mtls", "gateway": {"secretName": "edge"}},
    "triton": {"adminKey": {"secretName": "triton-admin"}},
}

TEMPLATE_CHECKS = {
    "HPA and KEDA together": (
        {"triton": {"autoscaling": {"hpa": {"enabled": True}, "keda": {"enabled": True}}}},
        "mutually exclusive",
    ),
    "grace period shorter than preStop + drain": (
        {"terminationGracePeriodSeconds": 5},
        "terminationGracePeriodSeconds",
    ),
    "Triton grace period shorter than preStop + exit timeout": (
        {"triton": {"terminationGracePeriodSeconds": 20}},
        "triton.terminationGracePeriodSeconds",
    ),
    "HPA metric without adapter rule": (
        {
            "prometheusAdapter": {"rules": {"enabled": True}},
            "triton": {
                "modelRepository": {"pvc": {"accessMode": "ReadOnlyMany"}},
                "autoscaling": {"hpa": {"enabled": True, "metricName": "gpu_busy"}},
            },
        },
        "not exposed by the prometheus-adapter rules",
    ),
    "KEDA metric without adapter rule": (
        {
            "triton": {
                "modelRepository": {"pvc": {"accessMode": "ReadOnlyMany"}},
                "autoscaling": {"keda": {"enabled": True, "metricName": "gpu_busy"}},
            }
        },
        "not exposed by files/adapter-rules.yaml",
    ),
    "minReplicas above maxReplicas": (
        {"gateway": {"autoscaling": {"minReplicas": 5, "maxReplicas": 2}}},
        "minReplicas",
    ),
    "mTLS without a Secret": ({"tls": {"enabled": True}}, "tls.secretName"),
    "sidecar port taken by the gateway": (
        {"dataPlane": {"ports": {"decoder": {"grpc": 50051, "metrics": 9101}}}},
        "must be distinct",
    ),
    "two sidecars on one metrics port": (
        {"dataPlane": {"ports": {"preprocessor": {"grpc": 50053, "metrics": 9101}}}},
        "must be distinct",
    ),
    "grace period too short for the sidecars to outlast the gateway": (
        {"terminationGracePeriodSeconds": 20},
        "2 x config.graceSeconds",
    ),
    "exchange over the pipelines mount": (
        {"dataPlane": {"exchange": {"mountPath": "/etc/imaging/pipelines"}}},
        "dataPlane.exchange.mountPath",
    ),
    "mTLS without the gateway's own certificate": (
        {"tls": {"enabled": True, "secretName": "mtls"}, **{"triton": _TLS_ON["triton"]}},
        "tls.gateway.secretName is required when tls.enabled is true",
    ),
    "mTLS without Triton's admin key": (
        {"tls": _TLS_ON["tls"]},
        "triton.adminKey.secretName is required when tls.enabled is true",
    ),
    "audit trail without its key": (
        {"gateway": {"audit": {"enabled": True}}},
        "gateway.audit.keySecret is required when gateway.audit.enabled is true",
    ),
    "audit file on the read-only root filesystem": (
        {"gateway": {"audit": {"enabled": True, "keySecret": "k", "path": "/var/log/a.jsonl"}}},
        "must be /dev/stdout or /dev/stderr unless gateway.audit.volume.source",
    ),
    "audit file outside its volume": (
        {
            "gateway": {
                "audit": {
                    "enabled": True,
                    "keySecret": "k",
                    "path": "/var/log/a.jsonl",
                    "volume": {"source": {"emptyDir": {}}, "mountPath": "/var/lib/audit"},
                }
            }
        },
        "must lie under gateway.audit.volume.mountPath",
    ),
    "audit volume over the TLS mount": (
        {
            **_TLS_ON,
            "gateway": {
                "audit": {
                    "enabled": True,
                    "keySecret": "k",
                    "path": "/etc/imaging/tls/audit.jsonl",
                    "volume": {"source": {"emptyDir": {}}, "mountPath": "/etc/imaging/tls"},
                }
            },
        },
        "mount paths must be distinct",
    ),
    "sidecar health port taken by the gateway's": (
        {
            **_TLS_ON,
            "dataPlane": {"ports": {"decoder": {"grpc": 50052, "metrics": 9101, "health": 9300}}},
        },
        "must be distinct",
    ),
    "health port on the gRPC port": (
        {**_TLS_ON, "dataPlane": {"colocated": False}, "ports": {"health": 50051}},
        "ports.health must be distinct",
    ),
    "TLS Secret over Triton's model repository": (
        {**_TLS_ON, "tls": {**_TLS_ON["tls"], "mountPath": "/models"}},
        "tls.mountPath (/models) must differ",
    ),
    "admission limit through env": (
        {"gateway": {"env": {"IMAGING_MAX_CONCURRENT_STUDIES": "2"}}},
        "gateway.env must not set IMAGING_MAX_CONCURRENT_STUDIES",
    ),
    "health port through env": (
        {"decoder": {"env": {"IMAGING_HEALTH_PORT": "9999"}}},
        "decoder.env must not set IMAGING_HEALTH_PORT",
    ),
    "connection-age grace shorter than the gateway's call timeout": (
        {"triton": {"grpc": {"maxConnectionAgeGraceSeconds": 30}}},
        "triton.grpc.maxConnectionAgeGraceSeconds (30) must be at least the gateway's per-call",
    ),
    "grace shorter than a raised call timeout": (
        {"gateway": {"env": {"IMAGING_CALL_TIMEOUT_SECONDS": "120"}}},
        "per-call timeout (gateway.env IMAGING_CALL_TIMEOUT_SECONDS, 120 s)",
    ),
    "Triton refusing the gateway's keepalive pings": (
        {"triton": {"grpc": {"minPingIntervalSeconds": 10}}},
        "triton.grpc.minPingIntervalSeconds (10) must be below the gateway's keepalive",
    ),
    "gateway pinging faster than Triton accepts": (
        {"gateway": {"env": {"IMAGING_KEEPALIVE_SECONDS": "4"}}},
        "keepalive interval (gateway.env IMAGING_KEEPALIVE_SECONDS, 4 s)",
    ),
    "progress deadline inside the start-up budget": (
        {"triton": {"progressDeadlineSeconds": 300}},
        "triton.progressDeadlineSeconds (300) must be at least Triton's start-up budget (600 s",
    ),
    "ReadWriteOnce model repository with two replicas": (
        {"triton": {"replicas": 2}},
        "claim imaging-model-repository is ReadWriteOnce, which attaches to one node",
    ),
    "ReadWriteOncePod model repository under the HPA": (
        {
            "triton": {
                "modelRepository": {"pvc": {"accessMode": "ReadWriteOncePod"}},
                "autoscaling": {"hpa": {"enabled": True}},
            }
        },
        "but Triton may run 4 replicas",
    ),
    "ReadWriteOnce model repository under KEDA": (
        {"triton": {"autoscaling": {"keda": {"enabled": True}}}},
        "use a ReadOnlyMany or ReadWriteMany claim",
    ),
    "KEDA in-flight total as a Value": (
        {"triton": {"autoscaling": {"keda": {"enabled": True, "metricType": "Value"}}}},
        "triton_inflight_requests is a total over the release's Triton pods",
    ),
    "KEDA queue time as an AverageValue": (
        {
            "triton": {
                "modelRepository": {"pvc": {"accessMode": "ReadOnlyMany"}},
                "autoscaling": {
                    "keda": {"enabled": True, "metricName": "triton_queue_time_per_request_us"}
                },
            }
        },
        "triton_queue_time_per_request_us is a per-request average",
    ),
}


@pytest.fixture(scope="module")
def schemaless_chart(tmp_path_factory: pytest.TempPathFactory) -> Iterator[helm.Chart]:
    with schemaless(tmp_path_factory.mktemp("chart")) as chart:
        yield chart


@pytest.mark.parametrize(
    ("values", "message"), TEMPLATE_CHECKS.values(), ids=TEMPLATE_CHECKS.keys()
)
def test_templates_reject_inconsistent_values(
    schemaless_chart: helm.Chart, values: dict[str, Any], message: str
) -> None:
    with pytest.raises(helm.HelmRenderError, match=re.escape(message)):
        schemaless_chart.render(values, name=RELEASE, namespace=NAMESPACE)
    with pytest.raises((helm.HelmRenderError, helm.HelmValuesError)):
        render(values)


@pytest.mark.parametrize(
    "values",
    [
        {"dataPlane": {"colocated": False, "ports": {"decoder": {"grpc": 50051, "metrics": 9100}}}},
        {"dataPlane": {"colocated": False}, "terminationGracePeriodSeconds": 20},
    ],
    ids=["sidecar ports unused", "single drain"],
)
def test_colocation_checks_apply_only_when_colocated(values: dict[str, Any]) -> None:
    objs = _parse(render(values))
    assert len(of_kind(objs, "Deployment")) == 5


def test_good_overrides_render() -> None:
    values = copy.deepcopy(scenario_values("gpu-production"))
    values["triton"]["autoscaling"]["hpa"]["metricName"] = "triton_pending_requests"
    values["triton"]["autoscaling"]["hpa"]["targetAverageValue"] = "32"
    hpa = by_name(_parse(render(values)), "HorizontalPodAutoscaler", component_name("triton"))
    assert hpa["spec"]["metrics"][0]["pods"]["metric"]["name"] == "triton_pending_requests"


# --- values.yaml documentation ----------------------------------------------------------------


def test_every_value_is_commented() -> None:
    """Each key in values.yaml has a comment above it, or sits inside a `# --` documented value."""
    lines = (CHART_DIR / "values.yaml").read_text().splitlines()
    key_re = re.compile(r"^(?P<indent>\s*)(?:- )?(?P<key>[A-Za-z0-9_./-]+):")
    documented_scopes: list[int] = []  # indents of enclosing keys documented as a whole
    missing = []
    for index, line in enumerate(lines):
        match = key_re.match(line)
        if not match:
            continue
        indent = len(match["indent"])
        while documented_scopes and documented_scopes[-1] >= indent:
            documented_scopes.pop()
        comment: list[str] = []
        above = index - 1
        while above >= 0 and lines[above].strip().startswith("#"):
            comment.insert(0, lines[above].strip())
            above -= 1
        if comment and comment[0].startswith("# --"):
            documented_scopes.append(indent)
        elif not comment and not documented_scopes:
            missing.append(f"values.yaml:{index + 1}: {line.strip()}")
    assert missing == []


def test_schema_describes_every_default_value() -> None:
    with helm.Chart.load(CHART_DIR) as chart:
        schema = chart.schema
        defaults = chart.values
    assert schema is not None
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    assert set(defaults) <= set(schema["properties"])


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_gateway_balances_over_headless_peer_services(scenario: str) -> None:
    """Per-call balancing needs every pod's address: the gateway dials headless Services."""
    objs = objects(scenario)
    env = env_of(service_container(objs, "gateway"))
    for peer in ("decoder", "preprocessor", "postprocessor", "triton"):
        target = env[f"IMAGING_{peer.upper()}_ADDRESS"]
        if colocated(scenario) and peer in SIDECARS:
            # In the gateway's own pod: loopback, to that container's port.
            sidecar = container(deployment(objs, "gateway"), peer)
            assert target == f"127.0.0.1:{env_of(sidecar)['IMAGING_PORT']}"
            continue
        match = re.fullmatch(r"dns:///([a-z0-9-]+)\.([a-z0-9-]+)\.svc\.[a-z.]+:(\d+)", target)
        assert match, target
        service = by_name(objs, "Service", match.group(1))
        assert match.group(2) == NAMESPACE
        assert service["spec"]["clusterIP"] == "None"
        assert int(match.group(3)) in {p["port"] for p in service["spec"]["ports"]}
        assert pods_selected(objs, {"matchLabels": service["spec"]["selector"]}) == {peer}


# --- Routing ----------------------------------------------------------------------------------


def test_body_part_aliases_reach_the_gateway_as_settings_it_accepts() -> None:
    assert "IMAGING_BODY_PART_ALIASES" not in env_of(service_container(_parse(render()), "gateway"))
    aliases = {"THORAX": "CHEST", "Lung": "CHEST", "BRST": "BREAST"}
    objs = _parse(render({"gateway": {"routing": {"bodyPartAliases": aliases}}}))
    gateway = service_container(objs, "gateway")
    raw = env_of(gateway)["IMAGING_BODY_PART_ALIASES"]
    others = [
        c
        for deploy in of_kind(objs, "Deployment")
        for c in containers(deploy)
        if c["name"] != "gateway"
    ]
    assert others and all("IMAGING_BODY_PART_ALIASES" not in env_of(c) for c in others)
    # The rendered string is what the gateway parses at start-up (JSON, pydantic-settings).
    parsed = GatewaySettings.model_validate({"body_part_aliases": json.loads(raw)})
    assert parsed.body_part_aliases == {"THORAX": "CHEST", "LUNG": "CHEST", "BRST": "BREAST"}


@pytest.mark.parametrize(
    "aliases",
    [{"THORAX": "chest"}, {"THORAX": "A" * 17}, {"": "CHEST"}, {"THORAX": "CHEST\n"}],
    ids=["lower-case term", "term over 16", "empty value", "control character"],
)
def test_body_part_aliases_outside_code_strings_fail_the_schema(aliases: dict[str, str]) -> None:
    with pytest.raises(helm.HelmValuesError):
        render({"gateway": {"routing": {"bodyPartAliases": aliases}}})
