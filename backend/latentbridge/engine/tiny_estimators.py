"""Built-in random estimators, made in code with no download: for tests and smoke runs.

`tiny-depth` has the architecture of Depth Anything V2 (the estimator the docs recommend): a DINOv2
backbone with a DPT neck and head, here 16 channels wide with 4 layers (~0.1 M parameters), and
a DPT image processor that resizes to 112 px (a multiple of the 14 px patch, aspect kept) with
ImageNet normalisation, as the real one does at 518 px. Its weights come from a fixed seed, so
every process builds the same estimator and gives the same depth map (on CPU). It estimates
nothing real: it exercises transformers' loading, processor, model and post-processing at a size
the test suite can afford. `save` writes it as `save_pretrained` does, so tests load it back
through the real folder-loading code.

`tiny-segmentation` has the architecture of SegFormer (a hierarchical transformer encoder and an
all-MLP decode head, two stages 8 and 16 channels wide, ~10 k parameters) with ADE20K's 150
classes, and a SegFormer image processor at 64 px; seeded the same way.
"""

from __future__ import annotations

from pathlib import Path

import torch

BUILTIN_ESTIMATORS = ("tiny-depth", "tiny-segmentation")
_SEED = 20240611
_INPUT_SIZE = 112  # pixels the processor resizes to (8 x 8 patches of 14 px)


def is_builtin(name: str) -> bool:
    return name in BUILTIN_ESTIMATORS


def build(name: str = "tiny-depth", *, depth_estimation_type: str = "relative"):
    """(model, image processor) with seeded random weights, in eval mode on the CPU.

    depth_estimation_type "relative" outputs disparity (larger = nearer), as Depth Anything V2
    does; "metric" outputs depth in metres (larger = farther), as its metric variants do."""
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config

    if not is_builtin(name):
        raise ValueError(f"unknown built-in estimator {name!r}: one of {', '.join(BUILTIN_ESTIMATORS)}")
    if name == "tiny-segmentation":
        return _build_segmentation()
    backbone = Dinov2Config(
        hidden_size=16,
        num_hidden_layers=4,
        num_attention_heads=2,
        intermediate_size=32,
        patch_size=14,
        image_size=_INPUT_SIZE,
        out_features=["stage1", "stage2", "stage3", "stage4"],
        reshape_hidden_states=False,  # the DPT neck reshapes the token sequences itself
    )
    config = DepthAnythingConfig(
        backbone_config=backbone,
        patch_size=14,
        reassemble_hidden_size=16,
        neck_hidden_sizes=[8, 16, 32, 64],
        fusion_hidden_size=16,
        head_hidden_size=8,
        depth_estimation_type=depth_estimation_type,
        max_depth=1 if depth_estimation_type == "relative" else 20,
    )
    # Building must not disturb the caller's global RNG, and must give the same weights each time.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_SEED)
        model = DepthAnythingForDepthEstimation(config)
        # transformers initialises with std 0.02, which leaves the final ReLU nearly always at 0
        # (a flat map); PyTorch's own layer initialisation gives a map that varies over the image.
        for module in model.modules():
            if module is not model and hasattr(module, "reset_parameters"):
                module.reset_parameters()
        torch.nn.init.constant_(model.head.conv3.bias, 0.5)
    model.eval()
    return model, _processor()


def _processor():
    import transformers

    # transformers 5 names the PIL implementation DPTImageProcessorPil (DPTImageProcessor needs
    # torchvision there); transformers 4 has only DPTImageProcessor. Both save the same config.
    cls = getattr(transformers, "DPTImageProcessorPil", None) or transformers.DPTImageProcessor
    return cls(
        do_resize=True,
        size={"height": _INPUT_SIZE, "width": _INPUT_SIZE},
        keep_aspect_ratio=True,
        ensure_multiple_of=14,
        resample=3,  # bicubic, as Depth Anything's processor
        do_rescale=True,
        do_normalize=True,
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
    )


ADE20K_CLASSES = 150
_SEGMENTATION_SIZE = 64


def _build_segmentation():
    import transformers
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    config = SegformerConfig(num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[8, 16],
                             patch_sizes=[7, 3], strides=[4, 2], num_attention_heads=[1, 2], mlp_ratios=[2, 2],
                             decoder_hidden_size=16, num_labels=ADE20K_CLASSES)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_SEED)
        model = SegformerForSemanticSegmentation(config)
        for module in model.modules():  # PyTorch's initialisation: class maps that vary over the image
            if module is not model and hasattr(module, "reset_parameters"):
                module.reset_parameters()
    model.eval()
    # transformers 5 names the PIL implementation SegformerImageProcessorPil; 4 has only SegformerImageProcessor.
    cls = getattr(transformers, "SegformerImageProcessorPil", None) or transformers.SegformerImageProcessor
    processor = cls(do_resize=True, size={"height": _SEGMENTATION_SIZE, "width": _SEGMENTATION_SIZE},
                    do_rescale=True, do_normalize=True, image_mean=[0.485, 0.456, 0.406],
                    image_std=[0.229, 0.224, 0.225], do_reduce_labels=False)
    return model, processor


def save(folder: str | Path, name: str = "tiny-depth", *, depth_estimation_type: str = "relative") -> Path:
    """Write the built-in estimator as a transformers folder (config.json, model.safetensors,
    preprocessor_config.json), loadable by AutoModelForDepthEstimation (tiny-depth) or
    AutoModelForSemanticSegmentation (tiny-segmentation) and AutoImageProcessor."""
    folder = Path(folder)
    model, processor = build(name, depth_estimation_type=depth_estimation_type)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder
