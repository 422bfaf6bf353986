"""The ComfyUI nodes (V3 schema): inputs, outputs, tooltips; the work is in ``stages``."""

from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from . import comfy as host
from . import stages

CATEGORY = "MambaST"
SEED_MAX = 0xFFFFFFFFFFFFFFFF

MambaSTModel = io.Custom("MAMBAST_MODEL")
MambaSTContent = io.Custom("MAMBAST_CONTENT")
MambaSTStyle = io.Custom("MAMBAST_STYLE")
MambaSTFeatures = io.Custom("MAMBAST_FEATURES")


def _schema(**fields) -> io.Schema:
    # search_aliases only exists in newer ComfyUI versions.
    aliases = fields.pop("search_aliases", None)
    if aliases and "search_aliases" in getattr(io.Schema, "__dataclass_fields__", {}):
        fields["search_aliases"] = aliases
    return io.Schema(category=CATEGORY, **fields)


def _model_input() -> io.Input:
    return MambaSTModel.Input("model", tooltip="A Mamba-ST model from the MambaST Loader node.")


def _seed_input() -> io.Input:
    return io.Int.Input("seed", default=0, min=0, max=SEED_MAX, control_after_generate=True,
                        tooltip="Seed of the style shuffle. The same seed gives the same picture; every "
                                "image of a batch uses it, so video frames do not flicker from reshuffling.")


def _shuffle_input() -> io.Input:
    return io.Boolean.Input("shuffle", default=True,
                            tooltip="Shuffle the style tokens, as the model was trained: the style's layout "
                                    "is forgotten and only its look is kept. Off copies more of the style's "
                                    "arrangement onto the content.")


class MambaSTLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return _schema(
            node_id="MambaSTLoader", display_name="MambaST Loader",
            description="Loads Mamba-ST weights from the models/mambast folder: a .safetensors file, or a "
                        "sub-folder holding the official decoder/embedding/mamba .pth files.",
            search_aliases=["style transfer", "mamba"],
            inputs=[
                io.Combo.Input("checkpoint", options=host.list_checkpoints(),
                               tooltip="Weights in models/mambast. Official release: put its three .pth files "
                                       "in a sub-folder (e.g. models/mambast/official/)."),
                io.Combo.Input("dtype", options=list(stages.DTYPE_CHOICES), default="auto",
                               tooltip="Precision of the dense layers; the selective scan always runs in float32. "
                                       "auto: half precision where the device profits from it."),
                io.Combo.Input("scan", options=list(stages.SCAN_CHOICES), default="auto",
                               tooltip="Selective-scan backend. auto: the mamba_ssm CUDA kernel when installed "
                                       "and on a CUDA GPU, else the built-in chunked scan. reference is slow."),
            ],
            outputs=[MambaSTModel.Output(display_name="model")],
        )

    @classmethod
    def execute(cls, checkpoint: str, dtype: str, scan: str) -> io.NodeOutput:
        return io.NodeOutput(stages.load_model(checkpoint, dtype, scan))


class MambaSTEncodeContent(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return _schema(
            node_id="MambaSTEncodeContent", display_name="MambaST Encode Content",
            description="Encodes the content image(s) with Mamba-ST's content encoder. Any size; an alpha "
                        "channel is carried through to the decoded image.",
            inputs=[_model_input(),
                    io.Image.Input("image", tooltip="The picture(s) to restyle; a batch is encoded image by image.")],
            outputs=[MambaSTContent.Output(display_name="content")],
        )

    @classmethod
    def execute(cls, model, image) -> io.NodeOutput:
        return io.NodeOutput(stages.encode_content(model, image))


class MambaSTEncodeStyle(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return _schema(
            node_id="MambaSTEncodeStyle", display_name="MambaST Encode Style",
            description="Encodes the style image(s) with Mamba-ST's style encoder. Reuse one encoding for a "
                        "whole batch of content frames; it is fitted to each content size once and cached.",
            inputs=[_model_input(),
                    io.Image.Input("image", tooltip="The painting or texture whose look to transfer. One image "
                                                    "styles every content image; or give one per content image.")],
            outputs=[MambaSTStyle.Output(display_name="style")],
        )

    @classmethod
    def execute(cls, model, image) -> io.NodeOutput:
        return io.NodeOutput(stages.encode_style(model, image))


class MambaSTFuse(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return _schema(
            node_id="MambaSTFuse", display_name="MambaST Fuse (MSTD)",
            description="The Mamba-ST Decoder: fuses content and style inside the selective scan (A, B and "
                        "the step from the shuffled style, C from the content).",
            inputs=[_model_input(),
                    MambaSTContent.Input("content", tooltip="From MambaST Encode Content."),
                    MambaSTStyle.Input("style", tooltip="From MambaST Encode Style."),
                    _seed_input(), _shuffle_input()],
            outputs=[MambaSTFeatures.Output(display_name="features")],
        )

    @classmethod
    def execute(cls, model, content, style, seed: int, shuffle: bool) -> io.NodeOutput:
        return io.NodeOutput(stages.fuse(model, content, style, seed, shuffle))


class MambaSTDecode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return _schema(
            node_id="MambaSTDecode", display_name="MambaST Decode",
            description="Turns fused features back into pixels with Mamba-ST's CNN decoder, at the content's "
                        "size, clamped to 0..1.",
            inputs=[_model_input(), MambaSTFeatures.Input("features", tooltip="From MambaST Fuse.")],
            outputs=[io.Image.Output(display_name="image")],
        )

    @classmethod
    def execute(cls, model, features) -> io.NodeOutput:
        return io.NodeOutput(stages.decode(model, features))


class MambaSTStylize(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return _schema(
            node_id="MambaSTStylize", display_name="MambaST Stylize",
            description="Paints the content image(s) in the style of the style image: encode, fuse and decode "
                        "in one node. Same result as the staged nodes for the same seed.",
            search_aliases=["style transfer", "stylize", "mamba"],
            inputs=[_model_input(),
                    io.Image.Input("content", tooltip="The picture(s) to restyle (a batch of frames is fine)."),
                    io.Image.Input("style", tooltip="The style: one image for all contents, or one per content."),
                    _seed_input(), _shuffle_input(),
                    io.Int.Input("processing_size", default=512, min=0, max=16384, step=8,
                                 tooltip="Shorter side, in pixels, at which the model works; the result is "
                                         "resized back to the content's size. Larger gives finer brush strokes "
                                         "relative to the picture. 0 works at the input size.")],
            outputs=[io.Image.Output(display_name="image")],
        )

    @classmethod
    def execute(cls, model, content, style, seed: int, shuffle: bool, processing_size: int) -> io.NodeOutput:
        return io.NodeOutput(stages.stylize(model, content, style, seed, shuffle, processing_size))


NODES: list[type[io.ComfyNode]] = [MambaSTLoader, MambaSTEncodeContent, MambaSTEncodeStyle, MambaSTFuse,
                                   MambaSTDecode, MambaSTStylize]


class MambaSTExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)
