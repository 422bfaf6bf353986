"""ComfyUI-MambaST: Mamba-ST style transfer (Botti et al., WACV 2025) as ComfyUI nodes.

ComfyUI imports this folder as a package: the nodes come from :func:`comfy_entrypoint`
(V3 schema), the frontend extension and help pages from ``WEB_DIRECTORY``.
"""

from .nodes import comfy_entrypoint

WEB_DIRECTORY = "./web"

__all__ = ["WEB_DIRECTORY", "comfy_entrypoint"]
