"""ComfyUI adapters for mambast: node schemas, the model-folder registration and a status route.

Nothing here imports ComfyUI until ComfyUI calls :func:`comfy_entrypoint`, so the package can
be imported (and its logic tested) without ComfyUI.
"""

from __future__ import annotations

import logging

LOGGER = logging.getLogger("ComfyUI-MambaST")


async def comfy_entrypoint():
    """ComfyUI's V3 entry point: register the model folder and the status route, list the nodes."""
    from . import comfy as host
    from .examples import install_example_inputs
    from .schema import MambaSTExtension

    host.register_model_folder()
    install_example_inputs(host.input_directory())
    try:
        from . import routes

        routes.register()
    except Exception as error:  # an optional part: the nodes work without it
        LOGGER.warning("ComfyUI-MambaST: the /mambast/status route is unavailable (%s: %s); the nodes still work.",
                       type(error).__name__, error)
    return MambaSTExtension()
