"""install.py follows the WebUI contract: run as `python install.py` with the WebUI root on PYTHONPATH."""

import importlib.util
import os
import subprocess
import sys

from webui_harness import ROOT, STAND_IN


def test_installs_nothing_the_webui_already_has():
    env = dict(os.environ, PYTHONPATH=str(STAND_IN))  # launch_utils.run_extension_installer sets the webui root
    result = subprocess.run([sys.executable, str(ROOT / "install.py")], env=env, capture_output=True, text=True,
                            cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""  # twice: idempotent, still nothing to do
    assert subprocess.run([sys.executable, str(ROOT / "install.py")], env=env, capture_output=True, text=True,
                          cwd=ROOT, timeout=120).stdout.strip() == ""


def test_missing_requirement_goes_through_run_pip(monkeypatch):
    monkeypatch.syspath_prepend(str(STAND_IN))
    import launch

    spec = importlib.util.spec_from_file_location("scfg_install", ROOT / "install.py")
    install = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(install)
    launch.calls.clear()
    install.main()
    assert launch.calls == []
    monkeypatch.setattr(install, "REQUIREMENTS", (("torch", "torch"), ("no_such_module_xyz", "no-such-pkg==1.0")))
    install.main()
    assert launch.calls == ["-m pip install no-such-pkg==1.0 --prefer-binary"]
