"""The pack's routes: ``GET /mambast/status`` for the loader node's status line (see
``status.status_report``), and ``/mambast/download`` to fetch the released weights from the
Loader (see ``download``): nothing in a request chooses a source or a path."""

from __future__ import annotations

import asyncio


def register() -> None:
    """Add the routes to ComfyUI's server (needs ``server.PromptServer.instance``)."""
    from aiohttp import web
    from server import PromptServer

    from .download import EVENT, JOB
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

    JOB.send = lambda state: PromptServer.instance.send_sync(EVENT, state)

    @PromptServer.instance.routes.get("/mambast/download")
    async def mambast_download_state(request: web.Request) -> web.Response:
        return web.json_response(JOB.state)

    @PromptServer.instance.routes.post("/mambast/download")
    async def mambast_download(request: web.Request) -> web.Response:
        try:
            started = JOB.start()
        except ValueError as error:
            return web.json_response({"state": "failed", "message": str(error)}, status=400)
        if not started:
            return web.json_response({**JOB.state, "error": "a download is already running"}, status=409)
        return web.json_response(JOB.state)

    @PromptServer.instance.routes.post("/mambast/download/cancel")
    async def mambast_download_cancel(request: web.Request) -> web.Response:
        JOB.cancel()
        return web.json_response(JOB.state)
