"""A1111's prompt conventions: extra networks in the prompt (`<lora:name:0.8>`) and prompt styles.

A1111 takes every `<kind:args>` tag out of the prompt before encoding it. `lora` (and its old
spelling `lyco`) tags become our request's LoRAs; hypernetworks are refused (this server has none);
tags of other kinds are dropped, as A1111 drops networks it does not know. Styles come from an
A1111 styles.csv (name, prompt, negative_prompt); a style's text replaces `{prompt}` in it, or is
appended after a comma, as A1111 merges them; a style name the file does not have changes
nothing, as in A1111.
"""

from __future__ import annotations

import csv
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from ...protocol import LoraSpec, Unsupported

log = logging.getLogger(__name__)

_EXTRA_NETWORK = re.compile(r"<(\w+):([^>]+)>")
_LORA_KINDS = ("lora", "lyco")


def extract_networks(prompt: str, field: str = "prompt") -> tuple[str, list[LoraSpec]]:
    """The prompt without its `<kind:args>` tags, and the LoRAs they named (in order)."""
    loras: list[LoraSpec] = []

    def take(match: re.Match) -> str:
        kind, args = match.group(1).lower(), match.group(2).split(":")
        if kind in _LORA_KINDS:
            loras.append(_lora(args, field))
        elif kind == "hypernet":
            raise Unsupported(f"hypernetworks are not supported (<hypernet:{match.group(2)}> in the prompt)", field=field)
        else:
            log.info("ignoring extra network <%s:...> in a prompt: this server has none of that kind", kind)
        return ""

    text = _EXTRA_NETWORK.sub(take, prompt)
    if text != prompt:  # tidy what the tags leave behind: doubled spaces, a space before a comma
        text = re.sub(r"[ \t]+,", ",", re.sub(r"[ \t]{2,}", " ", text)).strip(" \t,")
    return text, loras


def _lora(args: list[str], field: str) -> LoraSpec:
    """<lora:name>, <lora:name:weight>, <lora:name:te:unet> or <lora:name:te=0.5:unet=0.8>."""
    name, rest = args[0].strip(), [a.strip() for a in args[1:]]
    positional = [a for a in rest if "=" not in a]
    named = dict(a.split("=", 1) for a in rest if "=" in a)
    try:
        te = float(named.get("te", positional[0] if positional else 1.0))
        unet = float(named.get("unet", positional[1] if len(positional) > 1 else te))
    except ValueError:
        raise Unsupported(f"<lora:{':'.join(args)}>: weights must be numbers", field=field) from None
    if unet != te:
        raise Unsupported(f"<lora:{name}>: separate text-encoder and UNet weights are not supported; give one weight",
                          field=field)
    return LoraSpec(name=name, weight=max(-4.0, min(4.0, te)))


@dataclass(frozen=True)
class Style:
    name: str
    prompt: str
    negative_prompt: str


def read_styles(path: Path | None) -> list[Style]:
    """The styles of an A1111 styles.csv (missing file: none)."""
    if path is None or not path.is_file():
        return []
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.DictReader(f, skipinitialspace=True))
    except (OSError, csv.Error, UnicodeDecodeError) as exc:
        log.warning("could not read the styles file %s: %s", path, exc)
        return []
    styles = []
    for row in rows:
        name = (row.get("name") or "").strip()
        if name:
            styles.append(Style(name, row.get("prompt") or row.get("text") or "", row.get("negative_prompt") or ""))
    return styles


def merge_style(style_text: str, prompt: str) -> str:
    if "{prompt}" in style_text:
        return style_text.replace("{prompt}", prompt)
    return ", ".join(part for part in (prompt.strip(), style_text.strip()) if part)


def apply_styles(prompt: str, negative: str, names: list[str] | None, styles: list[Style]) -> tuple[str, str]:
    by_name = {s.name: s for s in styles}
    for name in names or []:
        style = by_name.get(name)
        if style is not None:
            prompt, negative = merge_style(style.prompt, prompt), merge_style(style.negative_prompt, negative)
    return prompt, negative


def styles_file(settings) -> Path:
    return settings.styles_file or settings.data_dir / "styles.csv"
