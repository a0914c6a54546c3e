"""`imaging-platform`: run the local stack, analyze DICOM files, run the demo."""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import grpc
import pydicom
from google.protobuf.json_format import MessageToDict

from services.api.imaging.v1 import findings_pb2, gateway_pb2
from services.cli import chart
from services.cli.audit_verify import (
    EXIT_ERROR,
    EXIT_NO_RECORDS,
    EXIT_OK,
    EXIT_TAIL_UNVERIFIED,
    EXIT_TAMPERED,
    main_verify,
)
from services.cli.client import DOCUMENTS, GatewayClient, Study, find_studies
from services.cli.pacs import DemoPacs
from services.cli.pki import create_dev_pki
from services.cli.quicklook import caveat_text, status_name, write_quicklooks
from services.cli.samples import brain_series, pneumoniamnist_samples, write_samples
from services.cli.stack import REPO_ROOT, Ports, Stack, StackError
from services.cli.studies import (
    IngestClient,
    describe,
    describe_export,
    exports_table,
    state_name,
    table,
    write_documents,
)
from services.cli.usage import UsageError
from services.common.listeners import Service, loopback
from services.common.settings import DEFAULT_PIPELINES_DIR
from services.common.tls_files import TlsFiles
from services.fleet.core import DEFAULT_GRPC_PORT
from services.fleet.golden import DEFAULT_REPOSITORY
from services.fleet.rollout import DEFAULT_RELEASE, DEFAULT_TIMEOUT, rollout_command

# IMAGING_RUN_DIR: a second stack (or a test) without --run-dir on every command.
DEFAULT_RUN_DIR = Path(os.environ.get("IMAGING_RUN_DIR") or REPO_ROOT / ".run")
SAMPLE_DIR = REPO_ROOT.parent / "shared" / "data" / "dicom"
# Real frontal chest radiographs of the shared corpus: CR uncompressed, CR JPEG 2000 lossy,
# DX JPEG 2000 lossless; and a tibia CR that no pipeline accepts.
DEMO_CHEST = (
    "pydicom-data/RG1_UNCR.dcm",
    "pydicom-data/RG1_J2KI.dcm",
    "pylibjpeg-data/JPEG2000Lossless/966_fixed.dcm",
)
DEMO_REJECTED = "pydicom-data/RG3_UNCR.dcm"
PNEUMONIAMNIST = (
    REPO_ROOT.parent / "shared" / "data" / "medmnist" / "pneumoniamnist_28_reconstructed.npz"
)
# A pipeline that routing never picks: the demo names it in the request.
DEMO_NAMED = "cxr_pneumonia_ensemble"


def _verdict(finding: findings_pb2.Finding) -> str:
    """The status and why: the caveats of an INDETERMINATE finding, else the threshold."""
    status = status_name(finding)
    if status == "INDETERMINATE":
        return f"INDETERMINATE ({'; '.join(caveat_text(c) for c in finding.caveats)})"
    return f"{status} (p {'>=' if status == 'POSITIVE' else '<'} threshold)"


def _table(label: str, response: gateway_pb2.AnalyzeResponse) -> str:
    """A study's answer for a person: a line naming the study, pipeline, model and triage,
    then one indented line per finding, measurement, caveat, warning and document."""
    priority = findings_pb2.TriagePriority.Name(response.triage_priority)
    model = f"{response.model.name}/{response.model.version or 'latest'}"
    lines = [
        f"{label}  [pipeline {response.pipeline or '-'}, model {model}, "
        f"triage {priority.removeprefix('TRIAGE_PRIORITY_')}]"
    ]
    if response.HasField("refusal"):
        lines.append(f"  REFUSED ({response.refusal.kind}): {response.refusal.reason}")
    for f in response.findings:
        ood = f" ood={f.ood_score:.2f}/{f.ood_threshold:.2f}" if f.ood_threshold else ""
        lines.append(
            f"  {f.display_name:<20} p={f.probability:.4f} thr={f.threshold:.4f}{ood}  "
            f"{_verdict(f)}"
        )
    for m in response.measurements:
        lines.append(f"  {m.display_name:<20} {m.value:.1f} {m.unit}".rstrip())
    # Caveats a finding already showed are not repeated; a volume's (no finding) are here.
    shown = {(c.reason, c.detail) for f in response.findings for c in f.caveats}
    lines.extend(
        f"  caveat: {caveat_text(c)}" for c in response.caveats if (c.reason, c.detail) not in shown
    )
    lines.extend(f"  warning: {w}" for w in response.warnings)
    lines.extend(
        f"  output {o.kind}: {len(o.data):,} bytes {o.media_type} {o.sop_class_uid}".rstrip()
        for o in response.outputs
    )
    if response.timings:
        timings = " ".join(f"{t.stage}={t.milliseconds:.1f}ms" for t in response.timings)
        lines.append(f"  timings: {timings}")
    return "\n".join(lines)


def _routing(info: gateway_pb2.PipelineInfo) -> str:
    how = "" if info.auto_route else "; only when a request names it"
    use = info.intended_use
    intended = (
        f"; intended for {use.population} (outside it: {use.outside})"
        if info.HasField("intended_use")
        else ""
    )
    return f"accepts {info.accepts}{how}{intended}"


# Answers about the connection or the caller, not about one study: every study would get them.
_NOT_THIS_STUDY = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAUTHENTICATED)


def _analyze_files(
    client: GatewayClient,
    studies: Sequence[Study],
    pipeline: str,
    out: Path | None,
    documents: Sequence[str] = (),
    report_refusal: bool = False,
    quicklook: bool = True,
) -> int:
    """One Analyze per study, its table printed and, with ``out``, its outputs written: the
    number of studies that failed."""
    failures = 0
    stems: set[str] = set()
    for study in studies:
        label = study.label
        try:
            # Overlays (and masks, for the quick looks) are asked for only when written.
            response = client.analyze(
                [path.read_bytes() for path in study.files],
                pipeline=pipeline,
                heatmaps=out is not None,
                # A series may be a volume: its mask for the quick look (a 2-D pipeline would
                # warn that it has none, so a single file never asks).
                masks=out is not None and quicklook and len(study.files) > 1,
                documents=documents,
                report_refusal=report_refusal,
            )
        except grpc.RpcError as err:
            if err.code() in _NOT_THIS_STUDY:  # the gateway, not the study: say it once
                raise
            failures += 1
            print(f"{label}  {err.code().name}: {err.details()}")
            continue
        print(_table(label, response))
        if out is not None:
            # Two studies whose first files share a name (IM0001 in two folders) stay apart.
            stem, number = study.files[0].stem, 2
            while stem in stems:
                stem, number = f"{study.files[0].stem}-{number}", number + 1
            stems.add(stem)
            sources = study.files if quicklook else ()
            write_outputs(out, stem, response, sources)
    return failures


def write_outputs(
    out: Path,
    stem: str,
    response: gateway_pb2.AnalyzeResponse,
    sources: Sequence[Path | bytes] = (),
) -> list[Path]:
    """Findings as JSON, each heatmap as its own PNG (referenced from the JSON), and, when the
    study's ``sources`` are given, a quick-look PNG per heatmap and mask drawn over them."""
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    looks = write_quicklooks(out, stem, response, sources) if sources else {}
    written.extend(looks.values())
    record = gateway_pb2.AnalyzeResponse()
    record.CopyFrom(response)
    heatmaps: dict[int, str] = {}
    for index, finding in enumerate(record.findings):
        if finding.heatmap_png:
            png = out / f"{stem}.{index}.{finding.code}.heatmap.png"
            png.write_bytes(finding.heatmap_png)
            heatmaps[index] = png.name
            written.append(png)
            finding.ClearField("heatmap_png")
    for seg in record.segmentations:  # the mask's bytes are no JSON: its quick look shows it
        seg.mask.ClearField("data")
    files: list[str] = []
    for obj in record.outputs:
        suffix = ".json" if obj.media_type == "application/fhir+json" else ".dcm"
        target_file = out / f"{stem}.{obj.name or obj.kind}{suffix}"
        target_file.write_bytes(obj.data)
        written.append(target_file)
        files.append(target_file.name)
        obj.ClearField("data")
    document = MessageToDict(record)
    for index, name in heatmaps.items():
        document["findings"][index]["heatmapFile"] = name
    for key, path in looks.items():
        if isinstance(key, int):
            document["findings"][key]["quicklookFile"] = path.name
        else:
            labels = [seg.label for seg in record.segmentations]
            document["segmentations"][labels.index(key)]["quicklookFile"] = path.name
    for index, name in enumerate(files):
        document["outputs"][index]["file"] = name
    target = out / f"{stem}.findings.json"
    target.write_text(json.dumps(document, indent=2))
    return [target, *written]


def cmd_up(args: argparse.Namespace) -> int:
    stack = Stack(run_dir=args.run_dir, ingest=not args.no_ingest)
    stack.refuse_to_disturb()  # before the certificates below overwrite a running stack's
    client_files = None
    if args.tls:
        pki = create_dev_pki(args.run_dir / "tls")
        stack.use_dev_pki(pki)
        client_files = (pki.ca_cert, pki.client_cert, pki.client_key)
    stack.start()
    scheme = "grpcs" if stack.tls.serves_tls else "grpc"
    print(f"gateway        {scheme}://{stack.gateway_address}")
    inner = "grpcs" if stack.inner_tls.serves_tls else "grpc"  # the services' own CA
    for service in (Service.DECODER, Service.PREPROCESSOR, Service.POSTPROCESSOR):
        print(f"{service:<14} {inner}://127.0.0.1:{stack.ports.grpc(service)}")
    if stack.tls.serves_tls:  # mutual TLS with the services' internal certificate only
        print(f"tritonserver   grpcs://{stack.triton_grpc_address} (no HTTP)")
    else:
        print(
            f"tritonserver   grpc://{stack.triton_grpc_address} "
            f"http://127.0.0.1:{stack.ports.triton_http}"
        )
    if stack.ingest:
        dicom = "DICOM TLS" if stack.tls.serves_tls else "DICOM"
        callers = (
            "callers from IMAGING_DICOM_PEERS_FILE"
            if os.environ.get("IMAGING_DICOM_PEERS_FILE")
            else "loopback callers only"
        )
        print(f"ingest         {scheme}://{stack.ingest_address} (studies API)")
        print(f"{dicom:<14} AE IMAGING at 127.0.0.1:{stack.ports.dimse} ({callers})")
        print(f"nats-server    nats://127.0.0.1:{stack.ports.nats} (JetStream)")
    for name, port in stack.ports.metrics.items():
        if name == Service.INGEST and not stack.ingest:
            continue
        print(f"metrics        http://127.0.0.1:{port}/metrics ({name})")
    if client_files is not None:
        ca, cert, key = client_files
        print(f"throwaway CA   {ca}")
        print(f"client cert    --tls-ca {ca} --tls-cert {cert} --tls-key {key}")
    print(
        f"logs in {args.run_dir / 'logs'}; "
        f"stop with `imaging-platform --run-dir {args.run_dir} down`"
    )
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    if not (args.run_dir / "stack.json").exists():
        print(f"no stack recorded in {args.run_dir}")
        return 0
    Stack.from_state(args.run_dir).stop()  # every pid it recorded, a half-started stack too
    print("stack stopped")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    """What `up` started from this run dir, where, and whether each part answers: 0 when
    every part is up and serving, 1 otherwise."""
    if not (args.run_dir / "stack.json").exists():
        print(f"no stack recorded in {args.run_dir}")
        return 1
    stack = Stack.from_state(args.run_dir)
    alive = stack.running()
    rows = []
    for name, pid in stack.pids.items():
        if name == "tritonserver":
            address = stack.triton_grpc_address
            healthy = name in alive and stack.triton_ready()
        elif name == "nats-server":
            address = f"127.0.0.1:{stack.ports.nats}"
            healthy = name in alive
        else:
            address = f"127.0.0.1:{stack.ports.grpc(name)}"
            healthy = name in alive and stack.serving(name)
        state = "SERVING" if healthy else ("NOT_SERVING" if name in alive else "EXITED")
        rows.append((name, str(pid), address, state))
    print(f"{'PROCESS':<14} {'PID':<8} {'ADDRESS':<22} STATE")
    for row in rows:
        print(f"{row[0]:<14} {row[1]:<8} {row[2]:<22} {row[3]}")
    print(f"run dir {args.run_dir}; logs in {args.run_dir / 'logs'}")
    return 0 if rows and all(r[3] == "SERVING" for r in rows) else 1


def _client(args: argparse.Namespace) -> GatewayClient:
    files = TlsFiles(args.tls_cert, args.tls_key, args.tls_ca)
    try:
        files.check()
    except ValueError as err:  # half a TLS configuration, a file that is not there
        raise UsageError(str(err)) from None
    return GatewayClient(args.gateway, files=files, api_key=args.api_key)


def _ingest_client(args: argparse.Namespace) -> IngestClient:
    files = TlsFiles(args.tls_cert, args.tls_key, args.tls_ca)
    try:
        files.check()
    except ValueError as err:
        raise UsageError(str(err)) from None
    return IngestClient(args.ingest, files)


def cmd_studies(args: argparse.Namespace) -> int:
    client = _ingest_client(args)
    try:
        action = args.studies_command or "list"
        if action == "list":
            print(table(client.list(args.limit)))
        elif action == "show":
            study = client.show(args.uid, documents=True)
            print(describe(study))
            if args.out is not None:
                for path in write_documents(study, args.out):
                    print(f"wrote {path}")
        elif action == "close":
            study = client.close_study(args.uid)
            print(f"{study.study_instance_uid}: {state_name(study)} ({study.completion_reason})")
        elif action == "purge":
            purged = client.purge(args.uid)
            print(
                f"deleted {purged.instances_deleted} instances and {purged.results_deleted} results"
            )
    finally:
        client.close()
    return 0


def cmd_exports(args: argparse.Namespace) -> int:
    client = _ingest_client(args)
    try:
        action = args.exports_command or "list"
        if action == "list":
            print(exports_table(client.exports(args.destination, args.limit)))
        elif action == "show":
            print(describe_export(client.export(args.key)))
        elif action == "retry":
            print(describe_export(client.retry_export(args.key)))
        elif action == "drop":
            print(describe_export(client.drop_export(args.key)))
    finally:
        client.close()
    return 0


def _rpc_error(err: grpc.RpcError, gateway: str) -> str:
    """One line for a failed call to the gateway, with what the user can do about it."""
    code, details = err.code(), (err.details() or "").splitlines()[0][:300]
    if code == grpc.StatusCode.UNAVAILABLE:
        return (
            f"cannot reach the gateway at {gateway} ({details}): is the stack up "
            "(`imaging-platform status`)? A gateway serving TLS needs --tls-ca, --tls-cert "
            "and --tls-key"
        )
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return f"{details} (pass --api-key or set IMAGING_API_KEY)"
    return f"{code.name}: {details}"


def _study_files(paths: Sequence[Path]) -> None:
    """Every path an existing file or folder, checked before the first call: one line per
    mistake."""
    for path in paths:
        if not path.exists():
            raise UsageError(f"{path}: no such file or folder")
        if not (path.is_file() or path.is_dir()):
            raise UsageError(f"{path}: not a file or a folder")


def cmd_analyze(args: argparse.Namespace) -> int:
    documents = [d for d in args.documents.split(",") if d]
    unknown = sorted(set(documents) - set(DOCUMENTS))
    if unknown:
        raise UsageError(
            f"unknown document kind(s) {', '.join(unknown)}; choose from {', '.join(DOCUMENTS)}"
        )
    _study_files(args.paths)
    if args.out is not None and args.out.is_dir() and any(args.out.iterdir()) and not args.force:
        raise UsageError(f"{args.out} is not empty: name a new folder, or pass --force")
    scan = find_studies(args.paths, per_file=args.per_file)
    studies = scan.studies
    if args.one_study and studies:
        files = [path for study in studies for path in study.files]
        studies = [Study(files, series=sum(study.series for study in studies))]
    if not studies:
        raise UsageError(
            f"no DICOM image in {', '.join(str(p) for p in args.paths)} ({scan.skipped()})"
        )
    count = sum(len(study.files) for study in studies)
    print(
        f"{len(studies)} stud{'y' if len(studies) == 1 else 'ies'}, {count} file(s)"
        + (f"; {scan.skipped()}" if scan.skipped() else "")
    )
    client = _client(args)
    try:
        failed = _analyze_files(
            client,
            studies,
            args.pipeline,
            args.out,
            documents,
            args.report_refusal,
            quicklook=not args.no_quicklook,
        )
        return 1 if failed else 0
    finally:
        client.close()


# PneumoniaMNIST's labels as the demo's sample names end (services/cli/samples.py).
_LABEL_POSITIVE = {"pneumonia": True, "normal": False}


def _operating_rates(
    response: gateway_pb2.AnalyzeResponse, listed: Sequence[gateway_pb2.PipelineInfo]
) -> tuple[float, float, float | None] | None:
    """The model's test-split sensitivity and specificity at its operating threshold, and that
    threshold: from the card ListPipelines returned where it carries them, else from the
    model's metrics file in the repository (``metrics_v<N>.json`` or ``metrics.json``)."""
    for info in listed:
        if info.model.name == response.model.name and info.card.metrics:
            metrics = info.card.metrics
            keys = (
                "test_sensitivity_at_operating_threshold",
                "test_specificity_at_operating_threshold",
            )
            if all(k in metrics for k in keys):
                return metrics[keys[0]], metrics[keys[1]], metrics.get("operating_threshold")
    folder = DEFAULT_REPOSITORY / response.model.name
    version = response.model.version
    for path in (folder / f"metrics_v{version}.json", folder / "metrics.json"):
        if not path.is_file():
            continue
        metrics = json.loads(path.read_text())
        if str(metrics.get("version", version)) != version:
            continue  # another version's numbers
        rates = metrics.get("test_at_operating_threshold") or {}
        if "sensitivity" in rates and "specificity" in rates:
            threshold = metrics.get("operating_threshold")
            return (
                float(rates["sensitivity"]),
                float(rates["specificity"]),
                None if threshold is None else float(threshold),
            )
    return None


def _honesty(
    name: str, response: gateway_pb2.AnalyzeResponse, listed: Sequence[gateway_pb2.PipelineInfo]
) -> str:
    """For an in-population sample with a known label: whether the answer is a true or false
    positive or negative, and the card's rates that say how often each is to be expected."""
    truth = _LABEL_POSITIVE.get(name.rsplit("-", 1)[-1])
    rates = _operating_rates(response, listed)
    lines = []
    for finding in response.findings:
        status = status_name(finding)
        if truth is None:
            lines.append(f"  known label: none; {status} cannot be checked")
        elif status == "INDETERMINATE":
            lines.append(f"  known label {name.rsplit('-', 1)[-1]}: no decision to check")
        else:
            called = status == "POSITIVE"
            verdict = f"{'TRUE' if called == truth else 'FALSE'} {status}"
            lines.append(f"  known label {name.rsplit('-', 1)[-1]}: {verdict}")
        if rates is None:
            lines.append("  (the model card states no sensitivity/specificity to compare)")
            continue
        sensitivity, specificity, threshold = rates
        at = f"{threshold:.3f}" if threshold is not None else f"{finding.threshold:.3f}"
        lines.append(
            f"  model card, test split at threshold {at}: sensitivity {sensitivity:.1%}, "
            f"specificity {specificity:.1%}: about {1 - specificity:.0%} of negative cases are "
            f"called POSITIVE and {1 - sensitivity:.0%} of positive ones NEGATIVE"
        )
        if threshold is not None and abs(threshold - finding.threshold) > 1e-4:
            lines.append(
                f"  (the pipeline's threshold {finding.threshold:.3f} is not the card's: "
                "the rates above are for the card's)"
            )
    return "\n".join(lines)


def cmd_demo(args: argparse.Namespace) -> int:
    files = [SAMPLE_DIR / name for name in (*DEMO_CHEST, DEMO_REJECTED)]
    missing = [str(f) for f in (*files, PNEUMONIAMNIST) if not f.exists()]
    if missing:
        print(f"sample DICOM files not found: {missing}", file=sys.stderr)
        return 2
    # The DICOM ingest too, with a short quiet period so that the study sent below completes
    # on its own while the demo waits.
    # Results are delivered to a small DICOM receiver standing in for the PACS.
    pacs = DemoPacs(args.out / "dicom-in" / "pacs")
    pacs.start()
    demo_dir = args.run_dir / "demo"
    demo_dir.mkdir(parents=True, exist_ok=True)
    destinations = demo_dir / "destinations.yaml"
    destinations.write_text(pacs.destinations_yaml())
    stack = Stack(
        run_dir=demo_dir,
        ports=Ports.free(),
        ingest=True,
        extra_env={
            "IMAGING_QUIET_SECONDS": str(DEMO_QUIET_SECONDS),
            "IMAGING_DESTINATIONS_FILE": str(destinations),
        },
    )
    print("starting tritonserver, the four services, NATS and the DICOM ingest ...")
    started = time.perf_counter()
    stack.start()
    print(f"stack ready in {time.perf_counter() - started:.1f} s (gateway {stack.gateway_address})")
    client = GatewayClient(stack.gateway_address)
    try:
        listed = list(client.pipelines().pipelines)
        for info in listed:
            print(
                f"pipeline {info.name}: model {info.model.name}/{info.model.version}; "
                f"{_routing(info)}"
            )
        print()
        print("Adult radiographs (outside the chest models' intended use) and a tibia:")
        _analyze_files(client, [Study([f]) for f in files], "", args.out)
        print("\nChildren's chest radiographs from the PneumoniaMNIST test split (in population):")
        children = pneumoniamnist_samples(PNEUMONIAMNIST)
        for name, dicom in children:
            # With the documents a PACS and an EHR read (docs/conformance.md).
            response = client.analyze([dicom], heatmaps=True, documents=("sr", "heatmap", "fhir"))
            print(_table(name, response))
            print(_honesty(name, response, listed))
            write_outputs(args.out, name, response, [dicom])
        # An opt-in pipeline runs only when the request names it; this one refuses studies
        # outside its intended use instead of flagging them.
        print(f"\nNaming the opt-in pipeline {DEMO_NAMED} (it refuses outside its intended use):")
        name, dicom = children[-1]
        named = client.analyze([dicom], pipeline=DEMO_NAMED)
        print(_table(name, named))
        print(_honesty(name, named, listed))
        write_outputs(args.out, f"{name}.{DEMO_NAMED}", named, [dicom])
        try:
            client.analyze([files[0].read_bytes()], pipeline=DEMO_NAMED)
        except grpc.RpcError as err:
            print(f"{files[0].name:<48} {err.code().name}: {err.details()}")
        sample = files[0].read_bytes()
        size = f"{len(sample) / 1e6:.1f} MB"
        print(f"\nend-to-end latency for {files[0].name} ({size}), {args.repeat} calls:")
        for label, heatmaps in (("default options", False), ("with heatmaps", True)):
            latencies = []
            for _ in range(args.repeat):
                start = time.perf_counter()
                client.analyze([sample], heatmaps=heatmaps)
                latencies.append((time.perf_counter() - start) * 1e3)
            print(
                f"  {label:<16} median {statistics.median(latencies):.1f} ms, "
                f"min {min(latencies):.1f} ms, max {max(latencies):.1f} ms"
            )
        _demo_dicom_in(stack, args.out, pacs)
        print(f"findings written to {args.out}")
    finally:
        client.close()
        stack.stop()
        pacs.stop()
        print("stack stopped")
    return 0


DEMO_QUIET_SECONDS = 2.0


def _demo_dicom_in(stack: Stack, out: Path, pacs: DemoPacs) -> None:
    """A study arrives as a PACS sends it: the 64-slice brain MR series pushed with a DICOM
    C-STORE client (pynetdicom's storescu; dcmtk's `storescu` works the same), completed by
    the quiet period, analysed by the ingest's worker, read back with `studies show`."""
    series = out / "dicom-in" / "sent"
    series.mkdir(parents=True, exist_ok=True)
    for index, data in enumerate(brain_series()):
        (series / f"slice-{index:03d}.dcm").write_bytes(data)
    command = [
        sys.executable, "-m", "pynetdicom", "storescu", "-q", "-cx",
        "-aet", "DEMO_MODALITY", "-aec", "IMAGING", "127.0.0.1", str(stack.ports.dimse),
        str(series),
    ]  # fmt: skip
    print(
        "\nDICOM in: a 64-slice brain MR series sent as a PACS would send it\n"
        f"$ storescu -aet DEMO_MODALITY -aec IMAGING 127.0.0.1 {stack.ports.dimse} {series}/"
    )
    subprocess.run(command, check=True, timeout=120)
    study_uid = str(
        pydicom.dcmread(next(series.iterdir()), stop_before_pixels=True).StudyInstanceUID
    )
    ingest = IngestClient(stack.ingest_address, TlsFiles())
    try:
        deadline = time.monotonic() + 180
        study = ingest.show(study_uid)
        while state_name(study) in ("receiving", "complete", "queued", "analysing"):
            if time.monotonic() > deadline:
                raise StackError(f"the study sent over DICOM is still {state_name(study)}")
            time.sleep(0.25)
            study = ingest.show(study_uid)
        print(f"$ imaging-platform studies show {study_uid} --out {out / 'dicom-in'}")
        study = ingest.show(study_uid, documents=True)
        print(describe(study))
        for path in write_documents(study, out / "dicom-in"):
            print(f"wrote {path}")
        # Delivered by the ingest's exporter to the PACS its destinations file names.
        wanted = {
            d.sop_instance_uid for d in study.documents if d.media_type == "application/dicom"
        }
        while {p.stem for p in pacs.files()} < wanted:
            if time.monotonic() > deadline:
                raise StackError("the results did not reach the demo PACS")
            time.sleep(0.25)
        print("$ imaging-platform exports list")
        print(exports_table(ingest.exports()))
        for path in sorted(pacs.files()):
            kind = pydicom.dcmread(path, stop_before_pixels=True).SOPClassUID.name
            same = path.parent.name == study_uid
            print(f"PACS received  {kind} in {'the same' if same else 'another'} study: {path}")
    finally:
        ingest.close()


def cmd_pipelines(args: argparse.Namespace) -> int:
    client = _client(args)
    try:
        for info in client.pipelines().pipelines:
            print(
                f"{info.name}: {info.description} [model {info.model.name}/"
                f"{info.model.version}; {_routing(info)}]"
            )
    finally:
        client.close()
    return 0


def cmd_sample_data(args: argparse.Namespace) -> int:
    if not PNEUMONIAMNIST.is_file():
        raise UsageError(f"{PNEUMONIAMNIST} not found: shared data must sit beside the checkout")
    for folder, files in write_samples(args.out, PNEUMONIAMNIST).items():
        print(f"{args.out / folder}/  {len(files)} files")
    return 0


def cmd_chart_render(args: argparse.Namespace) -> int:
    sys.stdout.write(chart.render(args.values, args.name, args.namespace))
    return 0


def cmd_models_rollout(args: argparse.Namespace) -> int:
    retire = args.models_command == "retire"
    return rollout_command(
        args.name,
        version=args.version,
        retire=retire,
        pipelines_dir=args.pipelines_dir if retire else DEFAULT_PIPELINES_DIR,
        golden_repository=args.golden_dir if not retire else DEFAULT_REPOSITORY,
        namespace=args.namespace,
        release=args.release,
        timeout=args.timeout,
        grpc_port=args.grpc_port,
        context=args.context,
        files=TlsFiles(args.tls_cert, args.tls_key, args.tls_ca),
        admin_key=args.admin_key_file.read_text().strip() if args.admin_key_file else "",
        server_name=args.tls_server_name,
    )


def cmd_audit_verify(args: argparse.Namespace) -> int:
    return main_verify(
        str(args.file),
        str(args.key_file),
        list(args.expect),
        [str(path) for path in args.checkpoints],
    )


def _env_path(name: str) -> Path | None:
    value = os.environ.get(name, "")
    return Path(value) if value else None


def _connection_flags(command: argparse.ArgumentParser) -> None:
    """How a command reaches the gateway: address, mutual TLS, API key (env defaults)."""
    command.add_argument("--gateway", default=loopback(Service.GATEWAY))
    command.add_argument("--tls-ca", type=Path, default=_env_path("IMAGING_TLS_CA"))
    command.add_argument("--tls-cert", type=Path, default=_env_path("IMAGING_TLS_CERT"))
    command.add_argument("--tls-key", type=Path, default=_env_path("IMAGING_TLS_KEY"))
    command.add_argument(
        "--api-key", default=os.environ.get("IMAGING_API_KEY", ""), help="default: $IMAGING_API_KEY"
    )


def _ingest_flags(command: argparse.ArgumentParser) -> None:
    """How a command reaches the ingest's API: address and mutual TLS (env defaults)."""
    command.add_argument("--ingest", default=loopback(Service.INGEST), help="the ingest's API")
    command.add_argument("--tls-ca", type=Path, default=_env_path("IMAGING_TLS_CA"))
    command.add_argument("--tls-cert", type=Path, default=_env_path("IMAGING_TLS_CERT"))
    command.add_argument("--tls-key", type=Path, default=_env_path("IMAGING_TLS_KEY"))


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="imaging-platform", description=__doc__)
    root.add_argument(
        "--run-dir",
        type=Path,
        default=DEFAULT_RUN_DIR,
        help="where the local stack keeps logs, state and its Triton repository",
    )
    # --run-dir also after the subcommand (`imaging-platform down --run-dir X`); SUPPRESS
    # keeps the value given before it when it is not repeated.
    run_dir = argparse.ArgumentParser(add_help=False)
    run_dir.add_argument("--run-dir", type=Path, default=argparse.SUPPRESS, help="as above")
    sub = root.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", parents=[run_dir], help="start Triton and the four services")
    up.add_argument(
        "--tls", action="store_true", help="mutual TLS with a throwaway CA in the run dir"
    )
    up.add_argument(
        "--no-ingest", action="store_true", help="without the DICOM ingest and its NATS server"
    )
    up.set_defaults(func=cmd_up)
    sub.add_parser("down", parents=[run_dir], help="stop the stack started by `up`").set_defaults(
        func=cmd_down
    )
    sub.add_parser(
        "status", parents=[run_dir], help="what `up` started, where, and each part's health"
    ).set_defaults(func=cmd_status)
    analyze = sub.add_parser(
        "analyze",
        help="analyze DICOM files and folders, one request per study (Study Instance UID)",
        description="Folders are searched recursively; files in them that are not DICOM, or "
        "hold no pixel data, are skipped and counted. Files named are always sent.",
    )
    analyze.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="file or folder")
    analyze.add_argument("--pipeline", default="", help="pipeline name; default routes by tags")
    _connection_flags(analyze)
    analyze.add_argument(
        "--out",
        type=Path,
        default=None,
        help="write findings JSON, heatmaps and quick-look PNGs (result over the image) here",
    )
    analyze.add_argument(
        "--force", action="store_true", help="write into --out even when it holds files"
    )
    analyze.add_argument(
        "--documents",
        default="",
        help="comma-separated result documents to ask for and write: sr (DICOM SR TID 1500), "
        "seg (DICOM SEG), heatmap (DICOM Secondary Capture), fhir (FHIR R4 DiagnosticReport)",
    )
    analyze.add_argument(
        "--report-refusal",
        action="store_true",
        help="answer a refused study with the reason (and an SR/FHIR report) instead of an error",
    )
    grouping = analyze.add_mutually_exclusive_group()
    grouping.add_argument(
        "--one-study",
        action="store_true",
        help="send all files as one study, whatever their Study Instance UIDs",
    )
    grouping.add_argument(
        "--per-file", action="store_true", help="send each file as a study of its own"
    )
    analyze.add_argument(
        "--no-quicklook",
        action="store_true",
        help="with --out: no quick-look PNGs (and no masks asked for them)",
    )
    analyze.set_defaults(func=cmd_analyze)
    demo = sub.add_parser("demo", help="start the stack, analyze sample chest X-rays, stop")
    demo.add_argument("--out", type=Path, default=REPO_ROOT / "demo-output")
    demo.add_argument("--repeat", type=int, default=20, help="calls for the latency median")
    demo.set_defaults(func=cmd_demo)
    studies = sub.add_parser(
        "studies", help="studies received over DICOM: list, show UID [--out DIR], close, purge"
    )
    _ingest_flags(studies)
    studies_sub = studies.add_subparsers(dest="studies_command")
    listing = studies_sub.add_parser("list", help="newest first")
    listing.add_argument("--limit", type=int, default=100)
    studies.set_defaults(func=cmd_studies, limit=100)
    show = studies_sub.add_parser("show", help="state, what was not analysed and why")
    show.add_argument("uid", metavar="STUDY_UID")
    show.add_argument("--out", type=Path, default=None, help="write the result documents here")
    studies_sub.add_parser("close", help="complete a receiving study now").add_argument(
        "uid", metavar="STUDY_UID"
    )
    studies_sub.add_parser("purge", help="delete its instances, state and results").add_argument(
        "uid", metavar="STUDY_UID"
    )
    exports = sub.add_parser(
        "exports", help="results delivered to destinations: list, show KEY, retry KEY, drop KEY"
    )
    _ingest_flags(exports)
    exports_sub = exports.add_subparsers(dest="exports_command")
    listed_exports = exports_sub.add_parser("list", help="newest change first")
    listed_exports.add_argument("--destination", default="")
    listed_exports.add_argument("--limit", type=int, default=100)
    exports.set_defaults(func=cmd_exports, destination="", limit=100)
    for verb, text in (
        ("show", "one export: state, attempts, the last failure or the receipt"),
        ("retry", "queue a dead-lettered or dropped export again"),
        ("drop", "give up an export not yet delivered"),
    ):
        exports_sub.add_parser(verb, help=text).add_argument("key", metavar="KEY")
    pipelines = sub.add_parser("pipelines", help="list the gateway's pipelines")
    _connection_flags(pipelines)
    pipelines.set_defaults(func=cmd_pipelines)
    samples = sub.add_parser(
        "sample-data", help="write sample studies to try: two children's chest X-rays, a brain MR"
    )
    samples.add_argument("--out", type=Path, required=True, help="folder to write them into")
    samples.set_defaults(func=cmd_sample_data)
    chart_command = sub.add_parser("chart", help="the Helm chart without a helm binary")
    chart_sub = chart_command.add_subparsers(dest="chart_command", required=True)
    template = chart_sub.add_parser(
        "render", help="print the manifests `helm template` would (Helm's engine, in-process)"
    )
    template.add_argument(
        "-f", "--values", type=Path, action="append", default=[], help="values file (repeatable)"
    )
    template.add_argument("--name", default="imaging", help="release name")
    template.add_argument("--namespace", default="imaging", help="release namespace")
    template.set_defaults(func=cmd_chart_render)
    audit = sub.add_parser("audit", help="the gateway's audit trail")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True)
    verify = audit_sub.add_parser(
        "verify",
        help="check an audit log's HMAC chain and, against anchors kept outside it, its tail",
        description="Check every record's HMAC chain. The file alone cannot show records cut "
        "off its end, an earlier copy put back, an emptied file or a deleted chain: only "
        "--checkpoints or --expect can, and without one a chain's tail is reported unverified.",
        epilog=f"exit codes: {EXIT_OK} every chain intact and its tail anchored; "
        f"{EXIT_TAMPERED} tampered (problems printed); {EXIT_ERROR} could not check; "
        f"{EXIT_TAIL_UNVERIFIED} intact but some chain's tail not anchored; "
        f"{EXIT_NO_RECORDS} no audit record in the file",
    )
    verify.add_argument("file", type=Path)
    verify.add_argument("--key-file", type=Path, required=True, help="IMAGING_AUDIT_KEY_FILE")
    verify.add_argument(
        "--expect",
        action="append",
        default=[],
        metavar="CHAIN=SEQ",
        help="last sequence number a writer reported (imaging_audit_last_sequence): "
        "catches truncation",
    )
    verify.add_argument(
        "--checkpoints",
        action="append",
        type=Path,
        default=[],
        metavar="LOGFILE",
        help="gateway log holding 'audit checkpoint chain=... seq=... mac=... cmac=...' lines "
        "(repeatable): catches truncation, rollback, deleted chains and rewritten tails",
    )
    verify.set_defaults(func=cmd_audit_verify)
    models = sub.add_parser("models", help="manage models on the Triton pods of a release")
    models_sub = models.add_subparsers(dest="models_command", required=True)
    rollout = models_sub.add_parser(
        "rollout",
        help="load a model (version) on every ready Triton pod; roll back everywhere on failure",
    )
    retire = models_sub.add_parser(
        "retire",
        help="stop serving one version on every ready Triton pod (refused while a pipeline "
        "pins it); roll back everywhere on failure",
    )
    retire.add_argument("name", help="model name in the Triton repository")
    retire.add_argument("version", type=int, help="the version to stop serving")
    retire.add_argument(
        "--pipelines-dir",
        type=Path,
        default=_env_path("IMAGING_PIPELINES_DIR") or DEFAULT_PIPELINES_DIR,
        help="the live pipelines configuration (IMAGING_PIPELINES_DIR)",
    )
    rollout.add_argument("name", help="model name in the Triton repository")
    rollout.add_argument(
        "--version", type=int, default=None, help="serve this version beside those served"
    )
    rollout.add_argument(
        "--golden-dir",
        type=Path,
        default=DEFAULT_REPOSITORY,
        help="model repository holding <model>/golden.json (the version's golden answer)",
    )
    for command in (rollout, retire):
        _fleet_options(command)
    rollout.set_defaults(func=cmd_models_rollout)
    retire.set_defaults(func=cmd_models_rollout)
    return root


def _fleet_options(command: argparse.ArgumentParser) -> None:
    """Where the Triton pods are and how to reach them (models rollout and retire)."""
    command.add_argument("--namespace", default=None, help="default: the kubeconfig context's")
    command.add_argument("--release", default=DEFAULT_RELEASE, help="Helm release name")
    command.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        help="seconds each pod may take to load and be READY",
    )
    command.add_argument(
        "--grpc-port",
        type=int,
        default=DEFAULT_GRPC_PORT,
        help="Triton gRPC port of pods without a containerPort named grpc",
    )
    command.add_argument("--context", default=None, help="kubeconfig context")
    command.add_argument("--tls-ca", type=Path, default=_env_path("IMAGING_TLS_CA"))
    command.add_argument("--tls-cert", type=Path, default=_env_path("IMAGING_TLS_CERT"))
    command.add_argument("--tls-key", type=Path, default=_env_path("IMAGING_TLS_KEY"))
    command.add_argument(
        "--admin-key-file", type=Path, default=None, help="Triton's model-control admin key"
    )
    command.add_argument(
        "--tls-server-name",
        default="",
        help="name in Triton's certificate (pods are dialled by IP), e.g. its Service's DNS name",
    )


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING)
    args = parser().parse_args(argv)
    # Absolute from here on: Triton and the services run from other working directories, and
    # `down` may be typed from another folder than `up`.
    args.run_dir = args.run_dir.resolve()
    # The one seam where a user's mistakes become a line on stderr instead of a traceback.
    try:
        return int(args.func(args))
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except StackError as err:  # the stack's own refusals and start-up failures
        print(f"error: {err}", file=sys.stderr)
        return 1
    except grpc.RpcError as err:
        where = getattr(args, "gateway", "") or getattr(args, "ingest", "")
        print(f"error: {_rpc_error(err, where)}", file=sys.stderr)
        return 1
    except OSError as err:  # a file named on the command line: missing, a folder, unreadable
        where = f"{err.filename}: " if err.filename else ""
        print(f"error: {where}{err.strerror or err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
