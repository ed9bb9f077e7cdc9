"""Run by the WebUI at start-up (``launch_utils.run_extensions_installers``) as ``python install.py``.

S-CFG needs nothing beyond what every A1111/Forge install already has (torch, gradio): this only checks,
through the WebUI's own ``launch.is_installed`` / ``launch.run_pip``, and installs nothing when they are
present. Idempotent and fast.
"""

import launch

# (import name, pip requirement): what the extension imports at run time
REQUIREMENTS = (("torch", "torch"), ("gradio", "gradio"))


def missing():
    return [(name, spec) for name, spec in REQUIREMENTS if not launch.is_installed(name)]


def main():
    for name, spec in missing():
        launch.run_pip(f"install {spec}", f"sd-webui-scfg requirement: {name}")


if __name__ == "__main__":
    main()
