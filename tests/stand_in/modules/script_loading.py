"""Stand-in for modules/script_loading.py @ A1111 v1.10.1 (82a973c)."""

import importlib.util
import os

loaded_scripts = {}


# mirrors modules/script_loading.py @ v1.10.1 (82a973c): load_module(path)
# module name = file basename ("scfg.py"), NOT inserted into sys.modules
def load_module(path):
    module_spec = importlib.util.spec_from_file_location(os.path.basename(path), path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)

    loaded_scripts[path] = module
    return module
