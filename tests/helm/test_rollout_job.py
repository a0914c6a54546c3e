"""The model-rollout Job (templates/rollout-job.yaml, values rollout.job).

It runs the platform CLI (`imaging-platform models rollout|retire`, i.e. `python -m
services.cli.main`) from the services' image as the rollout ServiceAccount, only with explicit
model control and rollout RBAC. Checked here: when it renders (and the messages when it must
not), strict validity in every scenario, its command line as the CLI's own parser reads it, the
TLS, admin-key and pipelines wiring, the labels the NetworkPolicies admit, Pod Security
"restricted", its name and its deadlines.
"""

from __future__ import annotations

import copy
import functools
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml
from chart_support import (
    CHART_DIR,
    FULLNAME,
    NAMESPACE,
    RELEASE,
    REPO_ROOT,
    SCENARIOS,
    Obj,
    by_name,
    component_name,
    container,
    deployment,
    merged_values,
    mounted_volume,
    objects,
    of_kind,
    overlay,
    parse_manifests,
    pod_spec,
    pods_selected,
    render,
    scenario_values,
    schemaless,
    selector_matches,
    service_container,
)

from services.cli.main import cmd_models_rollout, parser
from services.fleet import kube
from services.fleet.core import GRPC_PORT_NAME

KUBERNETES_VERSIONS = ("1.29.0", "1.33.0")
COMPONENT = "model-rollout"
MODEL, VERSION = "cxr_pneumonia", 3
ACTIONS = ("rollout", "retire")
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def with_job(base: dict[str, Any] | None = None, **job: Any) -> dict[str, Any]:
    """``base`` with explicit model control, rollout RBAC and the Job on (MODEL, VERSION)."""
    return overlay(
        base or {},
        {
            "triton": {"modelControlMode": "explicit"},
            "rollout": {
                "rbac": {"create": True},
                "job": {"enabled": True, "model": MODEL, "version": VERSION, **job},
            },
        },
    )


def runs_job(values: dict[str, Any]) -> bool:
    job_on = bool(values["rollout"]["job"]["enabled"])
    return job_on and values["triton"]["modelControlMode"] == "explicit"


# Scenarios whose own values run the Job (ci/*-values.yaml).
JOB_SCENARIOS = [s for s in SCENARIOS if runs_job(merged_values(s))]


@functools.cache
def _job_render(scenario: str, action: str) -> tuple[Obj, ...]:
    values = with_job(scenario_values(scenario), action=action)
    return tuple(parse_manifests(render(values)))


def job_objects(scenario: str = "default", action: str = "rollout") -> list[Obj]:
    """A scenario's objects with the Job forced on (MODEL, VERSION, ``action``)."""
    return [copy.deepcopy(o) for o in _job_render(scenario, action)]


def the_job(objs: list[Obj]) -> Obj:
    jobs = of_kind(objs, "Job")
    assert len(jobs) == 1, f"{len(jobs)} Jobs rendered"
    return jobs[0]


def job_container(job: Obj) -> Obj:
    containers: list[Obj] = pod_spec(job)["containers"]
    (c,) = containers
    assert c["name"] == COMPONENT
    assert "initContainers" not in pod_spec(job)
    return c


def cli_args(job: Obj) -> Any:
    """The Job's arguments as the platform CLI's own parser reads them."""
    c = job_container(job)
    assert c["command"] == ["python", "-m", "services.cli.main"]
    args = parser().parse_args(c["args"])
    assert args.func is cmd_models_rollout
    return args


def render_job(values: dict[str, Any]) -> Obj:
    return the_job(parse_manifests(render(values)))


def notes(values: dict[str, Any]) -> str:
    manifests = render(values)
    return next(text for name, text in manifests.items() if name.endswith("NOTES.txt"))


# --- when the Job renders ----------------------------------------------------------------------


def test_a_ci_scenario_runs_the_job() -> None:
    assert "gpu-production" in JOB_SCENARIOS
    values = merged_values("gpu-production")
    assert values["triton"]["modelControlMode"] == "explicit"
    assert values["rollout"]["rbac"]["create"] is True


def test_production_rolls_out_the_version_its_pipeline_pins() -> None:
    values = merged_values("gpu-production")
    job = values["rollout"]["job"]
    assert job["action"] == "rollout"
    assert job["model"] in values["triton"]["models"]
    pipeline = yaml.safe_load((REPO_ROOT / "pipelines" / f"{job['model']}.yaml").read_text())
    assert pipeline["model"]["name"] == job["model"]
    assert int(pipeline["model"]["version"]) == job["version"]
    args = cli_args(the_job(objects("gpu-production")))
    assert (args.name, args.version, args.timeout) == (job["model"], job["version"], 900.0)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_job_renders_only_with_explicit_control_and_the_job_enabled(scenario: str) -> None:
    jobs = of_kind(objects(scenario), "Job")
    assert len(jobs) == (1 if scenario in JOB_SCENARIOS else 0)


def test_explicit_control_alone_renders_no_job() -> None:
    values = {"triton": {"modelControlMode": "explicit"}, "rollout": {"rbac": {"create": True}}}
    assert not of_kind(parse_manifests(render(values)), "Job")
    production = overlay(
        scenario_values("gpu-production"), {"rollout": {"job": {"enabled": False}}}
    )
    assert not of_kind(parse_manifests(render(production)), "Job")


@pytest.mark.parametrize("scenario", [s for s in SCENARIOS if s not in JOB_SCENARIOS])
def test_job_with_model_control_none_fails_naming_the_value(scenario: str) -> None:
    values = with_job(scenario_values(scenario))
    values["triton"]["modelControlMode"] = "none"
    with pytest.raises(helm.HelmRenderError, match=r"triton\.modelControlMode=explicit"):
        render(values)


def test_job_without_rollout_rbac_fails_naming_the_value() -> None:
    values = with_job()
    values["rollout"]["rbac"]["create"] = False
    with pytest.raises(helm.HelmRenderError, match=r"needs rollout\.rbac\.create=true"):
        render(values)


@pytest.fixture(scope="module")
def schemaless_chart(tmp_path_factory: pytest.TempPathFactory) -> Iterator[helm.Chart]:
    with schemaless(tmp_path_factory.mktemp("chart")) as chart:
        yield chart


@pytest.mark.parametrize(
    ("job", "message"),
    [
        ({"model": ""}, "rollout.job.model is required"),
        ({"version": None}, "rollout.job.version is required"),
        ({"version": 0}, "rollout.job.version is required"),
        ({"action": "upgrade"}, "rollout.job.action must be rollout or retire, not upgrade"),
        (
            {"timeoutSeconds": 600, "activeDeadlineSeconds": 300},
            "rollout.job.activeDeadlineSeconds (300) must be at least rollout.job.timeoutSeconds",
        ),
    ],
    ids=["no model", "no version", "version 0", "unknown action", "deadline below timeout"],
)
def test_template_checks_hold_without_the_schema(
    schemaless_chart: helm.Chart, job: dict[str, Any], message: str
) -> None:
    with pytest.raises(helm.HelmRenderError, match=re.escape(message)):
        schemaless_chart.render(with_job(**job), name=RELEASE, namespace=NAMESPACE)
    with pytest.raises((helm.HelmRenderError, helm.HelmValuesError)):
        render(with_job(**job))


@pytest.mark.parametrize(
    "job",
    [
        {"action": "upgrade"},
        {"version": 0},
        {"version": "3"},
        {"version": None},
        {"model": ""},
        {"model": "../cxr"},
        {"model": "cxr pneumonia"},
        {"backoffLimit": -1},
        {"timeoutSeconds": 0},
        {"ttlSecondsAfterFinished": -1},
        {"image": "other"},
    ],
    ids=lambda job: ",".join(f"{k}={v!r}" for k, v in job.items()),
)
def test_schema_rejects_bad_job_values(job: dict[str, Any]) -> None:
    with pytest.raises(helm.HelmValuesError):
        render(with_job(**job))


def test_schema_leaves_a_disabled_job_alone() -> None:
    # The defaults (no model, no version) are fine while the Job is off, whatever the mode.
    values = {"rollout": {"job": {"action": "retire", "ttlSecondsAfterFinished": 0}}}
    assert not of_kind(parse_manifests(render(values)), "Job")


# --- validity -----------------------------------------------------------------------------------


@pytest.mark.parametrize("kube_version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("action", ACTIONS)
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_job_validates_strictly_in_every_scenario(
    scenario: str, action: str, kube_version: str
) -> None:
    job = the_job(job_objects(scenario, action))
    body = {k: v for k, v in job.items() if not k.startswith("_")}
    assert kubernetes_validate.validate(body, kube_version, strict=True) == kube_version[:4]


# --- the command line ---------------------------------------------------------------------------


def test_rollout_command() -> None:
    job = the_job(job_objects("default", "rollout"))
    assert job_container(job)["args"] == [
        "models",
        "rollout",
        MODEL,
        "--version",
        str(VERSION),
        "--release",
        RELEASE,
        "--namespace",
        NAMESPACE,
        "--timeout",
        "300",
    ]
    args = cli_args(job)
    assert args.models_command == "rollout"
    assert (args.name, args.version) == (MODEL, VERSION)
    assert (args.release, args.namespace, args.timeout) == (RELEASE, NAMESPACE, 300.0)
    assert (args.tls_ca, args.tls_cert, args.tls_key) == (None, None, None)
    assert args.admin_key_file is None and args.tls_server_name == ""
    assert args.context is None  # in-cluster configuration, not a kubeconfig


def test_retire_command_reads_the_services_pipelines() -> None:
    objs = job_objects("default", "retire")
    job = the_job(objs)
    pipelines_dir = merged_values("default")["pipelines"]["mountPath"]
    assert job_container(job)["args"] == [
        "models",
        "retire",
        MODEL,
        str(VERSION),
        "--release",
        RELEASE,
        "--namespace",
        NAMESPACE,
        "--timeout",
        "300",
        "--pipelines-dir",
        pipelines_dir,
    ]
    args = cli_args(job)
    assert args.models_command == "retire"
    assert (args.name, args.version) == (MODEL, VERSION)
    assert args.pipelines_dir == Path(pipelines_dir)
    # The same ConfigMap at the same place as in the services that read pipelines.
    probe = f"{pipelines_dir}/{MODEL}.yaml"
    mount, volume = mounted_volume(job, job_container(job), probe)
    gateway = deployment(objs, "gateway")
    gw_mount, gw_volume = mounted_volume(gateway, service_container(objs, "gateway"), probe)
    assert mount == gw_mount and mount["readOnly"] is True
    assert volume == gw_volume
    assert by_name(objs, "ConfigMap", volume["configMap"]["name"])


def test_retire_uses_an_existing_pipelines_config_map() -> None:
    values = with_job({"pipelines": {"existingConfigMap": "live-pipelines"}}, action="retire")
    job = render_job(values)
    args = cli_args(job)
    _, volume = mounted_volume(job, job_container(job), f"{args.pipelines_dir}/x.yaml")
    assert volume["configMap"]["name"] == "live-pipelines"


@pytest.mark.parametrize("action", ACTIONS)
def test_mtls_job_dials_triton_with_the_services_certificate(action: str) -> None:
    objs = job_objects("mtls", action)
    values = merged_values("mtls")
    tls, admin = values["tls"], values["triton"]["adminKey"]
    job = the_job(objs)
    c = job_container(job)
    args = cli_args(job)
    # The services' Secret (Triton trusts only its CA), never the gateway's public one.
    for path, key in ((args.tls_ca, "caKey"), (args.tls_cert, "certKey"), (args.tls_key, "keyKey")):
        assert path == Path(tls["mountPath"]) / tls[key]
        mount, volume = mounted_volume(job, c, str(path))
        assert mount["readOnly"] is True
        assert volume["secret"]["secretName"] == tls["secretName"]
        assert volume["secret"]["secretName"] != tls["gateway"]["secretName"]
    triton_tls = next(
        v for v in pod_spec(deployment(objs, "triton"))["volumes"] if v["name"] == "tls"
    )
    assert triton_tls["secret"]["secretName"] == tls["secretName"]
    # Pods are dialled by IP: the name checked is the Triton peers Service's, which is among the
    # DNS names NOTES.txt asks the services' certificate to carry.
    server_name = args.tls_server_name
    peers = f"{component_name('triton')}-peers"
    assert server_name == f"{peers}.{NAMESPACE}.svc.{values['clusterDomain']}"
    service = by_name(objs, "Service", peers)
    assert pods_selected(objs, {"matchLabels": service["spec"]["selector"]}) == {"triton"}
    san_list = notes(with_job(scenario_values("mtls"), action=action))
    assert f"\n    - {server_name}\n" in san_list
    # The admin key: one file from the Secret Triton's restricted APIs compare against.
    mount, volume = mounted_volume(job, c, str(args.admin_key_file))
    assert mount["readOnly"] is True
    assert volume["secret"]["secretName"] == admin["secretName"]
    assert volume["secret"]["items"] == [{"key": admin["key"], "path": args.admin_key_file.name}]


def test_admin_key_without_tls() -> None:
    job = render_job(with_job({"triton": {"adminKey": {"secretName": "ak", "key": "token"}}}))
    args = cli_args(job)
    assert args.tls_ca is None and args.tls_server_name == ""
    _, volume = mounted_volume(job, job_container(job), str(args.admin_key_file))
    assert volume["secret"]["secretName"] == "ak"
    assert volume["secret"]["items"] == [{"key": "token", "path": args.admin_key_file.name}]
    assert "tls" not in {v["name"] for v in pod_spec(job)["volumes"]}


def test_plain_job_mounts_no_secret() -> None:
    job = the_job(job_objects("default"))
    assert {v["name"] for v in pod_spec(job)["volumes"]} == {"tmp", "pipelines"}
    assert not [a for a in job_container(job)["args"] if a.startswith("--tls") or "admin" in a]


# --- identity, image, and what the tool looks for -----------------------------------------------


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_job_runs_as_the_rollout_service_account(scenario: str) -> None:
    objs = job_objects(scenario)
    spec = pod_spec(the_job(objs))
    (binding,) = of_kind(objs, "RoleBinding")
    (subject,) = binding["subjects"]
    assert spec["serviceAccountName"] == subject["name"] == f"{FULLNAME}-{COMPONENT}"
    assert by_name(objs, "ServiceAccount", spec["serviceAccountName"])
    # The ServiceAccount does not automount; the Job's pods opt in (in-cluster configuration).
    assert spec["automountServiceAccountToken"] is True
    assert spec["restartPolicy"] == "Never"
    assert spec["enableServiceLinks"] is False


def test_job_follows_a_named_rollout_service_account() -> None:
    job = render_job(with_job({"rollout": {"serviceAccount": {"name": "fleet-operator"}}}))
    assert pod_spec(job)["serviceAccountName"] == "fleet-operator"


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_job_uses_the_services_image(scenario: str) -> None:
    objs = job_objects(scenario)
    job = the_job(objs)
    gateway = service_container(objs, "gateway")
    assert job_container(job)["image"] == gateway["image"]
    assert job_container(job)["imagePullPolicy"] == gateway["imagePullPolicy"]
    gateway_pod = pod_spec(deployment(objs, "gateway"))
    assert pod_spec(job).get("imagePullSecrets") == gateway_pod.get("imagePullSecrets")
    if merged_values(scenario)["requireImageDigests"]:
        assert "@sha256:" in job_container(job)["image"]


def test_the_tool_finds_the_charts_triton_pods() -> None:
    """What services/fleet/kube.py looks for, given --release, is what the chart renders."""
    objs = job_objects("default")
    assert pods_selected(objs, {"matchLabels": kube.pod_labels(RELEASE)}) == {"triton"}
    service = by_name(objs, "Service", kube.service_name(RELEASE))
    assert pods_selected(objs, {"matchLabels": service["spec"]["selector"]}) == {"triton"}
    triton = container(deployment(objs, "triton"), "triton")
    grpc = next(p for p in triton["ports"] if p["name"] == GRPC_PORT_NAME)
    assert grpc["containerPort"] == merged_values("default")["triton"]["ports"]["grpc"]
    assert "--model-control-mode=explicit" in triton["args"]


# --- network policies ---------------------------------------------------------------------------


def _policies(objs: list[Obj]) -> dict[str, Obj]:
    prefix = f"{FULLNAME}-"
    return {p["metadata"]["name"].removeprefix(prefix): p for p in of_kind(objs, "NetworkPolicy")}


def _ports(rule: Obj) -> set[int]:
    return {p["port"] for p in rule.get("ports", [])}


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_job_pods_carry_the_labels_the_network_policies_admit(scenario: str) -> None:
    objs = job_objects(scenario)
    job = the_job(objs)
    labels = job["spec"]["template"]["metadata"]["labels"]
    assert labels["app.kubernetes.io/name"] == "imaging-platform"
    assert labels["app.kubernetes.io/instance"] == RELEASE
    assert labels["app.kubernetes.io/component"] == COMPONENT
    assert job["metadata"]["labels"] == labels
    triton_ports = merged_values(scenario)["triton"]["ports"]
    policies = _policies(objs)
    selecting = {
        n for n, p in policies.items() if selector_matches(p["spec"]["podSelector"], labels)
    }
    assert selecting == {"default-deny", "allow-dns", COMPONENT}
    # Its own policy: no ingress, egress to Triton's gRPC port (and the API server).
    own = policies[COMPONENT]["spec"]
    assert own["ingress"] == []
    to_triton = [
        r
        for r in own["egress"]
        if any(
            "podSelector" in peer and "namespaceSelector" not in peer for peer in r.get("to", [])
        )
    ]
    (rule,) = to_triton
    assert triton_ports["grpc"] in _ports(rule)
    (peer,) = rule["to"]
    assert pods_selected(objs, peer["podSelector"]) == {"triton"}
    api_rules = merged_values(scenario)["networkPolicy"]["apiServerEgress"]
    assert all(r in own["egress"] for r in api_rules)
    # Triton's side: an ingress rule for these pods on the gRPC port.
    admitted = [
        r
        for r in policies["triton"]["spec"]["ingress"]
        if any(
            "podSelector" in p and selector_matches(p["podSelector"], labels)
            for p in r.get("from", [])
        )
    ]
    (triton_rule,) = admitted
    assert triton_ports["grpc"] in _ports(triton_rule)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_job_pods_join_no_service_or_budget(scenario: str) -> None:
    objs = job_objects(scenario)
    labels = the_job(objs)["spec"]["template"]["metadata"]["labels"]
    for svc in of_kind(objs, "Service"):
        assert not selector_matches({"matchLabels": svc["spec"]["selector"]}, labels)
    for kind in ("PodDisruptionBudget", "Deployment"):
        for obj in of_kind(objs, kind):
            assert not selector_matches(obj["spec"]["selector"], labels), obj["metadata"]["name"]


# --- Pod Security "restricted" ------------------------------------------------------------------

RESTRICTED_VOLUMES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}


def restricted_violations(spec: Obj) -> list[str]:
    """Violations of the Pod Security Standard "restricted" (Kubernetes 1.29+) by a pod spec."""
    found = []
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(field) is True:
            found.append(f"{field}: true")
    for volume in spec.get("volumes", []):
        kinds = set(volume) - {"name"}
        if not kinds <= RESTRICTED_VOLUMES:
            found.append(f"volume {volume['name']}: {sorted(kinds)}")
    pod_sc = spec.get("securityContext") or {}
    if pod_sc.get("runAsUser") == 0:
        found.append("pod runAsUser 0")
    if pod_sc.get("sysctls"):
        found.append("pod sysctls")
    pod_seccomp = (pod_sc.get("seccompProfile") or {}).get("type")
    if pod_seccomp not in (None, "RuntimeDefault", "Localhost"):
        found.append(f"pod seccomp {pod_seccomp}")
    every = [
        *spec.get("initContainers", []),
        *spec["containers"],
        *spec.get("ephemeralContainers", []),
    ]
    for c in every:
        sc = c.get("securityContext") or {}
        where = c["name"]
        if sc.get("privileged") is True:
            found.append(f"{where}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            found.append(f"{where}: allowPrivilegeEscalation not false")
        if sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is not True:
            found.append(f"{where}: runAsNonRoot not true")
        if sc.get("runAsUser") == 0:
            found.append(f"{where}: runAsUser 0")
        seccomp = (sc.get("seccompProfile") or {}).get("type", pod_seccomp)
        if seccomp not in ("RuntimeDefault", "Localhost"):
            found.append(f"{where}: seccomp {seccomp}")
        caps = sc.get("capabilities") or {}
        if "ALL" not in caps.get("drop", []):
            found.append(f"{where}: capabilities not dropping ALL")
        if set(caps.get("add", [])) - {"NET_BIND_SERVICE"}:
            found.append(f"{where}: adds {caps['add']}")
        if sc.get("procMount", "Default") != "Default":
            found.append(f"{where}: procMount")
        if any(p.get("hostPort") for p in c.get("ports", [])):
            found.append(f"{where}: hostPort")
    return found


def test_restricted_check_catches_violations() -> None:
    spec = pod_spec(the_job(job_objects("default")))
    assert restricted_violations(spec) == []
    bad = copy.deepcopy(spec)
    bad["volumes"].append({"name": "host", "hostPath": {"path": "/"}})
    bad["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = True
    bad["containers"][0]["securityContext"]["capabilities"] = {"add": ["SYS_ADMIN"]}
    assert len(restricted_violations(bad)) == 4


@pytest.mark.parametrize("action", ACTIONS)
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_job_pods_meet_pod_security_restricted(scenario: str, action: str) -> None:
    job = the_job(job_objects(scenario, action))
    assert restricted_violations(pod_spec(job)) == []
    sc = job_container(job)["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    # 10001 unless the scenario unsets it (OpenShift assigns UIDs per namespace).
    uid = merged_values(scenario)["containerSecurityContext"].get("runAsUser")
    assert sc.get("runAsUser") == uid == pod_spec(job)["securityContext"].get("runAsUser")
    assert uid in (10001, None)
    # Scratch space from an emptyDir, never the image.
    _, tmp = mounted_volume(job, job_container(job), "/tmp/x")
    assert "emptyDir" in tmp


# --- name, deadlines, clean-up ------------------------------------------------------------------


def test_job_name_holds_action_model_and_version() -> None:
    rollout = the_job(job_objects("default", "rollout"))["metadata"]["name"]
    retire = the_job(job_objects("default", "retire"))["metadata"]["name"]
    assert rollout == f"{FULLNAME}-rollout-cxr-pneumonia-v{VERSION}"
    assert retire == f"{FULLNAME}-retire-cxr-pneumonia-v{VERSION}"
    other = render_job(with_job(version=VERSION + 1))["metadata"]["name"]
    assert other != rollout and other.endswith(f"-v{VERSION + 1}")


@pytest.mark.parametrize(
    ("values", "model", "version"),
    [
        ({"fullnameOverride": "x" * 40}, "a_very_long_model_name.for_the_ensemble_" * 3, 987654),
        ({}, "CXR.Pneumonia__v2", 1),
        ({"fullnameOverride": "edge"}, "m" + "-" * 60, 7),
    ],
    ids=["long", "mixed case and dots", "dashes at the cut"],
)
def test_job_name_is_a_dns_label_that_keeps_the_version(
    values: dict[str, Any], model: str, version: int
) -> None:
    name = render_job(with_job(values, model=model, version=version))["metadata"]["name"]
    assert len(name) <= 63
    assert DNS_LABEL.match(name), name
    assert name.endswith(f"-v{version}")


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_deadline_covers_a_load_and_a_rollback_per_triton_pod(scenario: str) -> None:
    values = merged_values(scenario)
    triton = values["triton"]
    autoscaled = triton["autoscaling"]["hpa"]["enabled"] or triton["autoscaling"]["keda"]["enabled"]
    most = triton["autoscaling"]["maxReplicas"] if autoscaled else triton["replicas"]
    timeout = values["rollout"]["job"]["timeoutSeconds"]  # 900 in production, else 300
    spec = the_job(job_objects(scenario))["spec"]
    assert spec["activeDeadlineSeconds"] == 2 * timeout * most + 300
    assert spec["backoffLimit"] == 0
    assert "ttlSecondsAfterFinished" not in spec  # kept until the Job is turned off


def test_explicit_deadline_retries_and_ttl() -> None:
    spec = render_job(
        with_job(activeDeadlineSeconds=5000, backoffLimit=2, ttlSecondsAfterFinished=0)
    )["spec"]
    assert spec["activeDeadlineSeconds"] == 5000
    assert spec["backoffLimit"] == 2
    assert spec["ttlSecondsAfterFinished"] == 0
    assert (
        render_job(with_job(ttlSecondsAfterFinished=3600))["spec"]["ttlSecondsAfterFinished"]
        == 3600
    )


def test_notes_say_how_to_follow_the_job() -> None:
    values = with_job()
    name = render_job(values)["metadata"]["name"]
    text = notes(values)
    assert f"kubectl -n {NAMESPACE} wait --for=condition=complete --timeout=900s job/{name}" in text
    assert f"kubectl -n {NAMESPACE} logs job/{name}" in text
    assert "--set rollout.job.enabled=false" in text
    assert "job/" not in notes({})


def test_readme_job_names_are_what_the_chart_renders() -> None:
    """The chart README's examples (release and namespace imaging) name the Jobs it renders."""
    readme = (CHART_DIR / "README.md").read_text()
    documented = set(re.findall(r"job/(imaging-[a-z0-9-]+)", readme))
    rendered = set()
    with helm.Chart.load(CHART_DIR) as chart:
        for action, version in (("rollout", 3), ("retire", 1)):
            values = with_job(action=action, version=version)
            manifests = chart.render(values, name="imaging", namespace="imaging")
            rendered.add(the_job(parse_manifests(manifests))["metadata"]["name"])
    assert documented == rendered
