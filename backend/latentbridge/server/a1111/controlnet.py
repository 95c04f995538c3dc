"""sd-webui-controlnet's API on top of our ControlNet and reference images: the units of a
txt2img/img2img call (`ControlNetPlan`, built by translate.build_plan from controlnet_units), and
the extension's routes `/controlnet/version`, `/model_list`, `/module_list`, `/control_types`,
`/settings` and `/detect`.

Maps are made by the engine's preprocessors: model-free ones (canny, invert, ...) in a thread,
those that need the depth estimator on the GPU worker between jobs (`JobManager.run_exclusive`);
never on the event loop. docs/a1111.md lists the modules, fields and answers.
"""

from __future__ import annotations

import asyncio
import io
from dataclasses import dataclass, field
from typing import Any, Callable

from aiohttp import web
from PIL import Image
from pydantic import Field

from ..jsonio import json_response
from ...protocol import ControlType, InvalidRequest, LatentBridgeError, MAX_CONTROLS
from ..compat import while_connected
from ..security import list_controlnets
from .controlnet_units import (
    CONTROL_MODES,
    MODULES,
    SCRIPT,
    A1111Unit,
    UnitContext,
    at_resolution,
    available_modules,
    catalog,
    find_module,
    fit_map,
    pixel_perfect_resolution,
    read_units,
)
from .errors import A1111Error, a1111_route, parse_body, read_json
from .imaging import decode_b64_image, encode_result
from .options import effective
from .payloads import _Body
from .progress import _truthy
from .state import engine, jobs, settings

API_VERSION = 3  # what the extension's /controlnet/version answers today


def controlnet_key(alwayson_scripts: dict[str, Any]) -> str | None:
    """The key under which a payload's always-on scripts hold ControlNet (any case, as A1111 matches)."""
    return next((k for k in alwayson_scripts if isinstance(k, str) and k.lower() == SCRIPT), None)


async def unit_context(app: web.Application) -> UnitContext:
    """The models and modules units may name (off the event loop: it reads the ControlNet folders)."""
    cfg = settings(app)
    items = await asyncio.to_thread(list_controlnets, cfg)
    models = await asyncio.to_thread(catalog, items, list(cfg.controlnet_dirs), cfg.ip_adapter)
    caps = engine(app).control_capabilities()
    modules = available_modules(set(engine(app).preprocessor_names()), bool(caps.get("reference")))
    return UnitContext(models, modules, cfg.max_pixels)


@dataclass
class ControlNetPlan:
    """A call's enabled units as our request's `controls` / `reference` and their images by role."""

    units: list[A1111Unit]
    controls: list[dict[str, Any]] = field(default_factory=list)
    reference: dict[str, Any] | None = None
    images: dict[str, Image.Image] = field(default_factory=dict)
    maps: list[Image.Image] = field(default_factory=list)  # the detected maps the response returns
    _map_units: list[A1111Unit] = field(default_factory=list)  # controls[j]'s unit
    _reference_unit: A1111Unit | None = None

    @classmethod
    def build(cls, key: str, args: Any, ctx: UnitContext, init_image: Image.Image | None) -> "ControlNetPlan":
        """Blocking (decodes images)."""
        plan = cls(read_units(key, args, ctx, init_image))
        references = [u for u in plan.units if u.module.reference]
        for unit in plan.units:
            if unit.module.reference or unit.guidance_end <= unit.guidance_start:
                continue  # an empty guidance range applies to no step: the unit changes nothing
            plan._map_units.append(unit)
            plan.controls.append({"type": unit.type.value, "model": unit.model.name, "weight": unit.weight,
                                  "start": unit.guidance_start, "end": unit.guidance_end,
                                  "mode": CONTROL_MODES[unit.control_mode], "preprocessor": "none"})
        if references:
            plan._reference_unit = references[0]
            images = [image for unit in references for image in unit.images]
            if references[0].guidance_start > 0 or references[0].guidance_end < 1:
                raise InvalidRequest("IP-Adapter units apply to every step here (guidance_start 0, guidance_end 1)",
                                     field=f"{references[0].field}.guidance_start")
            plan.reference = {"images": len(images), "weight": references[0].weight, "model": references[0].model.name}
            plan.images.update({f"reference.{i}": image for i, image in enumerate(images)})
        return plan

    def infotext_fields(self) -> dict[str, str]:
        return {f"ControlNet {i}": unit.infotext() for i, unit in enumerate(self.units)}

    def rename(self, exc: LatentBridgeError) -> LatentBridgeError:
        """An error about our request's `controls.<j>` / `reference` → the unit's A1111 field."""
        name = exc.field or ""
        head, _, rest = name.partition(".")
        if head == "controls" and rest.split(".")[0].isdigit() and int(rest.split(".")[0]) < len(self._map_units):
            index, _, sub = rest.partition(".")
            exc.field = self._map_units[int(index)].field + (".model" if sub == "model" else "")
        elif head == "controls" and not rest and self.units:
            exc.field = self.units[0].field.rpartition(".")[0]  # about the units together: `...args`
        elif head == "reference" and self._reference_unit is not None:
            exc.field = self._reference_unit.field + (".model" if rest == "model" else "")
        return exc

    async def make_maps(self, request: web.Request, width: int, height: int, seed: int | None = None) -> None:
        """Each ControlNet unit's map at the output size, through the engine's preprocessors
        (`seed`: the call's, for the random modules)."""
        if not self._map_units:
            return
        app = request.app

        def work() -> list[Image.Image]:
            return [unit_map(engine(app).preprocess, unit, width, height, seed) for unit in self._map_units]

        if any(unit.module.needs_estimator for unit in self._map_units):
            maps = await while_connected(request, jobs(app).run_exclusive(work), lambda: None)
        else:
            maps = await asyncio.to_thread(work)
        self.images.update({f"control.{j}": image for j, image in enumerate(maps)})
        self.maps = [image for unit, image in zip(self._map_units, maps) if unit.save_detected_map]


def unit_map(preprocess: Callable[..., Image.Image], unit: A1111Unit, width: int, height: int,
             seed: int | None = None) -> Image.Image:
    """The extension's order: the input at the processor resolution (or pixel-perfect), the module,
    then the map (of any size: tile_resample shrinks it) fitted to the output size by the unit's
    resize mode. Blocking."""
    image = unit.images[0]
    if unit.module.resolution:
        resolution = pixel_perfect_resolution(image, width, height, unit.resize_mode) if unit.pixel_perfect \
            else unit.processor_res
        image = at_resolution(image, resolution)
    detected = preprocess(unit.module.preprocessor, image, unit.options(seed), field=f"{unit.field}.module",
                          options_field=f"{unit.field}.threshold_a")
    return fit_map(detected, width, height, unit.resize_mode, nearest=unit.type is ControlType.segmentation)


def png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG", compress_level=4)
    return out.getvalue()


# ---------------------------------------------------------------------------------------------
# Routes


@a1111_route
async def version(request: web.Request) -> web.Response:
    return json_response({"version": API_VERSION})


@a1111_route
async def model_list(request: web.Request) -> web.Response:
    ctx = await unit_context(request.app)  # `update` changes nothing: the folders are read afresh anyway
    return json_response({"model_list": [entry.title for entry in ctx.models]})


@a1111_route
async def module_list(request: web.Request) -> web.Response:
    alias = _truthy(request.query.get("alias_names", "false"))
    modules = (await unit_context(request.app)).modules
    names = [m.label if alias else m.name for m in modules]
    detail = {(m.label if alias else m.name): {"model_free": False, "sliders": [s.api_json() for s in m.sliders()]}
              for m in modules}
    return json_response({"module_list": names, "module_detail": detail})


@a1111_route
async def control_types(request: web.Request) -> web.Response:
    """Per control type (the extension's tags), the modules and models for it, and the defaults."""
    ctx = await unit_context(request.app)
    tags = sorted({tag for m in ctx.modules for tag in m.tags})
    controlnets = [e for e in ctx.models if not e.ip_adapter]
    body = {"All": {"module_list": [m.label for m in ctx.modules], "model_list": ["None"] + [e.title for e in ctx.models],
                    "default_option": "none", "default_model": "None"}}
    for tag in tags:
        modules = [m for m in ctx.modules if tag in m.tags or m.name == "none"]
        if tag == "IP-Adapter":
            models = [e.title for e in ctx.models if e.ip_adapter]
        else:
            # A ControlNet configured for this type, or one whose name does not tie it to another type.
            models = [e.title for e in controlnets if (e.type is None and _name_fits(e.name, tag))
                      or (e.type is not None and _TYPE_TAGS.get(e.type) == tag)]
        default_module = modules[1] if len(modules) > 1 else modules[0]
        body[tag] = {"module_list": [m.label for m in modules], "model_list": ["None"] + models,
                     "default_option": default_module.label, "default_model": models[0] if models else "None"}
    return json_response({"control_types": body})


_TYPE_TAGS = {"canny": "Canny", "depth": "Depth", "normal": "NormalMap", "lineart": "Lineart", "scribble": "Scribble",
              "tile": "Tile", "segmentation": "Segmentation"}
# The extension's model filters: a tag's words (and aliases) in a model's file name.
_TAG_HINTS = {"Canny": ("canny",), "Depth": ("depth",), "NormalMap": ("normal",), "Lineart": ("lineart",),
              "Scribble": ("scribble", "sketch"), "MLSD": ("mlsd",), "IP-Adapter": ("ip-adapter", "ip_adapter"),
              "Segmentation": ("seg",), "Tile": ("tile",), "Blur": ("blur",), "Recolor": ("recolor",), "Shuffle": ("shuffle",),
              "T2I-Adapter": ("t2i-adapter", "t2i_adapter", "t2iadapter", "t2ia")}


def _name_fits(name: str, tag: str) -> bool:
    """The extension's model filter (the tag's words in the name), plus models whose name names no
    control type at all (the built-in random ones, Union models), which take any map."""
    lowered = name.lower()
    every = [hint for hints in _TAG_HINTS.values() for hint in hints]
    return any(h in lowered for h in _TAG_HINTS.get(tag, ())) or "union" in lowered or not any(h in lowered for h in every)


@a1111_route
async def controlnet_settings(request: web.Request) -> web.Response:
    return json_response({"control_net_unit_count": MAX_CONTROLS})


class DetectPayload(_Body):
    controlnet_module: str = "none"
    controlnet_input_images: list[str] = Field(default_factory=list)
    controlnet_images: list[str] = Field(default_factory=list)  # what the `webuiapi` client sends
    controlnet_processor_res: float = -1
    controlnet_threshold_a: float = -1
    controlnet_threshold_b: float = -1
    controlnet_masks: list[str] = Field(default_factory=list)
    low_vram: bool = False


@a1111_route
async def detect(request: web.Request) -> web.Response:
    """The extension's /controlnet/detect: each image through the module at its processor
    resolution (short side), `{"images": [...], "info": "Success"}`."""
    app = request.app
    payload = parse_body(DetectPayload, await read_json(request))
    ctx = await unit_context(app)
    module = find_module(payload.controlnet_module)
    if module is None or module not in ctx.modules:
        raise A1111Error("Module not available", status=422, field="controlnet_module",
                         message=f"module {payload.controlnet_module!r} is not available here; GET "
                                 "/controlnet/module_list lists the ones this server runs")
    if module.reference:
        raise A1111Error("Module not supported", status=422, field="controlnet_module",
                         message="IP-Adapter modules encode images inside the generation; there is no map to detect")
    sources = payload.controlnet_input_images or payload.controlnet_images
    if not sources:
        raise A1111Error("No image selected", status=422, field="controlnet_input_images")
    if len(sources) > settings(app).max_queue:
        raise InvalidRequest(f"at most {settings(app).max_queue} images per call", field="controlnet_input_images")
    images = [await asyncio.to_thread(decode_b64_image, data, f"controlnet_input_images.{i}", ctx.max_pixels)
              for i, data in enumerate(sources)]
    resolution, threshold_a, threshold_b = module.bounded(payload.controlnet_processor_res, payload.controlnet_threshold_a,
                                                          payload.controlnet_threshold_b)
    options = module.options(threshold_a, threshold_b)  # no seed here: shuffle draws from its default, 0
    output = effective(app)

    def work() -> list[str]:
        out = []
        for image in images:
            source = image.convert("RGB")
            if module.resolution:
                source = at_resolution(source, resolution)
            detected = engine(app).preprocess(module.preprocessor, source, options, field="controlnet_module",
                                              options_field="controlnet_threshold_a")
            out.append(encode_result(png(detected), None, output))
        return out

    if module.needs_estimator:
        encoded = await while_connected(request, jobs(app).run_exclusive(work), lambda: None)
    else:
        encoded = await asyncio.to_thread(work)
    return json_response({"info": "Success", "images": encoded})


ROUTES = (
    ("GET", "/controlnet/version", version),
    ("GET", "/controlnet/model_list", model_list),
    ("GET", "/controlnet/module_list", module_list),
    ("GET", "/controlnet/control_types", control_types),
    ("GET", "/controlnet/settings", controlnet_settings),
    ("POST", "/controlnet/detect", detect),
)
__all__ = ["ControlNetPlan", "ROUTES", "MODULES", "controlnet_key", "unit_context", "png"]
