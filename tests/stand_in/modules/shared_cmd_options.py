"""Stand-in for modules/shared_cmd_options.py @ A1111 v1.10.1 (82a973c).

Upstream parses the real command line with the parser from modules/cmd_args.py; the
stand-in is a plain Namespace holding the defaults of the flags that code on our
paths reads (options.py, infotext_utils.connect_paste, api.py, sd_hijack_optimizations).
"""

import argparse

# mirrors modules/shared_cmd_options.py @ v1.10.1 (82a973c): cmd_opts (defaults from modules/cmd_args.py)
cmd_opts = argparse.Namespace(
    api=False,
    nowebui=False,
    api_auth=None,
    api_log=False,
    hide_ui_dir_config=False,
    no_prompt_history=False,
    freeze_settings=False,
    freeze_settings_in_sections=None,
    freeze_specific_settings=None,
    xformers=False,
    force_enable_xformers=False,
    opt_sdp_attention=False,
    opt_sdp_no_mem_attention=False,
    opt_split_attention=False,
    opt_sub_quad_attention=False,
    disable_opt_split_attention=False,
    skip_load_model_at_start=False,
    ui_debug_mode=False,
    lowvram=False,
    medvram=False,
)
