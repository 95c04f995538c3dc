"""Scene controls in Blender: the ControlNet units the artist ticks (depth, normal, line art,
segmentation), their settings, the sub-panel that shows them, and the "Latent Bridge Control"
image of the maps a job sent.

Settings live in `scene.latentbridge_control` (one `LATENTBRIDGE_PG_controls`); the projection
settings hold a second set of their own (per-view depth/normal, see texture_ui.py). The ControlNet
of each unit is picked from the server's list (offered as you type; empty = the server's default
for that control type and the loaded model).
"""

from __future__ import annotations

from typing import Any

import bpy
from bpy.props import BoolProperty, EnumProperty, FloatProperty, IntProperty, PointerProperty, StringProperty

from . import conditioning, control_images
from .capture import CaptureError
from .controller import JobContext, controller

LABELS = {"depth": "Depth", "normal": "Normal", "edges": "Line Art", "segmentation": "Segmentation"}
TIPS = {
    "depth": "Depth from the render's Z pass: near white, far black (ControlNet depth)",
    "normal": "Normals from the render's Normal pass, in camera space (ControlNet normal, normalbae colours)",
    "edges": "Lines where objects or materials meet, depth jumps or surfaces crease (from the render's passes)",
    "segmentation": "A colour per object or material (ADE20K palette; an object's Pass Index picks its class)",
}
MODE_ITEMS = [
    ("balanced", "Balanced", "Prompt and control count alike"),
    ("prompt", "Prompt", "The prompt wins where they disagree (control fades in the deeper layers)"),
    ("control", "Control", "The control wins (also applied to the unconditional pass, so guidance strengthens it)"),
]
EDGE_TYPE_ITEMS = [
    ("lineart", "Line Art", "Send the lines as line-art control"),
    ("canny", "Canny", "Send the lines as canny-edge control"),
    ("softedge", "Soft Edge", "Send the lines as soft-edge (HED/PiDiNet) control"),
    ("scribble", "Scribble", "Send the lines as scribble control"),
]
IMAGE_MODES = ("img2img", "inpaint", "outpaint")


def _controlnet_names() -> list[str]:
    """ControlNets to offer: those the server says fit its model (hello) and those in its
    ControlNet folders (GET /api/v1/models)."""
    hello = controller.connection.server_hello if controller.connection is not None else None
    names = list(((hello or {}).get("capabilities") or {}).get("controlnets") or [])
    for entry in controller.controlnets:
        if entry.get("kind") != "builtin" and entry["name"] not in names:
            names.append(entry["name"])
    return names


def _controlnet_search(self: Any, context: Any, text: str) -> list[str]:
    return [n for n in _controlnet_names() if text.lower() in n.lower()]


class _UnitProps:
    weight: FloatProperty(name="Weight", default=1.0, min=0.0, max=2.0, soft_max=1.5,
                          description="How strongly this control steers the image (0 = not at all)")
    start: FloatProperty(name="Start", default=0.0, min=0.0, max=1.0, subtype="FACTOR",
                         description="Fraction of the steps at which the control starts")
    end: FloatProperty(name="End", default=1.0, min=0.0, max=1.0, subtype="FACTOR",
                       description="Fraction of the steps at which the control ends")
    mode: EnumProperty(name="Mode", items=MODE_ITEMS, default="balanced", description="What wins when prompt and control disagree")
    model: StringProperty(name="ControlNet", default="", search=_controlnet_search,
                          description="ControlNet on the server (pick from its list or type a name); empty: the server's default for this control")


class LATENTBRIDGE_PG_control_unit(_UnitProps, bpy.types.PropertyGroup):
    enabled: BoolProperty(name="Use", default=False, description="Send this control map with the next generation")


class LATENTBRIDGE_PG_control_unit_on(_UnitProps, bpy.types.PropertyGroup):
    enabled: BoolProperty(name="Use", default=True, description="Send this control map with every view")


class _ControlOptions:
    edge_type: EnumProperty(name="Send As", items=EDGE_TYPE_ITEMS, default="lineart",
                            description="The ControlNet type the line map is sent as")
    edge_width: IntProperty(name="Line Width", default=1, min=1, max=8, description="Width of the lines in pixels")
    segmentation_source: EnumProperty(
        name="Regions", default="object", description="What a colour region of the segmentation map is",
        items=[("object", "Objects", "A region per object"), ("material", "Materials", "A region per material")])
    normal_convention: EnumProperty(
        name="Normal Colours", default="controlnet", description="Colour convention of the normal map",
        items=[("controlnet", "ControlNet", "Red left, green up, blue towards the viewer (normalbae: ControlNet 1.1 and most SDXL models)"),
               ("dsine", "DSINE", "Red right, green down (models trained on raw DSINE normals)")])

    def specs(self, kinds: tuple[str, ...] = conditioning.CONTROL_KINDS) -> list[conditioning.ControlSpec]:
        """The ticked controls as specs, in unit order (raises ConditioningError on bad settings)."""
        out = []
        for kind in kinds:
            unit = getattr(self, kind)
            if not unit.enabled:
                continue
            out.append(conditioning.ControlSpec(
                kind=kind, control_type=self.edge_type if kind == "edges" else "", weight=unit.weight, start=unit.start,
                end=unit.end, mode=unit.mode, model=unit.model.strip(), edge_width=self.edge_width,
                segmentation_source=self.segmentation_source, normal_convention=self.normal_convention))
        return out


def _unit(kind: str, on: bool = False) -> Any:
    return PointerProperty(type=LATENTBRIDGE_PG_control_unit_on if on else LATENTBRIDGE_PG_control_unit,
                           name=LABELS[kind], description=TIPS[kind])


class LATENTBRIDGE_PG_controls(_ControlOptions, bpy.types.PropertyGroup):
    depth: _unit("depth")
    normal: _unit("normal")
    edges: _unit("edges")
    segmentation: _unit("segmentation")


class LATENTBRIDGE_PG_view_controls(_ControlOptions, bpy.types.PropertyGroup):
    """The projection's per-view controls: depth on by default."""

    depth: _unit("depth", on=True)
    normal: _unit("normal")
    edges: _unit("edges")


def scene_specs(scene: bpy.types.Scene, mode: str) -> list[conditioning.ControlSpec]:
    """The scene controls a Generate in `mode` sends (none for a flat tileable texture)."""
    if mode == "texture":
        return []
    try:
        return scene.latentbridge_control.specs()
    except conditioning.ConditioningError as exc:
        raise CaptureError(str(exc)) from None


def check_server(specs: list[conditioning.ControlSpec], wire_mode: str) -> None:
    """Refuse, before any render, controls the connected server said it cannot run."""
    conn = controller.connection
    hello = conn.server_hello if conn is not None else None
    if not specs or not hello:
        return
    caps = hello.get("capabilities") or {}
    model = (hello.get("model") or {}).get("name") or "its model"
    types = caps.get("control_types")
    if types is not None and not types:
        raise CaptureError(f"The server's model ({model}) takes no ControlNet: untick the scene controls or load a model that does")
    missing = sorted({s.control_type for s in specs} - set(types or ()))
    if types and missing:
        raise CaptureError(f"The server's model ({model}) takes no {', '.join(missing)} control")
    modes = caps.get("control_modes")
    if modes and wire_mode not in modes:
        raise CaptureError(f"The server runs ControlNet in {', '.join(modes)} only, not {wire_mode}")


def show_uploads(job: JobContext, uploads: conditioning.Uploads) -> None:
    """Main thread, when a job's uploads are ready: its maps into the "Latent Bridge Control"
    image (one `foreach_set` of pixels the worker prepared)."""
    if uploads.shown is not None and job.epoch == controller.epoch:
        control_images.show_pixels(uploads.shown, *uploads.shown_size, kind=", ".join(uploads.control_kinds))


# ------------------------------------------------------------------------------------ panel


def draw_controls(layout: bpy.types.UILayout, controls: Any, kinds: tuple[str, ...] = conditioning.CONTROL_KINDS) -> None:
    """The units of a controls set: a checkbox and weight each; their settings when ticked."""
    col = layout.column()
    for kind in kinds:
        unit = getattr(controls, kind)
        row = col.row(align=True)
        row.prop(unit, "enabled", text=LABELS[kind])
        sub = row.row(align=True)
        sub.active = unit.enabled
        sub.prop(unit, "weight", text="", slider=True)
        if not unit.enabled:
            continue
        box = col.box().column(align=True)
        row = box.row(align=True)
        row.prop(unit, "start", slider=True)
        row.prop(unit, "end", slider=True)
        box.prop(unit, "mode")
        box.prop(unit, "model", placeholder="Server Default", icon="NODETREE")
        if kind == "edges":
            row = box.row(align=True)
            row.prop(controls, "edge_type", text="")
            row.prop(controls, "edge_width")
        elif kind == "segmentation":
            box.prop(controls, "segmentation_source")
        elif kind == "normal":
            box.prop(controls, "normal_convention")


def _server_note() -> str:
    hello = controller.connection.server_hello if controller.connection is not None else None
    caps = (hello or {}).get("capabilities") or {}
    if hello and caps.get("control_types") is not None and not caps.get("control_types"):
        return f"The server's model ({(hello.get('model') or {}).get('name')}) takes no ControlNet"
    return ""


def draw_panel(layout: bpy.types.UILayout, context: bpy.types.Context) -> None:
    scene = context.scene
    settings = scene.latentbridge
    if settings.mode == "texture":
        layout.label(text="A flat tileable texture has no view to control:", icon="INFO")
        layout.label(text="use Project Texture for per-view depth", icon="BLANK1")
        return
    draw_controls(layout, scene.latentbridge_control)
    note = _server_note()
    if note:
        layout.label(text=note, icon="ERROR")
    if settings.mode in IMAGE_MODES and settings.source != "RENDER":
        layout.label(text="Maps come from the scene camera: they line up", icon="INFO")
        layout.label(text="with the source only if it shows that view", icon="BLANK1")
    image = bpy.data.images.get(control_images.CONTROL_IMAGE)
    if image is not None:
        layout.label(text=f"Last maps: “{control_images.CONTROL_IMAGE}” ({image.get(control_images.KIND_PROP, '')})", icon="IMAGE_DATA")


classes = (LATENTBRIDGE_PG_control_unit, LATENTBRIDGE_PG_control_unit_on, LATENTBRIDGE_PG_controls, LATENTBRIDGE_PG_view_controls)


def register() -> None:
    bpy.types.Scene.latentbridge_control = PointerProperty(
        type=LATENTBRIDGE_PG_controls, name="Latent Bridge Controls",
        description="ControlNet maps made from the scene's render passes")


def unregister() -> None:
    del bpy.types.Scene.latentbridge_control
