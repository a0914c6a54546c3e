"""The colocated data plane: the decoder and the preprocessor in the gateway's pod, sharing a
memory-backed pixel exchange (services/common/exchange.py), against the separate-pods layout."""

from __future__ import annotations

from typing import Any

import pytest
from chart_support import (
    FULLNAME,
    SERVICES,
    SIDECARS,
    Obj,
    by_name,
    component_name,
    container,
    deployment,
    env_of,
    merged_values,
    objects,
    of_kind,
    parse_manifests,
    pod_spec,
    pods_selected,
    render,
    selector_matches,
)

DATA_PLANE = ("gateway", *SIDECARS)
STANDALONE_KINDS = (
    "Deployment",
    "HorizontalPodAutoscaler",
    "PodDisruptionBudget",
    "Service",
    "NetworkPolicy",
)


def _component(obj: Obj) -> str:
    component: str = obj["metadata"]["labels"]["app.kubernetes.io/component"]
    return component


def _memory_volumes(deploy: Obj) -> list[Obj]:
    return [
        v
        for v in pod_spec(deploy).get("volumes", [])
        if (v.get("emptyDir") or {}).get("medium") == "Memory"
    ]


def _ingress_ports(objs: list[Obj], component: str) -> set[int]:
    """Every port some NetworkPolicy ingress rule opens on ``component``'s pods."""
    ports: set[int] = set()
    for policy in of_kind(objs, "NetworkPolicy"):
        if component not in pods_selected(objs, policy["spec"]["podSelector"]):
            continue
        for rule in policy["spec"].get("ingress", []):
            ports |= {p["port"] for p in rule.get("ports", [])}
    return ports


# --- the default (colocated) pod --------------------------------------------------------------


def test_gateway_pod_runs_decoder_and_preprocessor() -> None:
    gateway = deployment(objects("default"), "gateway")
    spec = pod_spec(gateway)
    assert [c["name"] for c in spec["containers"]] == list(DATA_PLANE)
    for c in spec["containers"]:
        assert c["command"] == ["python", "-m", f"services.{c['name']}.server"]
    assert len({c["image"] for c in spec["containers"]}) == 1


def test_one_memory_emptydir_is_the_exchange_of_all_three() -> None:
    values = merged_values("default")
    gateway = deployment(objects("default"), "gateway")
    (volume,) = _memory_volumes(gateway)
    assert volume["emptyDir"] == {
        "medium": "Memory",
        "sizeLimit": values["dataPlane"]["exchange"]["sizeLimit"],
    }
    paths = set()
    for name in DATA_PLANE:
        c = container(gateway, name)
        (mount,) = [m for m in c["volumeMounts"] if m["name"] == volume["name"]]
        assert not mount.get("readOnly")  # the decoder writes, the preprocessor deletes
        assert env_of(c)["IMAGING_PIXEL_EXCHANGE_DIR"] == mount["mountPath"]
        paths.add(mount["mountPath"])
    assert paths == {values["dataPlane"]["exchange"]["mountPath"]}


def test_gateway_dials_its_sidecars_on_loopback() -> None:
    gateway = deployment(objects("default"), "gateway")
    env = env_of(container(gateway, "gateway"))
    for sidecar in SIDECARS:
        sidecar_env = env_of(container(gateway, sidecar))
        assert (
            env[f"IMAGING_{sidecar.upper()}_ADDRESS"] == f"127.0.0.1:{sidecar_env['IMAGING_PORT']}"
        )
    assert env["IMAGING_POSTPROCESSOR_ADDRESS"].startswith(
        f"dns:///{component_name('postprocessor')}-peers."
    )


def test_ports_in_the_shared_pod_are_distinct() -> None:
    gateway = deployment(objects("default"), "gateway")
    numbers: list[int] = []
    names: list[str] = []
    for c in pod_spec(gateway)["containers"]:
        env = env_of(c)
        declared = {p["containerPort"] for p in c["ports"]}
        assert declared == {int(env["IMAGING_PORT"]), int(env["IMAGING_METRICS_PORT"])}
        numbers += [p["containerPort"] for p in c["ports"]]
        names += [p["name"] for p in c["ports"]]
    assert len(numbers) == len(set(numbers)) == 6
    assert len(names) == len(set(names)) == 6
    assert all(len(n) <= 15 for n in names)  # IANA_SVC_NAME limit of container port names


def test_every_container_probes_its_own_port() -> None:
    gateway = deployment(objects("default"), "gateway")
    for c in pod_spec(gateway)["containers"]:
        port = int(env_of(c)["IMAGING_PORT"])
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert c[probe]["grpc"]["port"] == port, (c["name"], probe)


def test_only_the_preprocessor_sidecar_mounts_pipelines() -> None:
    gateway = deployment(objects("default"), "gateway")
    mounts = {
        c["name"]: {m["name"] for m in c["volumeMounts"]} for c in pod_spec(gateway)["containers"]
    }
    assert "pipelines" in mounts["gateway"] and "pipelines" in mounts["preprocessor"]
    assert "pipelines" not in mounts["decoder"]
    assert "IMAGING_PIPELINES_DIR" not in env_of(container(gateway, "decoder"))


def test_sidecars_keep_serving_while_the_gateway_drains() -> None:
    """All containers get SIGTERM together; a draining server refuses new calls, so the
    sidecars must start draining only after the gateway has."""
    values = merged_values("default")
    gateway = deployment(objects("default"), "gateway")
    sleeps = {
        c["name"]: int(c["lifecycle"]["preStop"]["exec"]["command"][1])
        for c in pod_spec(gateway)["containers"]
    }
    grace = values["config"]["graceSeconds"]
    for sidecar in SIDECARS:
        assert sleeps[sidecar] >= sleeps["gateway"] + grace
        assert pod_spec(gateway)["terminationGracePeriodSeconds"] >= sleeps[sidecar] + grace


def test_no_standalone_decoder_or_preprocessor_objects() -> None:
    objs = objects("default")
    for obj in objs:
        if obj["kind"] in STANDALONE_KINDS:
            assert _component(obj) not in SIDECARS, f"{obj['kind']}/{obj['metadata']['name']}"
    # The postprocessor still stands alone, with everything a Deployment comes with.
    post = component_name("postprocessor")
    for kind in STANDALONE_KINDS:
        assert by_name(objs, kind, post)
    assert by_name(objs, "Service", f"{post}-peers")["spec"]["clusterIP"] == "None"
    (c,) = pod_spec(deployment(objs, "postprocessor"))["containers"]
    assert "IMAGING_PIXEL_EXCHANGE_DIR" not in env_of(c)
    assert not _memory_volumes(deployment(objs, "postprocessor"))


def test_gateway_hpa_scales_the_combined_pod() -> None:
    objs = objects("default")
    hpa = by_name(objs, "HorizontalPodAutoscaler", component_name("gateway"))
    target = by_name(objs, "Deployment", hpa["spec"]["scaleTargetRef"]["name"])
    assert {c["name"] for c in pod_spec(target)["containers"]} == set(DATA_PLANE)
    pdb = by_name(objs, "PodDisruptionBudget", component_name("gateway"))
    assert pods_selected(objs, pdb["spec"]["selector"]) == {"gateway"}


def test_sidecar_grpc_ports_are_closed_to_the_network() -> None:
    """The sidecars bind 0.0.0.0 (probes and scrapes reach the pod IP), so no policy may open
    their gRPC ports; their metrics ports are open to Prometheus only."""
    objs = objects("default")
    gateway = deployment(objs, "gateway")
    opened = _ingress_ports(objs, "gateway")
    for sidecar in SIDECARS:
        env = env_of(container(gateway, sidecar))
        assert int(env["IMAGING_PORT"]) not in opened
        assert int(env["IMAGING_METRICS_PORT"]) in opened
    policy = by_name(objs, "NetworkPolicy", component_name("gateway"))
    targets = set()
    for rule in policy["spec"]["egress"]:
        for peer in rule["to"]:
            targets |= pods_selected(objs, peer["podSelector"])
    assert targets == {"postprocessor", "triton"}


@pytest.mark.parametrize(
    ("scenario", "kind"), [("gpu-production", "ServiceMonitor"), ("gpu-keda", "PodMonitor")]
)
def test_every_metrics_port_is_scraped(scenario: str, kind: str) -> None:
    """Each service container's metrics port is a scrape target, so every decoder and
    preprocessor query (they label series service=decoder/preprocessor themselves) still works."""
    objs = objects(scenario)
    monitor = by_name(objs, kind, f"{FULLNAME}-services")
    endpoints = monitor["spec"]["endpoints" if kind == "ServiceMonitor" else "podMetricsEndpoints"]
    assert all(e["honorLabels"] is True for e in endpoints)
    scraped = {e["port"] for e in endpoints}
    selector = monitor["spec"]["selector"]
    for svc in SERVICES:
        deploy = deployment(objs, "gateway" if svc in SIDECARS else svc)
        c = container(deploy, svc)
        (port,) = [
            p for p in c["ports"] if p["containerPort"] == int(env_of(c)["IMAGING_METRICS_PORT"])
        ]
        assert port["name"] in scraped, svc
        if kind == "PodMonitor":
            assert _component(deploy) in pods_selected(objs, selector)
        else:
            # The monitor selects the pod's Service, which exposes that port by name.
            service = by_name(objs, "Service", deploy["metadata"]["name"])
            assert selector_matches(selector, service["metadata"]["labels"]), svc
            exposed = {p["name"]: p["targetPort"] for p in service["spec"]["ports"]}
            assert exposed.get(port["name"]) == port["name"], svc
        assert port["containerPort"] in _ingress_ports(objs, _component(deploy))


# --- separate pods ----------------------------------------------------------------------------


def test_separate_pods_scenario_runs_four_deployments_without_an_exchange() -> None:
    objs = objects("separate-pods")
    assert merged_values("separate-pods")["dataPlane"]["colocated"] is False
    services = {_component(d) for d in of_kind(objs, "Deployment")} - {"triton"}
    assert services == set(SERVICES)
    for svc in SERVICES:
        deploy = deployment(objs, svc)
        (c,) = pod_spec(deploy)["containers"]
        assert c["name"] == svc
        assert "IMAGING_PIXEL_EXCHANGE_DIR" not in env_of(c)
        assert not _memory_volumes(deploy)
        assert not [m for m in c["volumeMounts"] if m["name"] == "pixel-exchange"]
    gateway_env = env_of(container(deployment(objs, "gateway"), "gateway"))
    for peer in ("decoder", "preprocessor", "postprocessor"):
        assert gateway_env[f"IMAGING_{peer.upper()}_ADDRESS"].startswith(
            f"dns:///{component_name(peer)}-peers."
        )
        assert by_name(objs, "Service", f"{component_name(peer)}-peers")
        assert by_name(objs, "NetworkPolicy", component_name(peer))
    monitor = by_name(objs, "ServiceMonitor", f"{FULLNAME}-services")
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["metrics"]


@pytest.mark.parametrize("scenario", ["default", "separate-pods"])
def test_every_pixel_exchange_is_shared_by_decoder_and_preprocessor(scenario: str) -> None:
    """A decoder that leaves pixels in an exchange its preprocessor cannot see fails every
    study: either both share one directory in one pod, or neither has one."""
    objs = objects(scenario)
    for deploy in of_kind(objs, "Deployment"):
        names = {c["name"]: c for c in pod_spec(deploy)["containers"]}
        having = {n for n, c in names.items() if "IMAGING_PIXEL_EXCHANGE_DIR" in env_of(c)}
        if having:
            assert having == set(DATA_PLANE)
            assert len({env_of(names[n])["IMAGING_PIXEL_EXCHANGE_DIR"] for n in having}) == 1


def test_custom_ports_and_exchange_render_through() -> None:
    values: dict[str, Any] = {
        "dataPlane": {
            "ports": {
                "decoder": {"grpc": 6001, "metrics": 6002},
                "preprocessor": {"grpc": 6003, "metrics": 6004},
            },
            "exchange": {"mountPath": "/var/run/exchange", "sizeLimit": "512Mi"},
        }
    }
    objs = parse_manifests(render(values))
    gateway = deployment(objs, "gateway")
    env = env_of(container(gateway, "gateway"))
    assert env["IMAGING_DECODER_ADDRESS"] == "127.0.0.1:6001"
    assert env["IMAGING_PREPROCESSOR_ADDRESS"] == "127.0.0.1:6003"
    assert env_of(container(gateway, "preprocessor"))["IMAGING_METRICS_PORT"] == "6004"
    assert (
        env_of(container(gateway, "decoder"))["IMAGING_PIXEL_EXCHANGE_DIR"] == "/var/run/exchange"
    )
    (volume,) = _memory_volumes(gateway)
    assert volume["emptyDir"]["sizeLimit"] == "512Mi"
    service = by_name(objs, "Service", component_name("gateway"))
    assert {p["port"] for p in service["spec"]["ports"]} == {50051, 9100, 6002, 6004}
