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
    # search_aliases only exists in newer ComfyUI versions; older frontends (1.27, ComfyUI 0.3.64)
    # search node ids and display names only, so the display names carry the words too.
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


def _strength_input() -> io.Input:
    return io.Float.Input("strength", default=1.0, min=0.0, max=1.0, step=0.05,
                          tooltip="How much style: 1 is the full stylization, 0 the content as the model "
                                  "reconstructs it (no style work at all), values between blend the two.")


def _smoothing_input() -> io.Input:
    return io.Float.Input("temporal_smoothing", default=0.0, min=0.0, max=0.95, step=0.05,
                          tooltip="For video frames in a batch: blends each frame's features with the previous "
                                  "frame's to cut flicker further. 0 is off; higher is steadier but can smear "
                                  "fast motion.")


def _seam_smoothing_input() -> io.Input:
    return io.Combo.Input("seam_smoothing", options=list(stages.SEAM_SMOOTHING_CHOICES), default="off", optional=True,
                          tooltip="Softens the faint 8 px grid that Mamba-ST's patches can leave: the image is "
                                  "also stylized on token grids shifted by part of a patch and the results are "
                                  "blended. Each grid costs one more stylization (2 grids: about twice the time). "
                                  "off gives the paper's result.")


def _style_scale_input() -> io.Input:
    return io.Float.Input("style_scale", default=1.0, min=0.125, max=8.0, step=0.05,
                          tooltip="Size of the style relative to the content: above 1 zooms into the style "
                                  "(bigger brush strokes), below 1 repeats it smaller (finer texture).")


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
                                       "auto: float32, or bfloat16 on a CPU with native bfloat16 (AVX512-BF16, AMX) "
                                       "where it measures faster; half precision changes the picture. float16 or "
                                       "bfloat16 save memory."),
                io.Combo.Input("scan", options=list(stages.SCAN_CHOICES), default="auto",
                               tooltip="Selective-scan backend. auto: on a GPU the mamba_ssm kernel when installed, "
                                       "else our Triton kernel; on the CPU our Numba kernel when Numba is installed "
                                       "(pip install numba: 3-4x faster scans), else the built-in chunked scan. "
                                       "reference is slow."),
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
                    io.Image.Input("image", tooltip="The picture(s) to restyle; a batch is encoded image by image."),
                    _seam_smoothing_input()],
            outputs=[MambaSTContent.Output(display_name="content")],
        )

    @classmethod
    def execute(cls, model, image, seam_smoothing: str = "off") -> io.NodeOutput:
        return io.NodeOutput(stages.encode_content(model, image, seam_smoothing))


class MambaSTEncodeStyle(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return _schema(
            node_id="MambaSTEncodeStyle", display_name="MambaST Encode Style",
            description="The style image(s) for Mamba-ST's style encoder. The style is encoded when it is fused, "
                        "on the content's token grid (the size it is used at), once per content size, and reused "
                        "for a whole batch of content frames.",
            inputs=[_model_input(),
                    io.Image.Input("image", tooltip="The painting or texture whose look to transfer. One image "
                                                    "styles every content image; or give one per content image."),
                    _style_scale_input()],
            outputs=[MambaSTStyle.Output(display_name="style")],
        )

    @classmethod
    def execute(cls, model, image, style_scale: float = 1.0) -> io.NodeOutput:
        return io.NodeOutput(stages.encode_style(model, image, style_scale))


class MambaSTFuse(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return _schema(
            node_id="MambaSTFuse", display_name="MambaST Fuse (MSTD)",
            description="The Mamba-ST Decoder: fuses content and style inside the selective scan (A, B and "
                        "the step from the shuffled style, C from the content).",
            inputs=[_model_input(),
                    MambaSTContent.Input("content", tooltip="From MambaST Encode Content."),
                    MambaSTStyle.Input("style", lazy=True,
                                       tooltip="From MambaST Encode Style or MambaST Style Blend; not computed "
                                               "when strength is 0."),
                    _seed_input(), _shuffle_input(), _strength_input(), _smoothing_input()],
            outputs=[MambaSTFeatures.Output(display_name="features")],
        )

    @classmethod
    def check_lazy_status(cls, strength: float = 1.0, **inputs) -> list[str]:
        return stages.needed_style_inputs(strength, inputs)

    @classmethod
    def execute(cls, model, content, seed: int, shuffle: bool, strength: float = 1.0,
                temporal_smoothing: float = 0.0, style=None) -> io.NodeOutput:
        return io.NodeOutput(stages.fuse(model, content, style, seed, shuffle, strength, temporal_smoothing))


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
            node_id="MambaSTStylize", display_name="MambaST Stylize (Style Transfer)",
            description="Paints the content image(s) in the style of the style image: encode, fuse and decode "
                        "in one node, with every artist control. Same result as the staged nodes for the same "
                        "seed and settings.",
            search_aliases=["style transfer", "stylize", "mamba"],
            inputs=[_model_input(),
                    io.Image.Input("content", tooltip="The picture(s) to restyle (a batch of frames is fine)."),
                    io.Image.Input("style", lazy=True,
                                   tooltip="The style: one image for all contents, or one per content."),
                    _seed_input(), _shuffle_input(),
                    io.Int.Input("processing_size", default=512, min=0, max=16384, step=8,
                                 tooltip="Shorter side, in pixels, at which the model works on larger images; "
                                         "the result is resized back to the content's size. Larger gives finer "
                                         "brush strokes relative to the picture. Smaller images are never "
                                         "enlarged (beyond the 8 px the model needs). 0 works at the input size."),
                    _strength_input(), _style_scale_input(),
                    io.Combo.Input("colour", options=list(stages.COLOUR_MODES), default="style",
                                   tooltip="style: the style's colours. keep content: the style's strokes and "
                                           "light, the content's colours. match style to content: recolour the "
                                           "style to the content's palette before transferring it."),
                    _smoothing_input(),
                    io.Mask.Input("mask", optional=True,
                                  tooltip="Stylize only where the mask is white; elsewhere the content is "
                                          "untouched. Resized to the content if needed."),
                    io.Int.Input("feather", default=0, min=0, max=512, optional=True,
                                 tooltip="Softens the mask's edge inwards over about this many pixels."),
                    io.Boolean.Input("invert_mask", default=False, optional=True,
                                     tooltip="Stylize where the mask is black instead."),
                    io.Image.Input("style_2", optional=True, lazy=True,
                                   tooltip="A second style to mix with the first (see style_2_weight)."),
                    io.Float.Input("style_2_weight", default=0.5, min=0.0, max=1.0, step=0.05, optional=True,
                                   tooltip="Share of the second style in the mix: 0 only the first style, 1 only "
                                           "the second."),
                    io.Int.Input("tile_size", default=0, min=0, max=8192, step=8, optional=True,
                                 tooltip="For very large images or little memory: stylize in overlapping tiles "
                                         "of this many pixels, blended without seams. 0 works on the whole image "
                                         "and falls back to tiles by itself when memory runs out."),
                    _seam_smoothing_input()],
            outputs=[io.Image.Output(display_name="image")],
        )

    @classmethod
    def check_lazy_status(cls, strength: float = 1.0, style_2_weight: float = 0.5, **inputs) -> list[str]:
        return stages.needed_style_inputs(strength, inputs, style_2_weight)

    @classmethod
    def execute(cls, model, content, seed: int, shuffle: bool, processing_size: int, strength: float = 1.0,
                style_scale: float = 1.0, colour: str = "style", temporal_smoothing: float = 0.0, style=None,
                mask=None, feather: int = 0, invert_mask: bool = False, style_2=None,
                style_2_weight: float = 0.5, tile_size: int = 0, seam_smoothing: str = "off") -> io.NodeOutput:
        return io.NodeOutput(stages.stylize(
            model, content, style, seed, shuffle, processing_size, strength, style_scale, colour,
            temporal_smoothing, mask, feather, invert_mask, style_2, style_2_weight if style_2 is not None else 0.0,
            tile_size, seam_smoothing))


class MambaSTStyleBlend(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return _schema(
            node_id="MambaSTStyleBlend", display_name="MambaST Style Blend",
            description="Mixes two styles: the fused image draws a share of its style tokens from each. Chain "
                        "blends to mix more than two.",
            search_aliases=["mix styles"],
            inputs=[MambaSTStyle.Input("style_a", tooltip="First style (Encode Style or another blend)."),
                    MambaSTStyle.Input("style_b", tooltip="Second style."),
                    io.Float.Input("weight", default=0.5, min=0.0, max=1.0, step=0.05,
                                   tooltip="Share of style_b: 0 is only style_a, 1 only style_b."),
                    io.Int.Input("seed", default=0, min=0, max=SEED_MAX, control_after_generate=True,
                                 tooltip="Which tokens come from which style; the same seed gives the same mix.")],
            outputs=[MambaSTStyle.Output(display_name="style")],
        )

    @classmethod
    def execute(cls, style_a, style_b, weight: float, seed: int) -> io.NodeOutput:
        return io.NodeOutput(stages.blend_styles(style_a, style_b, weight, seed))


class MambaSTMaskComposite(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return _schema(
            node_id="MambaSTMaskComposite", display_name="MambaST Mask Composite",
            description="Shows the stylized image only inside the mask, over the untouched content.",
            inputs=[io.Image.Input("content", tooltip="The original content image."),
                    io.Image.Input("stylized", tooltip="The stylized image (same size)."),
                    io.Mask.Input("mask", tooltip="White: stylized. Black: content. Resized if needed."),
                    io.Int.Input("feather", default=0, min=0, max=512,
                                 tooltip="Softens the mask's edge inwards over about this many pixels."),
                    io.Boolean.Input("invert_mask", default=False, tooltip="Stylize where the mask is black.")],
            outputs=[io.Image.Output(display_name="image")],
        )

    @classmethod
    def execute(cls, content, stylized, mask, feather: int, invert_mask: bool) -> io.NodeOutput:
        return io.NodeOutput(stages.mask_composite(content, stylized, mask, feather, invert_mask))


class MambaSTKeepContentColour(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return _schema(
            node_id="MambaSTKeepContentColour", display_name="MambaST Keep Content Colour",
            description="Keeps the stylized image's strokes and light but gives it back the content's colours.",
            inputs=[io.Image.Input("content", tooltip="The original content image."),
                    io.Image.Input("stylized", tooltip="The stylized image (same size).")],
            outputs=[io.Image.Output(display_name="image")],
        )

    @classmethod
    def execute(cls, content, stylized) -> io.NodeOutput:
        return io.NodeOutput(stages.keep_colour(content, stylized))


class MambaSTMatchColour(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return _schema(
            node_id="MambaSTMatchColour", display_name="MambaST Match Style Colour",
            description="Recolours the style image to the content's palette (mean and covariance of its "
                        "colours) before encoding, so the style brings its texture but not its colours.",
            inputs=[io.Image.Input("style", tooltip="The style image to recolour."),
                    io.Image.Input("content", tooltip="The content whose colours to take (a batch is pooled).")],
            outputs=[io.Image.Output(display_name="style")],
        )

    @classmethod
    def execute(cls, style, content) -> io.NodeOutput:
        return io.NodeOutput(stages.match_style_colour(style, content))


NODES: list[type[io.ComfyNode]] = [MambaSTLoader, MambaSTEncodeContent, MambaSTEncodeStyle, MambaSTFuse,
                                   MambaSTDecode, MambaSTStylize, MambaSTStyleBlend, MambaSTMaskComposite,
                                   MambaSTKeepContentColour, MambaSTMatchColour]


class MambaSTExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)
