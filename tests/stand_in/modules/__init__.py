"""Stand-in package for AUTOMATIC1111 stable-diffusion-webui `modules` @ v1.10.1 (82a973c).

Put tests/stand_in on sys.path; see tests/stand_in/README.md.

Upstream, modules/initialize.py:39 imports modules.gradio_extensons during start-up, before
any extension script is loaded, so its gradio patches (e.g. `tooltip=` accepted by every
component) are always active. Importing it here reproduces that for every test.
"""

from modules import gradio_extensons  # noqa: F401,E402
