"""Project Texture's plan: everything a run needs, and the recipe stored on its results so
Regenerate repeats the run exactly (see texture_project.py)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from . import texture_views
from .conditioning import ControlSpec
from .views import ProjectionError, ViewCamera

RECIPE_VERSION = 1
FILL_MODES = ("NEIGHBOURS", "INPAINT")


class ProjectTextureError(Exception):
    """A projection that cannot start (no meshes, no UVs, bad views…); shown as-is."""


@dataclass
class Plan:
    """Everything a run needs (and its recipe stores)."""

    objects: list[str]
    cameras: list[ViewCamera]  # at the generated view size
    view_size: tuple[int, int]
    texture_size: int
    requests: list[dict[str, Any]]  # per view (one for the grid): txt2img with the view's seed and prompt
    fill_request: dict[str, Any]  # the UV-space inpaint's request (seed + object number)
    specs: list[ControlSpec] = field(default_factory=list)
    supersample: int = 2
    margin: int = 16
    fill: str = "NEIGHBOURS"
    consistent: bool = True
    grid: bool = False
    seam_blend: int = 8
    strength: float = 1.0
    views_done: int | None = None  # a recipe of a cancelled run: only its first views

    def recipe(self, views_done: int) -> dict[str, Any]:
        return {
            "version": RECIPE_VERSION, "objects": list(self.objects), "views_done": views_done,
            "cameras": [texture_views.camera_to_dict(c) for c in self.cameras], "view_size": list(self.view_size),
            "texture_size": self.texture_size, "requests": self.requests, "fill_request": self.fill_request,
            "specs": [texture_views.spec_to_dict(s) for s in self.specs], "supersample": self.supersample,
            "margin": self.margin, "fill": self.fill, "consistent": self.consistent, "grid": self.grid,
            "seam_blend": self.seam_blend, "strength": self.strength,
        }

    @classmethod
    def from_recipe(cls, data: dict[str, Any]) -> "Plan":
        if not isinstance(data, dict) or data.get("version") != RECIPE_VERSION:
            raise ProjectTextureError("This image's projection recipe is from another version of the add-on")
        try:
            return cls(
                objects=list(data["objects"]), cameras=[texture_views.camera_from_dict(c) for c in data["cameras"]],
                view_size=tuple(data["view_size"]), texture_size=int(data["texture_size"]), requests=list(data["requests"]),
                fill_request=dict(data["fill_request"]), specs=[texture_views.spec_from_dict(s) for s in data["specs"]],
                supersample=int(data["supersample"]), margin=int(data["margin"]), fill=data["fill"],
                consistent=bool(data["consistent"]), grid=bool(data["grid"]), seam_blend=int(data["seam_blend"]),
                strength=float(data["strength"]), views_done=data.get("views_done"),
            )
        except (KeyError, TypeError, ValueError, ProjectionError) as exc:
            raise ProjectTextureError(f"This image's projection recipe is incomplete ({exc})") from None

    @property
    def view_count(self) -> int:
        count = len(self.cameras)
        return count if self.views_done is None or self.grid else min(count, int(self.views_done))


def view_request(base: dict[str, Any], mode: str, plan: Plan) -> dict[str, Any]:
    """A view's request as sent: txt2img, or inpaint of the unpainted part (consistent views)."""
    request = json.loads(json.dumps(base))
    if mode == "inpaint":
        request.update(mode="inpaint", strength=plan.strength, mask={"blur": plan.seam_blend // 2, "invert": False})
    return request
