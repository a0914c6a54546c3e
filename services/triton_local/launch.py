"""The one recipe for running the bundled CPU tritonserver (PyPI nvidia-pytriton).

The local stack, the fleet tests' emulated pods and the load tests all start Triton through
:func:`start_tritonserver`: the python backend laid out beside a derived CPU repository, the
library path the binary links against, and the flags every local server shares.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Mapping, Sequence
from pathlib import Path

from services.triton_local.repository import derive_cpu_repository


class TritonLaunchError(RuntimeError):
    pass


def triton_paths() -> tuple[Path, Path, Path]:
    """tritonserver binary, its python backend folder, and the libraries it links against."""
    import pytriton

    package = Path(pytriton.__file__).parent
    server = package / "tritonserver"
    return server / "bin" / "tritonserver", server, package.parent / "nvidia_pytriton.libs"


def _backend_directory(run_dir: Path) -> Path:
    """The python backend (and the stub for this interpreter) as Triton expects to find it."""
    _, server, _ = triton_paths()
    backend = run_dir / "backends" / "python"
    backend.mkdir(parents=True, exist_ok=True)
    stub = server / "python_backend_stubs" / f"{sys.version_info.major}.{sys.version_info.minor}"
    for source in (
        server / "backends" / "python" / "libtriton_python.so",
        server / "backends" / "python" / "triton_python_backend_utils.py",
        stub / "triton_python_backend_stub",
    ):
        shutil.copy2(source, backend / source.name)
    return backend.parent


def _environment(extra: Mapping[str, str]) -> dict[str, str]:
    """This interpreter first on PATH (the backend stub runs it) and the bundled libraries."""
    _, _, libs = triton_paths()
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["LD_LIBRARY_PATH"] = os.pathsep.join(
        p for p in (str(libs), sysconfig.get_config_var("LIBDIR"), env.get("LD_LIBRARY_PATH")) if p
    )
    env.update(extra)
    return env


def connection_flags(
    max_age_seconds: float | None, grace_seconds: float, min_ping_interval_seconds: float
) -> list[str]:
    """Triton's gRPC connection policy, as the platform's own servers have it
    (services/common/server.py): connections end after ``max_age_seconds`` (in-flight calls get
    ``grace_seconds``) so that clients resolve the name again and reach pods added since; the
    gateway's keepalive pings, also between calls, are accepted this often. None: no age."""
    flags = [
        "--grpc-keepalive-permit-without-calls=true",
        "--grpc-http2-max-pings-without-data=0",
        f"--grpc-http2-min-recv-ping-interval-without-data={int(min_ping_interval_seconds * 1000)}",
        "--grpc-http2-max-ping-strikes=0",
    ]
    if max_age_seconds is not None:
        flags += [
            f"--grpc-max-connection-age={int(max_age_seconds * 1000)}",
            f"--grpc-max-connection-age-grace={int(grace_seconds * 1000)}",
        ]
    return flags


def start_tritonserver(
    run_dir: Path,
    model_repository: Path,
    flags: Sequence[str],
    log: Path,
    env: Mapping[str, str] | None = None,
) -> tuple[subprocess.Popen[bytes], Path]:
    """Spawn (without waiting) a tritonserver over the CPU twin of ``model_repository``.

    ``flags`` are the server's own (ports, model control, ...); the repository and backend
    flags are added here. Returns the process (in its own session, so a whole process group
    can be signalled) and the derived repository it serves.
    """
    binary, _, _ = triton_paths()
    repository = run_dir / "models"
    if not derive_cpu_repository(model_repository, repository):
        raise TritonLaunchError(f"no ONNX models in {model_repository}")
    argv = [
        str(binary),
        f"--model-repository={repository}",
        f"--backend-directory={_backend_directory(run_dir)}",
        "--strict-readiness=true",
        *flags,
    ]
    log.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    os.fchmod(descriptor, 0o600)  # its log is its user's alone, like the services'
    with os.fdopen(descriptor, "ab") as out:
        process = subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=_environment(env or {}),
            cwd=run_dir,
            start_new_session=True,
            # Its shared-memory regions (python backend, /dev/shm) are this user's alone.
            umask=0o077,
        )
    return process, repository
