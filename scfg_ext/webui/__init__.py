"""WebUI integration. ``host`` is the only module that imports the WebUI's ``modules.*``; ``controls``,
``infotext``, ``xyz`` and ``api`` are shared by every backend; ``a1111`` is the AUTOMATIC1111 glue."""
