"""A1111's infotext written and read, and its model hashes (computed once, cached)."""

from __future__ import annotations

import hashlib
import json

from latentbridge import model_hash
from latentbridge.infotext import a1111_parameters, parse_parameters, split_sampler_name
from latentbridge.protocol import GenerationRequest

# As A1111 1.10 writes it (quoted values, a hires pass, LoRA and TI hashes, its version).
A1111_TEXT = """masterpiece, a castle <lora:detail:0.7>
on a hill
Negative prompt: blurry, lowres
Steps: 28, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 6.5, Seed: 1234, Size: 512x768, Model hash: abcdef1234, \
Model: dreamshaper_8, VAE hash: 735e4c3a44, VAE: vae-ft-mse, Denoising strength: 0.45, Clip skip: 2, Hires upscale: 2, \
Hires steps: 12, Hires upscaler: Latent (antialiased), Lora hashes: "detail: 0123456789ab", \
TI hashes: "easynegative: c74b4e810b03", Version: v1.10.1"""


def test_parse_reads_a1111s_infotext_as_its_png_info_does():
    res = parse_parameters(A1111_TEXT)
    assert res["Prompt"] == "masterpiece, a castle <lora:detail:0.7>\non a hill"
    assert res["Negative prompt"] == "blurry, lowres"
    assert (res["Steps"], res["Sampler"], res["Schedule type"], res["CFG scale"]) == ("28", "DPM++ 2M", "Karras", "6.5")
    assert (res["Size-1"], res["Size-2"]) == ("512", "768") and "Size" not in res
    assert res["Lora hashes"] == "detail: 0123456789ab" and res["Hires upscaler"] == "Latent (antialiased)"
    assert res["Version"] == "v1.10.1"
    # What A1111 fills in for fields an infotext leaves out.
    assert res["RNG"] == "GPU" and res["Hires sampler"] == "Use same sampler" and res["Masked area padding"] == 32
    # The older spelling carries the schedule in the sampler name.
    old = parse_parameters("a cat\nSteps: 20, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 1, Size: 512x512")
    assert (old["Sampler"], old["Schedule type"]) == ("DPM++ 2M", "Karras")
    assert parse_parameters("just a prompt, with a comma")["Prompt"] == "just a prompt, with a comma"
    assert parse_parameters("")["Prompt"] == ""
    assert split_sampler_name("Euler a", None)[0] == "Euler a"  # "a" is not a scheduler


def test_our_infotext_reads_back_as_the_request():
    request = GenerationRequest(prompt="bronze, verdigris", negative_prompt="blurry", seed=5, steps=12, guidance=6,
                                sampler="dpmpp_2m_sde", schedule="exponential", clip_skip=2, width=512, height=768,
                                loras=[{"name": "detail.safetensors", "weight": 0.7}],
                                hires={"scale": 1.5, "upscaler": "latent-antialiased", "steps": 8, "strength": 0.4})
    text = a1111_parameters(request, 5, {"Model hash": "abcdef1234", "Model": "dreamshaper_8"})
    res = parse_parameters(text)
    assert res["Prompt"] == "bronze, verdigris <lora:detail:0.7>"
    assert (res["Sampler"], res["Schedule type"], res["Steps"], res["Seed"], res["Clip skip"]) == \
        ("DPM++ 2M SDE", "Exponential", "12", "5", "2")
    assert (res["Size-1"], res["Size-2"], res["Model hash"], res["Model"]) == ("512", "768", "abcdef1234", "dreamshaper_8")
    assert (res["Hires upscale"], res["Hires steps"], res["Hires upscaler"], res["Denoising strength"]) == \
        ("1.5", "8", "Latent (antialiased)", "0.4")
    assert res["Version"] == "latentbridge"


def test_hashes_are_a1111s_and_computed_once(tmp_path, monkeypatch):
    weights = tmp_path / "model.safetensors"
    header = json.dumps({"__metadata__": {"ss_output_name": "detail", "ss_tag_frequency": '{"a": {"b": 1}}'},
                         "t": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}).encode()
    weights.write_bytes(len(header).to_bytes(8, "little") + header + b"\0\0\0\0")
    cache = model_hash.HashCache(tmp_path / "hashes.json")
    full = hashlib.sha256(weights.read_bytes()).hexdigest()
    assert cache.digest(weights) == full and model_hash.short(full) == full[:10]
    assert cache.digest(weights, "addnet") == hashlib.sha256(b"\0\0\0\0").hexdigest()  # after the header
    assert model_hash.safetensors_metadata(weights) == {"ss_output_name": "detail", "ss_tag_frequency": {"a": {"b": 1}}}
    calls = []
    monkeypatch.setattr(model_hash, "sha256_file", lambda *a: calls.append(a) or "x")
    again = model_hash.HashCache(tmp_path / "hashes.json")  # a new process reads the cache file
    assert again.digest(weights) == full and calls == []
    weights.write_bytes(weights.read_bytes() + b"more")  # a changed file is hashed again
    assert again.digest(weights) == "x" and len(calls) == 1
    folder = tmp_path / "diffusers-model"
    (folder / "unet").mkdir(parents=True)
    (folder / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"abc")
    (folder / "model_index.json").write_text("{}")
    monkeypatch.undo()
    expected = hashlib.sha256(f"unet/diffusion_pytorch_model.safetensors:{hashlib.sha256(b'abc').hexdigest()}".encode())
    assert model_hash.HashCache(None).digest(folder) == expected.hexdigest()
    assert model_hash.name_hash("tiny") == model_hash.name_hash("tiny") != model_hash.name_hash("tiny-sdxl")
