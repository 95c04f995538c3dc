"""sd-webui-controlnet's units (`alwayson_scripts.controlnet.args`) → our request's `controls` and
`reference`, with the extension's field set, names and defaults.

A unit is a dict (the extension's `ControlNetUnit` fields, its aliases `input_image`, `lowvram`,
`guidance`, `mask_image`, `guessmode` included) or, in the flat form of 2023's extension, 15
positional values starting with `enabled` (two layouts, told apart by the type of the sixth value).
Disabled units are left out, as the extension leaves them out. The module (preprocessor) runs here
through the engine's own preprocessors (`controlnet.make_maps`), at `processor_res` (or the
pixel-perfect resolution), and the map is fitted to the output size with the unit's resize mode; the
engine then gets a ready map (`preprocessor: none`), so the map is stored with the job and returned
as the extension returns its detected maps. `ip-adapter_*` modules become the request's reference
images. What the extension would accept but this server cannot do is refused with a typed 422
naming the unit's field, never left out silently.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, ImageOps

from ... import images as image_utils
from ...model_hash import legacy_short_hash, name_hash
from ...protocol import BUILTIN_IP_ADAPTERS, MAX_CONTROLS, MAX_REFERENCES, ControlType, ErrorCode, InvalidRequest, Unsupported
from .errors import A1111Error
from .imaging import decode_b64_image

SCRIPT = "controlnet"  # the extension's script name (A1111 matches it case-insensitively)


@dataclass(frozen=True)
class Slider:
    """One of a module's sliders, as the extension describes it (`module_detail`)."""

    label: str
    minimum: float
    maximum: float
    value: float
    step: float = 1.0
    option: str | None = None  # the option of our preprocessor it sets

    def bound(self, value: float) -> float:
        """The extension's bound check: a value outside the slider's range means its default."""
        return value if self.minimum <= value <= self.maximum else self.value

    def api_json(self) -> dict[str, Any]:
        return {"name": self.label, "value": self.value, "min": self.minimum, "max": self.maximum, "step": self.step}


RESOLUTION = Slider("Resolution", 64, 2048, 512, 8)
HIDDEN = Slider("", 0.0, 1.0, 0.5, 0.01)  # the extension's invisible slider: what an unused threshold becomes


@dataclass(frozen=True)
class Module:
    name: str  # the extension's module name; `label` its UI name (`alias_names`); both are accepted
    label: str
    preprocessor: str | None  # ours; None: an IP-Adapter module (the unit becomes reference images)
    type: ControlType | None  # None: told by the model's name
    tags: tuple[str, ...]
    resolution: bool = True  # runs at processor_res
    slider_1: Slider | None = None
    slider_2: Slider | None = None
    estimator: str | None = None  # the serve flag of the estimator its preprocessor runs
    seeded: bool = False  # random (shuffle): the map is drawn from the call's seed

    @property
    def reference(self) -> bool:
        return self.preprocessor is None

    @property
    def needs_estimator(self) -> bool:  # its map is made on the engine's worker thread
        return self.estimator is not None

    def sliders(self) -> list[Slider]:
        """The visible ones, as `module_detail` lists them."""
        return [s for s in (RESOLUTION if self.resolution else None, self.slider_1, self.slider_2) if s is not None]

    def options(self, threshold_a: float, threshold_b: float) -> dict[str, float]:
        """Our preprocessor's options from the two thresholds (canny's may come in either order, as
        OpenCV takes them)."""
        values = {s.option: v for s, v in ((self.slider_1, threshold_a), (self.slider_2, threshold_b)) if s and s.option}
        if "low" in values and "high" in values:
            values["low"], values["high"] = sorted((int(values["low"]), int(values["high"])))
        if "threshold" in values:
            values["threshold"] = int(values["threshold"])
        return values

    def unit_options(self, threshold_a: float, threshold_b: float, seed: int | None) -> dict[str, float]:
        """`options` plus the seed a seeded module draws from (none: its default, 0)."""
        values = self.options(threshold_a, threshold_b)
        if self.seeded and seed is not None:
            values["seed"] = seed
        return values

    def bounded(self, processor_res: float, threshold_a: float, threshold_b: float) -> tuple[int, float, float]:
        """The extension's bound check of a unit's three slider values (out of range: the default)."""
        return (int((RESOLUTION if self.resolution else HIDDEN).bound(processor_res)),
                (self.slider_1 or HIDDEN).bound(threshold_a), (self.slider_2 or HIDDEN).bound(threshold_b))


def _depth(name: str, label: str | None = None) -> Module:
    return Module(name, label or name, "depth", ControlType.depth, ("Depth",), estimator="--depth-estimator")


def _segmentation(name: str, resolution: bool) -> Module:
    return Module(name, name, "segmentation", ControlType.segmentation, ("Segmentation",), resolution=resolution,
                  estimator="--segmentation-estimator")


def _ip_adapter(name: str, label: str | None = None) -> Module:
    return Module(name, label or name, None, None, ("IP-Adapter",), resolution=False)


# The extension's modules this server runs (the extension's order: none first).
MODULES: tuple[Module, ...] = (
    Module("none", "none", "none", None, (), resolution=False),
    Module("canny", "canny", "canny", ControlType.canny, ("Canny",),
           slider_1=Slider("Low Threshold", 1, 255, 100, option="low"),
           slider_2=Slider("High Threshold", 1, 255, 200, option="high")),
    Module("invert", "invert (from white bg & black line)", "invert", None, ("Canny", "Lineart", "Scribble", "MLSD"),
           resolution=False),
    Module("lineart_standard", "lineart_standard (from white bg & black line)", "lineart_standard",
           ControlType.lineart, ("Lineart",)),
    Module("scribble_xdog", "scribble_xdog", "scribble_xdog", ControlType.scribble, ("Scribble",),
           slider_1=Slider("XDoG Threshold", 1, 64, 32, option="threshold")),
    # Every depth module runs the server's depth estimator (--depth-estimator): near white, far black.
    _depth("depth", "depth_midas"), _depth("depth_anything"), _depth("depth_anything_v2"), _depth("depth_zoe"),
    Module("normal_map", "normal_midas", "normal", ControlType.normal, ("NormalMap",), estimator="--depth-estimator",
           slider_1=Slider("Normal Background Threshold", 0.0, 1.0, 0.4, 0.01, option="background_threshold")),
    # Both ADE20K modules run the server's segmentation estimator (--segmentation-estimator).
    _segmentation("seg_ofade20k", resolution=False), _segmentation("seg_ufade20k", resolution=True),
    # The model-free filters (the extension's legacy preprocessor table: names, labels, sliders, tags).
    Module("tile_resample", "tile_resample", "tile_resample", ControlType.tile, ("Tile", "Blur"), resolution=False,
           slider_1=Slider("Down Sampling Rate", 1.0, 8.0, 1.0, 0.01, option="down_sampling_rate")),
    Module("blur_gaussian", "blur_gaussian", "blur_gaussian", ControlType.tile, ("Tile", "Blur"),
           slider_1=Slider("Sigma", 0.01, 64.0, 9.0, 0.01, option="sigma")),
    Module("threshold", "threshold", "threshold", None, (),
           slider_1=Slider("Binarization Threshold", 0, 255, 127, option="threshold")),
    Module("binary", "binary", "binary", None, (), slider_1=Slider("Binary threshold", 0, 255, 0, option="threshold")),
    Module("color", "t2ia_color_grid", "color_grid", None, ("T2I-Adapter",)),
    Module("shuffle", "shuffle", "shuffle", None, ("Shuffle",), resolution=False, seeded=True),
    Module("recolor_luminance", "recolor_luminance", "recolor_luminance", None, ("Recolor",), resolution=False,
           slider_1=Slider("Gamma Correction", 0.1, 2.0, 1.0, 0.001, option="gamma")),
    Module("recolor_intensity", "recolor_intensity", "recolor_intensity", None, ("Recolor",), resolution=False,
           slider_1=Slider("Gamma Correction", 0.1, 2.0, 1.0, 0.001, option="gamma")),
    _ip_adapter("ip-adapter_clip_sd15", "ip-adapter_clip_h"), _ip_adapter("ip-adapter_clip_sdxl", "ip-adapter_clip_g"),
    _ip_adapter("ip-adapter_clip_sdxl_plus_vith"), _ip_adapter("ip-adapter-auto"),
)
_BY_NAME = {**{m.label: m for m in MODULES}, **{m.name: m for m in MODULES}}
# Substrings of a ControlNet's name that tell its control type (the extension's model filters).
_TYPE_HINTS = (("canny", ControlType.canny), ("depth", ControlType.depth), ("normal", ControlType.normal),
               ("lineart", ControlType.lineart), ("softedge", ControlType.softedge), ("hed", ControlType.softedge),
               ("pidi", ControlType.softedge), ("scribble", ControlType.scribble), ("sketch", ControlType.scribble),
               ("seg", ControlType.segmentation), ("pose", ControlType.openpose), ("tile", ControlType.tile),
               ("blur", ControlType.tile))
UNION_TYPES = {"openpose": ControlType.openpose, "depth": ControlType.depth, "soft edge": ControlType.softedge,
               "canny": ControlType.canny, "hard edge": ControlType.canny, "normal map": ControlType.normal,
               "segmentation": ControlType.segmentation, "tile": ControlType.tile}
RESIZE_MODES = ("Just Resize", "Crop and Resize", "Resize and Fill")
_RESIZE_ALIASES = {"Inner Fit (Scale to Fit)": 1, "Scale to Fit (Inner Fit)": 1, "Outer Fit (Shrink to Fit)": 2,
                   "Envelope (Outer Fit)": 2}
CONTROL_MODES = {"Balanced": "balanced", "My prompt is more important": "prompt", "ControlNet is more important": "control"}
# The flat form: 15 positional values per unit (the extension's ControlNetUnit of March and of May 2023).
_FLAT_MARCH = ("enabled", "module", "model", "weight", "image", "invert_image", "resize_mode", "rgbbgr_mode",
               "low_vram", "processor_res", "threshold_a", "threshold_b", "guidance_start", "guidance_end", "guess_mode")
_FLAT_MAY = ("enabled", "module", "model", "weight", "image", "resize_mode", "low_vram", "processor_res",
             "threshold_a", "threshold_b", "guidance_start", "guidance_end", "guess_mode", "pixel_perfect",
             "control_mode")
_ALIASES = {"input_image": "image", "lowvram": "low_vram", "guidance": "guidance_end", "mask_image": "mask"}
_HASH_SUFFIX = re.compile(r"\s*\[[0-9a-fA-F]{6,64}\]$")


def available_modules(preprocessors: set[str] | list[str], has_reference: bool) -> list[Module]:
    """The modules this server runs: those whose preprocessor it has (`preprocessors`: the
    engine's available ones), IP-Adapter modules when it can take reference images."""
    return [m for m in MODULES if (has_reference if m.reference else m.preprocessor in preprocessors)]


def find_module(name: Any) -> Module | None:
    return _BY_NAME.get(name) if isinstance(name, str) else None


# ---------------------------------------------------------------------------------------------
# Models, as the extension lists them: "name [hash]"


@dataclass(frozen=True)
class CatalogEntry:
    name: str  # ours (what the request names)
    title: str  # the extension's "stem [hash]"
    ip_adapter: bool
    type: str | None = None  # a configured default's control type


def catalog(items: list[dict[str, str]], dirs: list[Path], ip_adapter_default: str | None) -> list[CatalogEntry]:
    """security.list_controlnets' items as the extension lists its models. Blocking (reads files)."""
    entries = []
    for item in items:
        name = item["name"]
        path = next((Path(d) / name for d in dirs if (Path(d) / name).is_file()), None)
        digest = legacy_short_hash(path) if path is not None else name_hash(name)[:8]
        stem = Path(name).stem if path is not None else name
        is_adapter = item["kind"] == "ip_adapter" or name in BUILTIN_IP_ADAPTERS or name == ip_adapter_default
        entries.append(CatalogEntry(name, f"{stem} [{digest}]", is_adapter, item.get("type")))
    return entries


def find_model(text: str, entries: list[CatalogEntry]) -> CatalogEntry | None:
    """A model as a client names it: the listed title, or the name without (or with another) hash."""
    wanted = _HASH_SUFFIX.sub("", text.strip()).lower()
    for entry in entries:
        if text.strip() == entry.title or wanted in (entry.name.lower(), _HASH_SUFFIX.sub("", entry.title).lower()):
            return entry
    return None


# ---------------------------------------------------------------------------------------------
# Units


@dataclass
class A1111Unit:
    """One enabled unit, read and checked; its images decoded."""

    field: str  # "alwayson_scripts.<key>.args.<i>"
    module: Module
    module_text: str
    model_text: str
    model: CatalogEntry
    weight: float
    resize_mode: int
    processor_res: int
    threshold_a: float
    threshold_b: float
    guidance_start: float
    guidance_end: float
    pixel_perfect: bool
    control_mode: str  # the extension's label
    type: ControlType | None
    images: list[Image.Image] = field(default_factory=list)
    save_detected_map: bool = True

    def options(self, seed: int | None = None) -> dict[str, float]:
        return self.module.unit_options(self.threshold_a, self.threshold_b, seed)

    def infotext(self) -> str:
        """The extension's `ControlNet <i>` infotext value."""
        fields = {"Module": self.module_text, "Model": self.model_text, "Weight": float(self.weight),
                  "Resize Mode": RESIZE_MODES[self.resize_mode], "Processor Res": self.processor_res,
                  "Threshold A": float(self.threshold_a), "Threshold B": float(self.threshold_b),
                  "Guidance Start": float(self.guidance_start), "Guidance End": float(self.guidance_end),
                  "Pixel Perfect": self.pixel_perfect, "Control Mode": self.control_mode}
        return ", ".join(f"{k}: {v}" for k, v in fields.items())


@dataclass
class UnitContext:
    """What reading units needs from the server (gathered off the event loop)."""

    models: list[CatalogEntry]
    modules: list[Module]
    max_pixels: int


def unit_dicts(key: str, args: Any) -> list[tuple[str, dict[str, Any]]]:
    """(field prefix, unit dict) of every unit in `args`: dicts, or the flat positional form."""
    base = f"alwayson_scripts.{key}.args"
    if args is None:
        return []
    if not isinstance(args, list):
        raise InvalidRequest(f"{base} must be a list of ControlNet units", field=base)
    if args and isinstance(args[0], bool):
        units = []
        for start in range(0, len(args), len(_FLAT_MAY)):
            chunk = args[start:start + len(_FLAT_MAY)]
            layout = _FLAT_MARCH if len(chunk) > 5 and isinstance(chunk[5], bool) else _FLAT_MAY
            units.append((f"{base}.{start}", dict(zip(layout, chunk))))
        return units
    units = []
    for i, unit in enumerate(args):
        if unit is None:
            continue
        if not isinstance(unit, dict):
            raise InvalidRequest(f"{base}.{i} must be a ControlNet unit (an object)", field=f"{base}.{i}")
        units.append((f"{base}.{i}", unit))
    return units


def read_units(key: str, args: Any, ctx: UnitContext, init_image: Image.Image | None) -> list[A1111Unit]:
    """The enabled units of `args`, checked. Blocking (decodes images)."""
    units = []
    for prefix, raw in unit_dicts(key, args):
        values = _with_aliases(raw, prefix)
        if not _flag(values.get("enabled", False), f"{prefix}.enabled"):
            continue
        units.append(_read(values, prefix, ctx, init_image))
    controls = [u for u in units if not u.module.reference]
    references = [u for u in units if u.module.reference]
    if len(controls) > MAX_CONTROLS:
        raise InvalidRequest(f"at most {MAX_CONTROLS} enabled ControlNet units per call", field=f"alwayson_scripts.{key}.args")
    if len(references) > 1 and len({(u.model.name, u.weight) for u in references}) > 1:
        raise Unsupported("IP-Adapter units in one call must share their model and weight (they become one set of "
                          "reference images)", field=references[1].field)
    if sum(len(u.images) for u in references) > MAX_REFERENCES:
        raise InvalidRequest(f"at most {MAX_REFERENCES} IP-Adapter images per call", field=references[-1].field + ".image")
    return units


def _with_aliases(raw: dict[str, Any], prefix: str) -> dict[str, Any]:
    values = dict(raw)
    for alias, name in _ALIASES.items():
        if alias in values:
            if name in values and values[name] not in (None, "") and values[alias] not in (None, ""):
                raise InvalidRequest(f"{prefix}: give either {alias!r} or {name!r}, not both", field=f"{prefix}.{alias}")
            value = values.pop(alias)
            if values.get(name) in (None, ""):
                values[name] = value
    return values


def _read(values: dict[str, Any], prefix: str, ctx: UnitContext, init_image: Image.Image | None) -> A1111Unit:
    module_text = values.get("module", "none")
    module = find_module(module_text)
    if module is None or module not in ctx.modules:
        raise A1111Error(f"module({module_text}) not found in supported modules.", status=422, field=f"{prefix}.module",
                         message=f"module {module_text!r} is not available here; GET /controlnet/module_list lists "
                                 "the ones this server runs" + (f" ({module_text} needs {module.estimator})"
                                                                if module is not None and module.needs_estimator else ""))
    model_text = values.get("model", "None")
    if not isinstance(model_text, str) or not model_text.strip() or model_text.strip().lower() == "none":
        raise A1111Error("You have not selected any ControlNet Model.", status=422, field=f"{prefix}.model")
    model = find_model(model_text, ctx.models)
    if model is None:
        raise A1111Error(f"model not found: {model_text}", status=404, field=f"{prefix}.model", code=ErrorCode.unknown_model,
                         message=f"ControlNet model {model_text!r} not found; GET /controlnet/model_list lists them")
    if model.ip_adapter != module.reference:
        what = "an IP-Adapter module (ip-adapter_*)" if model.ip_adapter else "a ControlNet model"
        raise InvalidRequest(f"{prefix}: model {model_text!r} needs {what}", field=f"{prefix}.module" if model.ip_adapter
                             else f"{prefix}.model")
    weight = _number(values.get("weight", 1.0), f"{prefix}.weight")
    if not 0 <= weight <= 2:
        raise InvalidRequest(f"{prefix}.weight must be between 0 and 2", field=f"{prefix}.weight")
    start = _number(values.get("guidance_start", 0.0), f"{prefix}.guidance_start")
    end = _number(values.get("guidance_end", 1.0), f"{prefix}.guidance_end")
    if not (0 <= start <= 1 and 0 <= end <= 1) or start > end:
        raise InvalidRequest(f"guidance_start({start}) and guidance_end({end}) must be in 0..1, start not after end",
                             field=f"{prefix}.guidance_start")
    processor_res, threshold_a, threshold_b = module.bounded(
        *(_number(values.get(name, -1), f"{prefix}.{name}") for name in ("processor_res", "threshold_a", "threshold_b")))
    unit = A1111Unit(
        field=prefix, module=module, module_text=module_text, model_text=model_text, model=model, weight=weight,
        resize_mode=_resize_mode(values.get("resize_mode", 1), f"{prefix}.resize_mode"),
        processor_res=processor_res, threshold_a=threshold_a, threshold_b=threshold_b,
        guidance_start=start, guidance_end=end,
        pixel_perfect=_flag(values.get("pixel_perfect", False), f"{prefix}.pixel_perfect"),
        control_mode=_control_mode(values, prefix), type=None,
        save_detected_map=_flag(values.get("save_detected_map", True), f"{prefix}.save_detected_map"))
    _refuse_unsupported(values, prefix, module)
    unit.type = _control_type(values, module, model, prefix)
    unit.images = _images(values, prefix, ctx.max_pixels, module, init_image)
    return unit


def _refuse_unsupported(values: dict[str, Any], prefix: str, module: Module) -> None:
    for name in ("advanced_weighting", "effective_region_mask", "ipadapter_input"):
        if values.get(name) not in (None, [], ""):
            raise Unsupported(f"{prefix}.{name} is not supported here", field=f"{prefix}.{name}")
    if values.get("input_mode", "simple") not in ("simple", "InputMode.SIMPLE"):
        raise Unsupported("batch and merge input modes are not supported: send the images in `image`",
                          field=f"{prefix}.input_mode")
    if values.get("hr_option", "Both") not in ("Both", None):
        raise Unsupported("ControlNet applies to both hires passes here (hr_option Both)", field=f"{prefix}.hr_option")
    if module.reference and values.get("mask") not in (None, ""):
        raise Unsupported("IP-Adapter masks are not supported", field=f"{prefix}.mask")


def _control_type(values: dict[str, Any], module: Module, model: CatalogEntry, prefix: str) -> ControlType | None:
    if module.reference:
        return None
    union = values.get("union_control_type")
    if isinstance(union, str) and union.strip().lower() not in ("", "unknown"):
        if union.strip().lower() not in UNION_TYPES:
            raise Unsupported(f"union_control_type {union!r} is not available: one of "
                              f"{', '.join(t.title() for t in UNION_TYPES)}", field=f"{prefix}.union_control_type")
        return UNION_TYPES[union.strip().lower()]
    if module.type is not None:
        return module.type
    if model.type in {t.value for t in ControlType}:
        return ControlType(model.type)
    lowered = model.name.lower()
    guessed = next((t for hint, t in _TYPE_HINTS if hint in lowered), None)
    if guessed is None and module.name == "invert":
        guessed = ControlType.lineart
    # A map whose kind no name tells is passed on as it is (`tile`); only Union models read the type.
    return guessed or ControlType.tile


def _images(values: dict[str, Any], prefix: str, max_pixels: int, module: Module,
            init_image: Image.Image | None) -> list[Image.Image]:
    """The unit's input images: `image` as a string, {"image", "mask"}, [image, mask] or a list of
    such dicts (several images: IP-Adapter); none: the img2img init image, as the extension does."""
    image, mask = values.get("image"), values.get("mask")
    if image in (None, "", []):
        if mask not in (None, ""):
            raise InvalidRequest(f"{prefix}.mask needs an image", field=f"{prefix}.mask")
        if init_image is None:
            raise A1111Error("controlnet is enabled but no input image is given", status=422, field=f"{prefix}.image")
        return [init_image]
    if isinstance(image, dict):
        pairs = [(image, f"{prefix}.image")]
    elif isinstance(image, list) and image and isinstance(image[0], dict):
        pairs = [(item, f"{prefix}.image.{i}") for i, item in enumerate(image)]
    elif isinstance(image, (list, tuple)) and len(image) == 2:
        pairs = [({"image": image[0], "mask": image[1]}, f"{prefix}.image")]
    elif isinstance(image, str):
        pairs = [({"image": image, "mask": mask}, f"{prefix}.image")]
    else:
        raise InvalidRequest(f"{prefix}.image must be a base64 image, {{image, mask}} or a list of them",
                             field=f"{prefix}.image")
    if len(pairs) > 1 and not module.reference:
        raise Unsupported("several images in one unit are for IP-Adapter modules; give each ControlNet its own unit",
                          field=f"{prefix}.image")
    images = []
    for item, where in pairs:
        if not isinstance(item, dict) or not isinstance(item.get("image"), str) or not item["image"]:
            raise InvalidRequest(f"{where} must hold a base64 image", field=where)
        picture = decode_b64_image(item["image"], where, max_pixels).convert("RGB")
        if isinstance(item.get("mask"), str) and item["mask"]:
            picture = _scribble_from_mask(picture, decode_b64_image(item["mask"], f"{prefix}.mask", max_pixels), prefix)
        images.append(picture)
    return images


def _scribble_from_mask(image: Image.Image, mask: Image.Image, prefix: str) -> Image.Image:
    """The extension's canvas rule: a mask that is neither (almost) empty nor (almost) full is a
    scribble drawn on the canvas, and becomes the input; otherwise the image is used."""
    if mask.size != image.size:
        raise InvalidRequest(f"{prefix}.mask must be the size of the image ({image.width}x{image.height})",
                             field=f"{prefix}.mask")
    channel = image_utils.mask_channel(mask)
    low, high = channel.getextrema()
    if high <= 5 or low >= 250:
        return image
    return channel.convert("RGB")


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise InvalidRequest(f"{where} must be a number", field=where)
    return float(value)


def _flag(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidRequest(f"{where} must be true or false", field=where)
    return value


def _resize_mode(value: Any, where: str) -> int:
    if isinstance(value, str):
        if value in _RESIZE_ALIASES:
            return _RESIZE_ALIASES[value]
        if value in RESIZE_MODES:
            return RESIZE_MODES.index(value)
        raise InvalidRequest(f"{where} must be one of {', '.join(RESIZE_MODES)} (or 0, 1, 2)", field=where)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value if value < len(RESIZE_MODES) else 0  # the extension: 3 (latent) and beyond are Just Resize
    raise InvalidRequest(f"{where} must be one of {', '.join(RESIZE_MODES)} (or 0, 1, 2)", field=where)


def _control_mode(values: dict[str, Any], prefix: str) -> str:
    where = f"{prefix}.control_mode"
    if "control_mode" not in values:
        guess = values.get("guess_mode", values.get("guessmode"))
        return "ControlNet is more important" if guess is True else "Balanced"
    value = values["control_mode"]
    labels = list(CONTROL_MODES)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(labels):
        return labels[value]
    if isinstance(value, str) and value in CONTROL_MODES:
        return value
    raise InvalidRequest(f"{where} must be one of {', '.join(labels)} (or 0, 1, 2)", field=where)


# ---------------------------------------------------------------------------------------------
# Maps


def pixel_perfect_resolution(image: Image.Image, width: int, height: int, resize_mode: int) -> int:
    """The extension's pixel-perfect preprocessor resolution: the image's short side scaled as the
    resize mode will scale it (to fit inside for Resize and Fill, to cover otherwise)."""
    scales = (height / image.height, width / image.width)
    scale = min(scales) if resize_mode == 2 else max(scales)
    return int(round(scale * min(image.width, image.height)))


def at_resolution(image: Image.Image, resolution: int) -> Image.Image:
    """The input scaled so that its short side is `resolution` (the extension's detector input)."""
    scale = resolution / min(image.width, image.height)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image if size == image.size else image.resize(size, Image.Resampling.LANCZOS)


def fit_map(image: Image.Image, width: int, height: int, resize_mode: int, *, nearest: bool = False) -> Image.Image:
    """A map fitted to the output size: Just Resize stretches, Crop and Resize covers and crops the
    centre, Resize and Fill fits inside and pads with black (no control there)."""
    resample = Image.Resampling.NEAREST if nearest else Image.Resampling.LANCZOS
    if image.size == (width, height):
        return image
    if resize_mode == 1:
        return ImageOps.fit(image, (width, height), resample)
    if resize_mode == 2:
        return ImageOps.pad(image, (width, height), resample, color=(0, 0, 0))
    return image.resize((width, height), resample)
