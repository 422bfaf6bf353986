"""``GET /mambast/status``: the loader node's status line (see ``status.status_report``)."""

from __future__ import annotations

import asyncio


def register() -> None:
    """Add the route to ComfyUI's server (needs ``server.PromptServer.instance``)."""
    from aiohttp import web
    from server import PromptServer

    from .status import status_report

    @PromptServer.instance.routes.get("/mambast/status")
    async def mambast_status(request: web.Request) -> web.Response:
        checkpoint = request.query.get("checkpoint") or None
        scan = request.query.get("scan", "auto")
        dtype = request.query.get("dtype", "auto")
        # Reading weights (or, on a CPU with native bfloat16, measuring it once) takes a moment:
        # keep the server's event loop free meanwhile.
        report = await asyncio.get_running_loop().run_in_executor(None, status_report, checkpoint, scan, dtype)
        return web.json_response(report)
