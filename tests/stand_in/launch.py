"""Stand-in for launch.py -> modules/launch_utils.py @ A1111 v1.10.1 (82a973c): the two names an extension's
install.py uses. ``is_installed`` is upstream's logic; ``run_pip`` keeps the signature and the skip_install
check, and records the pip command line instead of running pip (``calls``), printing what upstream's
``run(..., desc=f"Installing {desc}")`` would print."""

import importlib.metadata
import importlib.util
import types

args = types.SimpleNamespace(skip_install=False)
calls = []


# mirrors modules/launch_utils.py @ v1.10.1: is_installed(package)
def is_installed(package):
    try:
        dist = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        try:
            spec = importlib.util.find_spec(package)
        except ModuleNotFoundError:
            return False

        return spec is not None

    return dist is not None


# mirrors modules/launch_utils.py @ v1.10.1: run_pip(command, desc=None, live=...)
def run_pip(command, desc=None, live=False):
    if args.skip_install:
        return
    calls.append(f"-m pip {command} --prefer-binary")
    print(f"Installing {desc}")
