"""What tls.*, gateway.auth, gateway.audit, gateway.admission, gateway.limits,
gateway.readiness, config.reflection and triton.adminKey render: mutual TLS with probes on
plaintext health ports, Triton's TLS and restricted APIs, and the gateway's API keys, client
policy, OIDC, audit trail, admission and study limits and dependency readiness."""

from __future__ import annotations

import re
from typing import Any

import helm_python as helm
import pytest
import yaml
from chart_support import (
    SCENARIOS,
    SERVICES,
    SIDECARS,
    Obj,
    by_name,
    colocated,
    component_name,
    container,
    deployment,
    env_entry,
    env_of,
    expected_health_port,
    expected_ports,
    merged_values,
    mounted_volume,
    objects,
    of_kind,
    parse_manifests,
    pod_of,
    pod_spec,
    pods_selected,
    render,
    scenario_values,
    service_container,
    tls_enabled,
)

PROBES = ("startupProbe", "readinessProbe", "livenessProbe")
TLS_ENV = ("IMAGING_TLS_CERT", "IMAGING_TLS_KEY", "IMAGING_TLS_CA")
GATEWAY_ONLY_ENV = (
    "IMAGING_API_KEYS_FILE",
    "IMAGING_AUDIT_LOG",
    "IMAGING_AUDIT_KEY_FILE",
    "IMAGING_AUDIT_CHAIN",
    "IMAGING_MAX_CONCURRENT_STUDIES",
    "IMAGING_MAX_QUEUED_STUDIES",
    "IMAGING_MAX_STUDIES_PER_CLIENT",
    "IMAGING_STREAM_IDLE_SECONDS",
    "IMAGING_STREAM_RECEIVE_SECONDS",
    "IMAGING_CLIENT_POLICY_FILE",
    "IMAGING_OIDC_ISSUER",
    "IMAGING_OIDC_AUDIENCE",
    "IMAGING_OIDC_JWKS_FILE",
    "IMAGING_MAX_STUDY_DECODED_BYTES",
    "IMAGING_PEER_UNREACHABLE_SECONDS",
    "IMAGING_PEER_PROBE_INTERVAL_SECONDS",
)
GATEWAY_ONLY_VOLUMES = {"api-keys", "audit-key", "audit", "client-policy", "oidc-jwks"}
RESTRICTED = "model-repository,shared-memory,statistics,trace,logging"
LAYOUTS = pytest.mark.parametrize(
    "layout", [{}, {"dataPlane": {"colocated": False}}], ids=["colocated", "separate-pods"]
)
NON_TLS_SCENARIOS = [s for s in SCENARIOS if not tls_enabled(s)]


def _mtls(layout: dict[str, Any]) -> list[Obj]:
    """The mtls scenario, colocated (as shipped) or with four separate Deployments."""
    if not layout:
        return objects("mtls")
    return parse_manifests(render({**scenario_values("mtls"), **layout}))


def _values(layout: dict[str, Any]) -> dict[str, Any]:
    values = merged_values("mtls")
    values["dataPlane"].update(layout.get("dataPlane", {}))
    return values


def _secret_volume(deploy: Obj, c: Obj, path: str) -> tuple[Obj, Obj]:
    mount, volume = mounted_volume(deploy, c, path)
    assert mount["readOnly"] is True, (c["name"], path)
    assert "subPath" not in mount  # a subPath mount never sees the Secret's updates
    return mount, volume["secret"]


def _ingress_ports(objs: list[Obj], component: str) -> set[int]:
    ports: set[int] = set()
    for policy in of_kind(objs, "NetworkPolicy"):
        if component in pods_selected(objs, policy["spec"]["podSelector"]):
            for rule in policy["spec"].get("ingress", []):
                ports |= {p["port"] for p in rule.get("ports", [])}
    return ports


# --- mutual TLS in the services ---------------------------------------------------------------


@LAYOUTS
def test_with_tls_every_service_serves_tls_and_has_a_health_port(layout: dict[str, Any]) -> None:
    objs = _mtls(layout)
    values = _values(layout)
    tls = values["tls"]
    for svc in SERVICES:
        deploy = pod_of(objs, svc)
        c = container(deploy, svc)
        env = env_of(c)
        # The gateway's API port: its public certificate and its clients' CA; behind it, the
        # services' certificate and CA (which the gateway dials them with).
        own = tls["gateway"] if svc == "gateway" else tls
        for name, key in zip(TLS_ENV, ("certKey", "keyKey", "caKey"), strict=True):
            assert env[name] == f"{own['mountPath']}/{tls[key]}", (svc, name)
            _, secret = _secret_volume(deploy, c, env[name])
            assert secret["secretName"] == own["secretName"]
            if svc == "gateway":
                peer = env[name.replace("IMAGING_TLS", "IMAGING_PEER_TLS")]
                assert peer == f"{tls['mountPath']}/{tls[key]}"
                assert _secret_volume(deploy, c, peer)[1]["secretName"] == tls["secretName"]
        assert own["secretName"] != tls["gateway"]["secretName"] or svc == "gateway"
        health = expected_health_port(values, svc)
        assert health is not None
        assert env["IMAGING_HEALTH_PORT"] == str(health)
        declared = {p["name"]: p["containerPort"] for p in c["ports"]}
        suffix = f"-{svc[:3]}" if colocated("mtls") and not layout and svc in SIDECARS else ""
        assert declared[f"health{suffix}"] == health


@LAYOUTS
def test_with_tls_probes_use_the_health_port_not_the_tls_port(layout: dict[str, Any]) -> None:
    objs = _mtls(layout)
    for svc in SERVICES:
        c = service_container(objs, svc)
        env = env_of(c)
        health, api = int(env["IMAGING_HEALTH_PORT"]), int(env["IMAGING_PORT"])
        assert health != api
        for probe in PROBES:  # the probed health service: test_resilience.py
            assert c[probe]["grpc"]["port"] == health, (svc, probe)


def test_health_ports_are_distinct_in_the_colocated_pod() -> None:
    gateway = deployment(objects("mtls"), "gateway")
    numbers: list[int] = []
    names: list[str] = []
    health_ports = []
    for c in pod_spec(gateway)["containers"]:
        numbers += [p["containerPort"] for p in c["ports"]]
        names += [p["name"] for p in c["ports"]]
        health_ports.append(int(env_of(c)["IMAGING_HEALTH_PORT"]))
    assert len(health_ports) == len(set(health_ports)) == 3
    assert len(numbers) == len(set(numbers)) == 9  # gRPC, metrics and health of three containers
    assert len(names) == len(set(names)) == 9
    assert all(len(n) <= 15 for n in names)


@LAYOUTS
def test_health_ports_stay_off_services_and_network_policies(layout: dict[str, Any]) -> None:
    """Only the kubelet (not subject to NetworkPolicies) needs the plaintext health ports."""
    objs = _mtls(layout)
    for svc in SERVICES:
        deploy = pod_of(objs, svc)
        health = int(env_of(container(deploy, svc))["IMAGING_HEALTH_PORT"])
        component = deploy["metadata"]["labels"]["app.kubernetes.io/component"]
        assert health not in _ingress_ports(objs, component), svc
    for service in of_kind(objs, "Service"):
        for port in service["spec"]["ports"]:
            assert not str(port["targetPort"]).startswith("health"), service["metadata"]["name"]


@pytest.mark.parametrize("scenario", NON_TLS_SCENARIOS)
def test_without_tls_probes_stay_on_the_grpc_port(scenario: str) -> None:
    objs = objects(scenario)
    values = merged_values(scenario)
    assert values["tls"]["enabled"] is False
    for svc in SERVICES:
        c = service_container(objs, svc)
        env = env_of(c)
        assert "IMAGING_HEALTH_PORT" not in env
        assert not [k for k in env if k.startswith("IMAGING_TLS")]
        assert not [p for p in c["ports"] if p["name"].startswith("health")]
        grpc = expected_ports(values, svc)[0]
        for probe in PROBES:  # the probed health service: test_resilience.py
            assert c[probe]["grpc"]["port"] == grpc, (svc, probe)
        assert "tls" not in {m["name"] for m in c["volumeMounts"]}


def test_default_install_is_unchanged_by_the_security_values() -> None:
    """No TLS, keys or audit by default; reflection on; the services' default admission."""
    objs = objects("default")
    for svc in SERVICES:
        env = env_of(service_container(objs, svc))
        assert env["IMAGING_REFLECTION"] == "true"
        for name in (
            "IMAGING_API_KEYS_FILE",
            "IMAGING_AUDIT_LOG",
            "IMAGING_AUDIT_CHAIN",
            "IMAGING_CLIENT_POLICY_FILE",
            "IMAGING_OIDC_ISSUER",
            "IMAGING_OIDC_JWKS_FILE",
        ):
            assert name not in env, (svc, name)
    gateway = env_of(service_container(objs, "gateway"))
    assert gateway["IMAGING_MAX_CONCURRENT_STUDIES"] == "8"
    assert gateway["IMAGING_MAX_QUEUED_STUDIES"] == "128"
    assert gateway["IMAGING_MAX_STUDY_DECODED_BYTES"] == "2147483648"
    assert gateway["IMAGING_PEER_UNREACHABLE_SECONDS"] == "3"
    assert gateway["IMAGING_PEER_PROBE_INTERVAL_SECONDS"] == "1"
    assert not [o for o in of_kind(objs, "ConfigMap") if "client-policy" in o["metadata"]["name"]]
    triton = container(deployment(objs, "triton"), "triton")
    assert not [a for a in triton["args"] if "ssl" in a or "restricted" in a]
    assert "TRITON_ADMIN_KEY" not in env_of(triton)
    assert "tls" not in {v["name"] for v in pod_spec(deployment(objs, "triton"))["volumes"]}


# --- Triton -----------------------------------------------------------------------------------


def test_triton_serves_mutual_tls_and_restricts_admin_apis() -> None:
    objs = objects("mtls")
    values = merged_values("mtls")
    tls, admin = values["tls"], values["triton"]["adminKey"]
    deploy = deployment(objs, "triton")
    c = container(deploy, "triton")
    args = c["args"]
    cert, key, ca = (f"{tls['mountPath']}/{tls[k]}" for k in ("certKey", "keyKey", "caKey"))
    for flag in (
        "--grpc-use-ssl=true",
        f"--grpc-server-cert={cert}",
        f"--grpc-server-key={key}",
        "--grpc-use-ssl-mutual=true",
        f"--grpc-root-cert={ca}",
        f"--grpc-restricted-protocol={RESTRICTED}:admin-key=$(TRITON_ADMIN_KEY)",
        f"--http-restricted-api={RESTRICTED}:admin-key=$(TRITON_ADMIN_KEY)",
    ):
        assert args.count(flag) == 1, flag
    # The kubelet expands $(TRITON_ADMIN_KEY) from the Secret: the key is not in the pod spec.
    assert env_entry(c, "TRITON_ADMIN_KEY")["valueFrom"] == {
        "secretKeyRef": {"name": admin["secretName"], "key": admin["key"]}
    }
    for path in (cert, key, ca):
        _, secret = _secret_volume(deploy, c, path)
        assert secret["secretName"] == tls["secretName"]
    # Triton's probes are HTTP, which stays plaintext: nothing to move.
    for probe in PROBES:
        assert c[probe]["httpGet"]["port"] == "http"
        assert "grpc" not in c[probe]


def test_triton_admin_key_without_tls_restricts_only() -> None:
    objs = parse_manifests(render({"triton": {"adminKey": {"secretName": "triton-admin"}}}))
    c = container(deployment(objs, "triton"), "triton")
    assert not [a for a in c["args"] if "ssl" in a or "root-cert" in a]
    assert [a for a in c["args"] if "restricted" in a] == [
        f"--grpc-restricted-protocol={RESTRICTED}:admin-key=$(TRITON_ADMIN_KEY)",
        f"--http-restricted-api={RESTRICTED}:admin-key=$(TRITON_ADMIN_KEY)",
    ]
    assert env_entry(c, "TRITON_ADMIN_KEY")["valueFrom"]["secretKeyRef"]["name"] == "triton-admin"


# --- gateway: API keys, audit, admission ------------------------------------------------------


@LAYOUTS
def test_api_keys_and_audit_are_in_the_gateway_container_only(layout: dict[str, Any]) -> None:
    objs = _mtls(layout)
    values = _values(layout)["gateway"]
    gateway_deploy = deployment(objs, "gateway")
    gateway = container(gateway_deploy, "gateway")
    env = env_of(gateway)
    _, keys = _secret_volume(gateway_deploy, gateway, env["IMAGING_API_KEYS_FILE"])
    assert keys["secretName"] == values["auth"]["apiKeysSecret"]
    assert keys["items"] == [{"key": "api-keys", "path": "api-keys"}]
    assert env["IMAGING_API_KEYS_FILE"].endswith("/api-keys")
    _, audit_key = _secret_volume(gateway_deploy, gateway, env["IMAGING_AUDIT_KEY_FILE"])
    assert audit_key["secretName"] == values["audit"]["keySecret"]
    assert audit_key["items"] == [{"key": "audit-key", "path": "audit-key"}]
    assert env["IMAGING_AUDIT_LOG"] == values["audit"]["path"] == "/dev/stdout"
    assert env["IMAGING_MAX_CONCURRENT_STUDIES"] == str(values["admission"]["maxConcurrentStudies"])
    assert env["IMAGING_MAX_QUEUED_STUDIES"] == str(values["admission"]["maxQueuedStudies"])
    for variable, value in (
        ("IMAGING_MAX_STUDIES_PER_CLIENT", "maxStudiesPerClient"),
        ("IMAGING_STREAM_IDLE_SECONDS", "streamIdleSeconds"),
        ("IMAGING_STREAM_RECEIVE_SECONDS", "streamReceiveSeconds"),
    ):
        assert env[variable] == str(values["admission"][value])
    gateway_mounts = {m["name"] for m in gateway["volumeMounts"]}
    assert {"api-keys", "audit-key"} <= gateway_mounts
    # Nobody else: not the sidecars next to it, not the other Deployments, not Triton.
    for deploy in of_kind(objs, "Deployment"):
        for c in pod_spec(deploy)["containers"]:
            if c["name"] == "gateway":
                continue
            assert not set(GATEWAY_ONLY_ENV) & set(env_of(c)), c["name"]
            assert not GATEWAY_ONLY_VOLUMES & {m["name"] for m in c["volumeMounts"]}
        if deploy is not gateway_deploy:
            assert not GATEWAY_ONLY_VOLUMES & {v["name"] for v in pod_spec(deploy)["volumes"]}


def test_audit_chain_is_the_pod_name() -> None:
    gateway = service_container(objects("mtls"), "gateway")
    entry = env_entry(gateway, "IMAGING_AUDIT_CHAIN")
    assert "value" not in entry
    assert entry["valueFrom"] == {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}}


def test_audit_file_on_a_volume() -> None:
    values = {
        "gateway": {
            "audit": {
                "enabled": True,
                "keySecret": "audit-key",
                "path": "/var/lib/imaging/audit/trail.jsonl",
                "volume": {"source": {"persistentVolumeClaim": {"claimName": "imaging-audit"}}},
            }
        }
    }
    objs = parse_manifests(render(values))
    deploy = deployment(objs, "gateway")
    gateway = container(deploy, "gateway")
    path = env_of(gateway)["IMAGING_AUDIT_LOG"]
    assert path == "/var/lib/imaging/audit/trail.jsonl"
    mount, volume = mounted_volume(deploy, gateway, path)
    assert mount["mountPath"] == "/var/lib/imaging/audit" and not mount.get("readOnly")
    assert volume == {"name": "audit", "persistentVolumeClaim": {"claimName": "imaging-audit"}}
    assert "IMAGING_API_KEYS_FILE" not in env_of(gateway)  # auth is independent of audit


def test_reflection_and_admission_follow_the_values() -> None:
    objs = objects("mtls")
    values = merged_values("mtls")
    assert values["config"]["reflection"] is False
    for svc in SERVICES:
        assert env_of(service_container(objs, svc))["IMAGING_REFLECTION"] == "false"
    env = env_of(service_container(objs, "gateway"))
    assert (env["IMAGING_MAX_CONCURRENT_STUDIES"], env["IMAGING_MAX_QUEUED_STUDIES"]) == (
        "4",
        "32",
    )


# --- gateway: client policy, OIDC, study limits, dependency readiness ---------------------------


def _config_map_volume(deploy: Obj, c: Obj, path: str) -> Obj:
    mount, volume = mounted_volume(deploy, c, path)
    assert mount["readOnly"] is True, (c["name"], path)
    assert "subPath" not in mount  # a subPath mount never sees the ConfigMap's updates
    config: Obj = volume["configMap"]
    return config


def _policy_annotation(values: dict[str, Any]) -> str | None:
    gateway = deployment(parse_manifests(render(values)), "gateway")
    annotations: dict[str, str] = gateway["spec"]["template"]["metadata"].get("annotations") or {}
    return annotations.get("checksum/client-policy")


def _with_policy(inline: dict[str, Any]) -> dict[str, Any]:
    return {"gateway": {"auth": {"policy": {"inline": inline}}}}


@LAYOUTS
def test_client_policy_and_oidc_are_mounted_in_the_gateway(layout: dict[str, Any]) -> None:
    objs = _mtls(layout)
    auth = _values(layout)["gateway"]["auth"]
    deploy = deployment(objs, "gateway")
    gateway = container(deploy, "gateway")
    env = env_of(gateway)
    assert env["IMAGING_CLIENT_POLICY_FILE"].endswith("/client-policy.yaml")
    policy = _config_map_volume(deploy, gateway, env["IMAGING_CLIENT_POLICY_FILE"])
    assert policy["name"] == component_name("client-policy")
    assert policy["items"] == [{"key": "client-policy.yaml", "path": "client-policy.yaml"}]
    oidc = auth["oidc"]
    assert (
        env["IMAGING_OIDC_ISSUER"] == oidc["issuer"] == "https://login.example.com/realms/imaging"
    )
    assert env["IMAGING_OIDC_AUDIENCE"] == oidc["audience"] == "imaging-gateway"
    assert env["IMAGING_OIDC_JWKS_FILE"].endswith("/jwks.json")
    jwks = _config_map_volume(deploy, gateway, env["IMAGING_OIDC_JWKS_FILE"])
    assert jwks["name"] == oidc["jwksConfigMap"] == "imaging-oidc-jwks"
    assert jwks["items"] == [{"key": "jwks.json", "path": "jwks.json"}]


def test_inline_client_policy_is_rendered_into_the_chart_config_map() -> None:
    objs = objects("mtls")
    inline = merged_values("mtls")["gateway"]["auth"]["policy"]["inline"]
    assert inline["reading-room"]["pipelines"] == ["cxr_pneumonia"]
    cm = by_name(objs, "ConfigMap", component_name("client-policy"))
    assert set(cm["data"]) == {"client-policy.yaml"}
    assert yaml.safe_load(cm["data"]["client-policy.yaml"]) == inline
    assert cm["metadata"]["labels"]["app.kubernetes.io/component"] == "client-policy"


def test_existing_client_policy_config_map_is_mounted_as_is() -> None:
    values = {"gateway": {"auth": {"policy": {"existingConfigMap": "site-policy"}}}}
    objs = parse_manifests(render(values))
    assert not [o for o in of_kind(objs, "ConfigMap") if "client-policy" in o["metadata"]["name"]]
    deploy = deployment(objs, "gateway")
    gateway = container(deploy, "gateway")
    path = env_of(gateway)["IMAGING_CLIENT_POLICY_FILE"]
    assert _config_map_volume(deploy, gateway, path)["name"] == "site-policy"
    assert _policy_annotation(values) is None


def test_client_policy_checksum_rolls_the_gateway_pods() -> None:
    first = _policy_annotation(_with_policy({"reading-room": {"max_priority": "DEFAULT"}}))
    same = _policy_annotation(_with_policy({"reading-room": {"max_priority": "DEFAULT"}}))
    changed = _policy_annotation(_with_policy({"reading-room": {"max_priority": "URGENT"}}))
    assert first is not None and changed is not None
    assert first == same != changed
    assert _policy_annotation({}) is None


@pytest.mark.parametrize(
    "oidc",
    [
        {"issuer": "https://idp.example.com"},
        {"issuer": "https://idp.example.com", "audience": "imaging"},
        {"issuer": "https://idp.example.com", "jwksConfigMap": "jwks"},
    ],
    ids=["issuer only", "no jwks", "no audience"],
)
def test_oidc_issuer_without_audience_or_jwks_fails(oidc: dict[str, str]) -> None:
    message = "gateway.auth.oidc.issuer needs gateway.auth.oidc.audience and"
    with pytest.raises(helm.HelmRenderError, match=re.escape(message)):
        render({"gateway": {"auth": {"oidc": oidc}}})


def test_study_limit_and_readiness_values_reach_the_gateway_env() -> None:
    values = {
        "gateway": {
            "limits": {"maxStudyDecodedBytes": 4294967296},
            "readiness": {"peerUnreachableSeconds": 7.5, "probeIntervalSeconds": 0.5},
        }
    }
    env = env_of(service_container(parse_manifests(render(values)), "gateway"))
    assert env["IMAGING_MAX_STUDY_DECODED_BYTES"] == "4294967296"
    assert env["IMAGING_PEER_UNREACHABLE_SECONDS"] == "7.5"
    assert env["IMAGING_PEER_PROBE_INTERVAL_SECONDS"] == "0.5"


@pytest.mark.parametrize(
    "gateway",
    [
        {"readiness": {"peerUnreachableSeconds": -1}},
        {"readiness": {"peerUnreachableSeconds": 0}},
        {"readiness": {"probeIntervalSeconds": -0.5}},
        {"limits": {"maxStudyDecodedBytes": 0}},
        {"auth": {"policy": {"inline": {"x": {"max_priority": "HIGHEST"}}}}},
    ],
    ids=["negative unreachable", "zero unreachable", "negative interval", "zero bytes", "priority"],
)
def test_schema_rejects_bad_gateway_limits(gateway: dict[str, Any]) -> None:
    with pytest.raises(helm.HelmValuesError):
        render({"gateway": gateway})


# --- certificate names ------------------------------------------------------------------------


@LAYOUTS
def test_notes_list_every_name_the_gateway_dials(layout: dict[str, Any]) -> None:
    """The SANs NOTES.txt asks for cover each peer address (and the gateway's Service)."""
    manifests = render({**scenario_values("mtls"), **layout})
    notes = next(text for name, text in manifests.items() if name.endswith("NOTES.txt"))
    listed = set(re.findall(r"^\s+- (\S+)$", notes, flags=re.MULTILINE))
    assert "usages [server auth, client auth]" in notes and "127.0.0.1" in notes
    objs = parse_manifests(manifests)
    env = env_of(service_container(objs, "gateway"))
    for peer in ("decoder", "preprocessor", "postprocessor", "triton"):
        host = env[f"IMAGING_{peer.upper()}_ADDRESS"].removeprefix("dns:///").rsplit(":", 1)[0]
        if host == "127.0.0.1":
            assert not layout and peer in SIDECARS
            continue
        assert host in listed, peer
    gateway_service = f"{component_name('gateway')}.imaging.svc.cluster.local"
    assert gateway_service in listed
