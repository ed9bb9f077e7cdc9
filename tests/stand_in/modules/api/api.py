"""Stand-in for modules/api/api.py @ A1111 v1.10.1 (82a973c).

Kept: script_name_to_index, api_middleware (its exception -> JSON handling), and from
class Api: get_selectable_script, get_script, get_scripts_list, get_script_info,
init_default_script_args, init_script_args, plus `script_args_for_request`, the
script-args part of text2imgapi/img2imgapi as a function (the rest of those endpoints
needs a model).
Api here can be built without a FastAPI app; with one, only the middleware is installed.
"""

import time
from types import SimpleNamespace

import gradio as gr
from fastapi import FastAPI, Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import HTTPException
from fastapi.responses import JSONResponse

from modules import errors, scripts
from modules.api import models


# mirrors modules/api/api.py @ v1.10.1 (82a973c): script_name_to_index(name, scripts) -> 422 if not found
def script_name_to_index(name, scripts):
    try:
        return [script.title().lower() for script in scripts].index(name.lower())
    except Exception as e:
        raise HTTPException(status_code=422, detail=f"Script '{name}' not found") from e


# mirrors modules/api/api.py @ v1.10.1 (82a973c): api_middleware(app) (rich-traceback branch and X-Process-Time
#   logging trimmed)
def api_middleware(app: FastAPI):
    @app.middleware("http")
    async def log_and_time(req: Request, call_next):
        ts = time.time()
        res: Response = await call_next(req)
        res.headers["X-Process-Time"] = str(round(time.time() - ts, 4))
        return res

    def handle_exception(request: Request, e: Exception):
        err = {
            "error": type(e).__name__,
            "detail": vars(e).get("detail", ""),
            "body": vars(e).get("body", ""),
            "errors": str(e),
        }
        if not isinstance(e, HTTPException):  # do not print backtrace on known httpexceptions
            message = f"API error: {request.method}: {request.url} {err}"
            errors.report(message, exc_info=True)
        return JSONResponse(status_code=vars(e).get("status_code", 500), content=jsonable_encoder(err))

    @app.middleware("http")
    async def exception_handling(request: Request, call_next):
        try:
            return await call_next(request)
        except Exception as e:
            return handle_exception(request, e)

    @app.exception_handler(Exception)
    async def fastapi_exception_handler(request: Request, e: Exception):
        return handle_exception(request, e)

    @app.exception_handler(HTTPException)
    async def http_exception_handler(request: Request, e: HTTPException):
        return handle_exception(request, e)


def SimpleRequest(*, script_name=None, script_args=None, alwayson_scripts=None, **kwargs):
    """Stand-in only: the request attributes init_script_args reads (upstream: a pydantic
    StableDiffusionTxt2ImgProcessingAPI with defaults script_name=None, script_args=[], alwayson_scripts={})."""
    return SimpleNamespace(
        script_name=script_name,
        script_args=[] if script_args is None else script_args,
        alwayson_scripts={} if alwayson_scripts is None else alwayson_scripts,
        **kwargs,
    )


# mirrors modules/api/api.py @ v1.10.1 (82a973c): class Api (script-args slice)
class Api:
    def __init__(self, app: FastAPI = None, queue_lock=None, *, txt2img_runner=None, img2img_runner=None):
        self.app = app
        self.queue_lock = queue_lock
        if app is not None:
            api_middleware(self.app)

        self.default_script_arg_txt2img = []
        self.default_script_arg_img2img = []

        # upstream: scripts.scripts_txt2img / scripts_img2img, after ui.create_ui() built their UIs
        self.txt2img_script_runner = txt2img_runner if txt2img_runner is not None else scripts.scripts_txt2img
        self.img2img_script_runner = img2img_runner if img2img_runner is not None else scripts.scripts_img2img

        if self.txt2img_script_runner.scripts:
            self.default_script_arg_txt2img = self.init_default_script_args(self.txt2img_script_runner)
        if self.img2img_script_runner.scripts:
            self.default_script_arg_img2img = self.init_default_script_args(self.img2img_script_runner)

    def get_selectable_script(self, script_name, script_runner):
        if script_name is None or script_name == "":
            return None, None

        script_idx = script_name_to_index(script_name, script_runner.selectable_scripts)
        script = script_runner.selectable_scripts[script_idx]
        return script, script_idx

    def get_scripts_list(self):
        t2ilist = [script.name for script in self.txt2img_script_runner.scripts if script.name is not None]
        i2ilist = [script.name for script in self.img2img_script_runner.scripts if script.name is not None]

        return models.ScriptsList(txt2img=t2ilist, img2img=i2ilist)

    def get_script_info(self):
        res = []

        for script_list in [self.txt2img_script_runner.scripts, self.img2img_script_runner.scripts]:
            res += [script.api_info for script in script_list if script.api_info is not None]

        return res

    # NB: returns the tuple (None, None) -- not None -- for an empty name (upstream quirk)
    def get_script(self, script_name, script_runner):
        if script_name is None or script_name == "":
            return None, None

        script_idx = script_name_to_index(script_name, script_runner.scripts)
        return script_runner.scripts[script_idx]

    # mirrors Api.init_default_script_args: ui() called a second time inside gr.Blocks(), .value of each control
    def init_default_script_args(self, script_runner):
        last_arg_index = 1
        for script in script_runner.scripts:
            if last_arg_index < script.args_to:
                last_arg_index = script.args_to
        script_args = [None] * last_arg_index
        script_args[0] = 0

        with gr.Blocks():  # will throw errors calling ui function without this
            for script in script_runner.scripts:
                if script.ui(script.is_img2img):
                    ui_default_values = []
                    for elem in script.ui(script.is_img2img):
                        ui_default_values.append(elem.value)
                    script_args[script.args_from : script.args_to] = ui_default_values
        return script_args

    # mirrors Api.init_script_args(self, request, default_script_args, selectable_scripts, selectable_idx,
    #   script_runner, *, input_script_args=None)
    def init_script_args(
        self, request, default_script_args, selectable_scripts, selectable_idx, script_runner, *, input_script_args=None
    ):
        script_args = default_script_args.copy()

        if input_script_args is not None:
            for index, value in input_script_args.items():
                script_args[index] = value

        if selectable_scripts:
            script_args[selectable_scripts.args_from : selectable_scripts.args_to] = request.script_args
            script_args[0] = selectable_idx + 1

        if request.alwayson_scripts:
            for alwayson_script_name in request.alwayson_scripts:
                alwayson_script = self.get_script(alwayson_script_name, script_runner)
                if alwayson_script is None:
                    raise HTTPException(status_code=422, detail=f"always on script {alwayson_script_name} not found")
                if alwayson_script.alwayson is False:
                    raise HTTPException(
                        status_code=422, detail="Cannot have a selectable script in the always on scripts params"
                    )
                if "args" in request.alwayson_scripts[alwayson_script_name]:
                    for idx in range(
                        0,
                        min(
                            (alwayson_script.args_to - alwayson_script.args_from),
                            len(request.alwayson_scripts[alwayson_script_name]["args"]),
                        ),
                    ):
                        script_args[alwayson_script.args_from + idx] = request.alwayson_scripts[alwayson_script_name][
                            "args"
                        ][idx]
        return script_args

    def script_args_for_request(self, request, *, is_img2img=False, infotext_script_args=None):
        """Stand-in only: the script-args steps of text2imgapi/img2imgapi, in upstream order
        (apply_infotext trimmed -> pass its `mentioned_script_args` as infotext_script_args).
        Returns what upstream assigns to p.script_args: a list when a selectable script runs, else a tuple."""
        script_runner = self.img2img_script_runner if is_img2img else self.txt2img_script_runner
        defaults = self.default_script_arg_img2img if is_img2img else self.default_script_arg_txt2img

        selectable_scripts, selectable_script_idx = self.get_selectable_script(request.script_name, script_runner)
        script_args = self.init_script_args(
            request,
            defaults,
            selectable_scripts,
            selectable_script_idx,
            script_runner,
            input_script_args=infotext_script_args or {},
        )

        if selectable_scripts is not None:
            return script_args
        return tuple(script_args)


# mirrors modules/api/api.py @ v1.10.1 (82a973c) :488-490 (text2imgapi's response; img2imgapi :559-565 the same):
# ``images`` = every picture of ``processed.images`` as base64, ``info`` = ``processed.js()``. Forge @ dfdcbab
# (:496-504) calls ``process_extra_images(processed)`` and returns ``processed.images + processed.extra_images``.
# Stand-in only as a function (upstream: inside the endpoint), returning the response's fields as a dict.
def images_response(processed, send_images=True, forge=False):
    import base64
    import io

    def encode_pil_to_base64(image):  # upstream :103-136, PNG branch
        with io.BytesIO() as output_bytes:
            image.save(output_bytes, format="PNG")
            return base64.b64encode(output_bytes.getvalue())

    pictures = processed.images + processed.extra_images if forge else processed.images
    b64images = list(map(encode_pil_to_base64, pictures)) if send_images else []
    return {"images": b64images, "info": processed.js()}
