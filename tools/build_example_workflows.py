"""Write the graphs of ``example_workflows/`` in ComfyUI's UI format (what users drag in).

    python tools/build_example_workflows.py

Kept as code so that the graphs follow the nodes' inputs when they change; the thumbnails
beside them are screenshots of each graph loaded in ComfyUI's frontend
(tests/test_comfyui_browser.py writes them with MAMBAST_THUMBNAILS=1).

ComfyUI names a node pack's templates by their file names, so the files are named in words.
Every template runs as shipped once the Mamba-ST weights are installed: its pictures are
ComfyUI's own ``example.png`` and the pack's ``example_inputs/`` (copied into the input folder
at start), and a model it needs besides is declared with its download address, as the
frontend's missing-models dialog expects. No saved view: the frontend fits the graph to the
screen when it opens it.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "example_workflows"
VERSION = "0.1.0"


STYLE = "mambast_example_style.jpg"
SECOND_STYLE = "mambast_example_style_2.jpg"
CLIP = "mambast_example_frames.mp4"
CONTENT = "example.png"  # shipped in every ComfyUI's input folder
SD15 = {"name": "v1-5-pruned-emaonly-fp16.safetensors",
        "url": "https://huggingface.co/Comfy-Org/stable-diffusion-v1-5-archive/resolve/main/"
               "v1-5-pruned-emaonly-fp16.safetensors",
        "directory": "checkpoints"}
SDXL = {"name": "sd_xl_base_1.0.safetensors",
        "url": "https://huggingface.co/stabilityai/stable-diffusion-xl-base-1.0/resolve/main/sd_xl_base_1.0.safetensors",
        "directory": "checkpoints"}
# What the example style looks like, for the refining pass: the prompt keeps the diffusion model
# painting in the style instead of pulling the picture back towards a photograph.
STYLE_PROMPT = ("a painting with swirling blue and yellow brush strokes, thick oil paint, expressive impasto "
                "texture, vivid colours")
NEGATIVE_PROMPT = "photograph, smooth, blurry, low detail, text, watermark"
UPSCALER = {"name": "RealESRGAN_x4plus.safetensors",
            "url": "https://huggingface.co/Comfy-Org/Real-ESRGAN_repackaged/resolve/main/RealESRGAN_x4plus.safetensors",
            "directory": "upscale_models"}


@dataclass
class Node:
    id: int
    type: str
    pos: tuple[int, int]
    inputs: list[tuple[str, str]]
    outputs: list[tuple[str, str]]
    widgets: list
    size: tuple[int, int] = (300, 120)
    title: str | None = None
    links_in: dict[str, int] = field(default_factory=dict)
    links_out: dict[int, list[int]] = field(default_factory=dict)
    models: list[dict] = field(default_factory=list)

    def as_json(self, order: int) -> dict:
        core = not self.type.startswith("MambaST")
        node = {
            "id": self.id, "type": self.type, "pos": list(self.pos), "size": list(self.size), "flags": {},
            "order": order, "mode": 0,
            "inputs": [{"name": name, "type": kind, "link": self.links_in.get(name)} for name, kind in self.inputs],
            "outputs": [{"name": name, "type": kind, "slot_index": slot, "links": self.links_out.get(slot, [])}
                        for slot, (name, kind) in enumerate(self.outputs)],
            "properties": {"Node name for S&R": self.type,
                           "cnr_id": "comfy-core" if core else "mambast", "ver": "0.3.64" if core else VERSION},
            "widgets_values": self.widgets,
        }
        if self.title:
            node["title"] = self.title
        if self.models:
            node["properties"]["models"] = self.models
        return node


class Graph:
    def __init__(self):
        self.nodes: list[Node] = []
        self.links: list[list] = []

    def add(self, type_: str, pos, inputs=(), outputs=(), widgets=(), size=(300, 120), title=None) -> Node:
        node = Node(len(self.nodes) + 1, type_, pos, list(inputs), list(outputs), list(widgets), size, title)
        self.nodes.append(node)
        return node

    def connect(self, source: Node, slot: int, target: Node, input_name: str) -> None:
        link_id = len(self.links) + 1
        kind = source.outputs[slot][1]
        target_slot = [name for name, _ in target.inputs].index(input_name)
        self.links.append([link_id, source.id, slot, target.id, target_slot, kind])
        source.links_out.setdefault(slot, []).append(link_id)
        target.links_in[input_name] = link_id

    def as_json(self) -> dict:
        return {
            "id": str(uuid.uuid5(uuid.NAMESPACE_URL, "mambast/" + "/".join(n.type for n in self.nodes))),
            "revision": 0, "last_node_id": len(self.nodes), "last_link_id": len(self.links),
            "nodes": [node.as_json(order) for order, node in enumerate(self.nodes)],
            "links": self.links, "groups": [], "config": {}, "extra": {}, "version": 0.4,
        }


MODEL = ("model", "MAMBAST_MODEL")


def loader(graph: Graph, pos=(380, 0), width: int = 360) -> Node:
    # Room below the widgets for the status (a few lines and the download button), nothing under
    # it for 50 units: Vue-rendered nodes grow to their content.
    return graph.add("MambaSTLoader", pos, outputs=[MODEL], widgets=["official/", "auto", "auto"], size=(width, 250))


def load_image(graph: Graph, pos, file: str, title: str, height: int = 330) -> Node:
    return graph.add("LoadImage", pos, outputs=[("IMAGE", "IMAGE"), ("MASK", "MASK")], widgets=[file, "image"],
                     size=(300, height), title=title)


STYLIZE_INPUTS = [MODEL, ("content", "IMAGE"), ("style", "IMAGE"), ("mask", "MASK"), ("style_2", "IMAGE")]


def stylize(graph: Graph, pos, seed=42, strength=1.0, style_scale=1.0, colour="style", smoothing=0.0,
            feather=0, invert=False, second_weight=0.5, seams="off") -> Node:
    # Widgets in input order: seed (+ its control), shuffle, processing_size, strength, style_scale,
    # colour, temporal_smoothing, then the optional feather, invert_mask, style_2_weight, tile_size,
    # seam_smoothing.
    return graph.add("MambaSTStylize", pos, inputs=STYLIZE_INPUTS, outputs=[("image", "IMAGE")],
                     widgets=[seed, "fixed", True, 512, strength, style_scale, colour, smoothing, feather, invert,
                              second_weight, 0, seams], size=(340, 420))


def encode_style(graph: Graph, pos, scale=1.0) -> Node:
    return graph.add("MambaSTEncodeStyle", pos, inputs=[MODEL, ("image", "IMAGE")],
                     outputs=[("style", "MAMBAST_STYLE")], widgets=[scale], size=(280, 100))


def fuse(graph: Graph, pos, seed=42, strength=1.0, smoothing=0.0) -> Node:
    return graph.add("MambaSTFuse", pos, inputs=[MODEL, ("content", "MAMBAST_CONTENT"), ("style", "MAMBAST_STYLE")],
                     outputs=[("features", "MAMBAST_FEATURES")], widgets=[seed, "fixed", True, strength, smoothing],
                     size=(300, 220))


def save(graph: Graph, pos, prefix: str, width: int = 380) -> Node:
    return graph.add("SaveImage", pos, inputs=[("images", "IMAGE")], widgets=[prefix], size=(width, 420))


def stylize_from_images(graph: Graph, content_title: str = "Content", **options) -> tuple[Node, Node]:
    """The content and style images in the first column, the loader above an all-in-one Stylize
    node in the second: compact enough to open with its text drawn (the canvas stops drawing
    text below 60% zoom) on a 1600 x 1000 screen."""
    content = load_image(graph, (0, 0), CONTENT, content_title)
    style = load_image(graph, (0, 380), STYLE, "Style")
    model = loader(graph)
    node = stylize(graph, (380, 320), **options)
    graph.connect(model, 0, node, "model")
    graph.connect(content, 0, node, "content")
    graph.connect(style, 0, node, "style")
    return content, node


def all_in_one() -> Graph:
    graph = Graph()
    _, node = stylize_from_images(graph)
    out = save(graph, (780, 300), "mambast/stylized")
    graph.connect(node, 0, out, "images")
    return graph


def staged() -> Graph:
    graph = Graph()
    content = load_image(graph, (0, 0), CONTENT, "Content")
    style = load_image(graph, (0, 380), STYLE, "Style")
    model = loader(graph)
    encode_content = graph.add("MambaSTEncodeContent", (380, 320), inputs=[MODEL, ("image", "IMAGE")],
                               outputs=[("content", "MAMBAST_CONTENT")], widgets=["off"], size=(280, 100))
    style_node = encode_style(graph, (380, 500))
    fuse_node = fuse(graph, (780, 300))
    decode = graph.add("MambaSTDecode", (780, 570), inputs=[MODEL, ("features", "MAMBAST_FEATURES")],
                       outputs=[("image", "IMAGE")], size=(260, 80))
    out = save(graph, (1120, 300), "mambast/staged")
    for target in (encode_content, style_node, fuse_node, decode):
        graph.connect(model, 0, target, "model")
    graph.connect(content, 0, encode_content, "image")
    graph.connect(style, 0, style_node, "image")
    graph.connect(encode_content, 0, fuse_node, "content")
    graph.connect(style_node, 0, fuse_node, "style")
    graph.connect(fuse_node, 0, decode, "features")
    graph.connect(decode, 0, out, "images")
    return graph


def video_frames() -> Graph:
    graph = Graph()
    # The video preview grows with the clip: nothing under the Load Video node.
    video = graph.add("LoadVideo", (0, 0), outputs=[("VIDEO", "VIDEO")], widgets=[CLIP, "image"],
                      size=(300, 400), title="Content video")
    style = load_image(graph, (0, 470), STYLE, "One style for every frame")
    model = loader(graph)
    node = stylize(graph, (380, 320), smoothing=0.3)
    components = graph.add("GetVideoComponents", (780, 60), inputs=[("video", "VIDEO")],
                           outputs=[("images", "IMAGE"), ("audio", "AUDIO"), ("fps", "FLOAT")], size=(280, 90))
    create = graph.add("CreateVideo", (780, 300), inputs=[("images", "IMAGE"), ("audio", "AUDIO"), ("fps", "FLOAT")],
                       outputs=[("VIDEO", "VIDEO")], widgets=[30], size=(270, 100))
    out = graph.add("SaveVideo", (1090, 300), inputs=[("video", "VIDEO")],
                    widgets=["video/mambast", "auto", "auto"], size=(400, 420))
    graph.connect(video, 0, components, "video")
    graph.connect(model, 0, node, "model")
    graph.connect(components, 0, node, "content")
    graph.connect(style, 0, node, "style")
    graph.connect(node, 0, create, "images")
    graph.connect(components, 1, create, "audio")
    graph.connect(components, 2, create, "fps")
    graph.connect(create, 0, out, "video")
    return graph


def upscale() -> Graph:
    graph = Graph()
    _, node = stylize_from_images(graph)
    upscaler = graph.add("UpscaleModelLoader", (780, 120), outputs=[("UPSCALE_MODEL", "UPSCALE_MODEL")],
                         widgets=[UPSCALER["name"]], size=(320, 60))
    upscaler.models = [dict(UPSCALER)]
    upscale_node = graph.add("ImageUpscaleWithModel", (780, 300),
                             inputs=[("upscale_model", "UPSCALE_MODEL"), ("image", "IMAGE")],
                             outputs=[("IMAGE", "IMAGE")], size=(240, 50))
    out = save(graph, (1140, 300), "mambast/upscaled")
    graph.connect(upscaler, 0, upscale_node, "upscale_model")
    graph.connect(node, 0, upscale_node, "image")
    graph.connect(upscale_node, 0, out, "images")
    return graph


def diffusion_refine(graph: Graph, image: Node, checkpoint: dict, x: int, denoise: float, steps: int, cfg: float,
                     prefix: str, note: str, note_title: str) -> None:
    """``image`` through a low-denoise img2img pass of a diffusion checkpoint, then saved: VAE
    Encode, KSampler with a prompt describing the style, VAE Decode. Laid out in three columns
    from ``x``, compact enough for the frontend to draw the whole graph legibly."""
    encode = graph.add("VAEEncode", (x, 300), inputs=[("pixels", "IMAGE"), ("vae", "VAE")],
                       outputs=[("LATENT", "LATENT")], size=(220, 50))
    loader_node = graph.add("CheckpointLoaderSimple", (x, 420), outputs=[("MODEL", "MODEL"), ("CLIP", "CLIP"),
                                                                       ("VAE", "VAE")],
                            widgets=[checkpoint["name"]], size=(260, 100), title="Diffusion checkpoint")
    loader_node.models = [dict(checkpoint)]
    positive = graph.add("CLIPTextEncode", (x + 280, 180), inputs=[("clip", "CLIP")],
                         outputs=[("CONDITIONING", "CONDITIONING")], widgets=[STYLE_PROMPT], size=(260, 160),
                         title="Describe the style")
    negative = graph.add("CLIPTextEncode", (x + 280, 380), inputs=[("clip", "CLIP")],
                         outputs=[("CONDITIONING", "CONDITIONING")], widgets=[NEGATIVE_PROMPT], size=(260, 110),
                         title="Negative")
    sampler = graph.add("KSampler", (x + 560, 180), inputs=[("model", "MODEL"), ("positive", "CONDITIONING"),
                                                           ("negative", "CONDITIONING"), ("latent_image", "LATENT")],
                        outputs=[("LATENT", "LATENT")],
                        widgets=[42, "fixed", steps, cfg, "dpmpp_2m", "karras", denoise], size=(250, 270),
                        title=f"Refine (denoise {denoise})")
    decode = graph.add("VAEDecode", (x + 560, 490), inputs=[("samples", "LATENT"), ("vae", "VAE")],
                       outputs=[("IMAGE", "IMAGE")], size=(220, 50))
    out = graph.add("SaveImage", (x + 560, 590), inputs=[("images", "IMAGE")], widgets=[prefix], size=(250, 280))
    graph.add("Note", (x, 560), widgets=[note], size=(520, 130), title=note_title)
    graph.connect(image, 0, encode, "pixels")
    graph.connect(loader_node, 2, encode, "vae")
    graph.connect(loader_node, 0, sampler, "model")
    graph.connect(loader_node, 1, positive, "clip")
    graph.connect(loader_node, 1, negative, "clip")
    graph.connect(positive, 0, sampler, "positive")
    graph.connect(negative, 0, sampler, "negative")
    graph.connect(encode, 0, sampler, "latent_image")
    graph.connect(sampler, 0, decode, "samples")
    graph.connect(loader_node, 2, decode, "vae")
    graph.connect(decode, 0, out, "images")


def refine() -> Graph:
    """Stylize, then repair texture and add detail with SD 1.5 at low denoise."""
    graph = Graph()
    _, node = stylize_from_images(graph, seams="2 grids")
    diffusion_refine(graph, node, SD15, 780, denoise=0.35, steps=20, cfg=6.5, prefix="mambast/refined",
                     note="Stylize first, then let SD 1.5 repaint at low denoise: 0.3-0.45 keeps the style and the "
                          "layout and cleans up the patch texture; above 0.5 the checkpoint's own look takes over. "
                          "Describe the style in the prompt so the model keeps painting in it.",
                     note_title="How much to refine")
    return graph


def hires_fix() -> Graph:
    """Stylize at 512 px, upscale 2x, then an SDXL pass at low denoise: a "hires fix"."""
    graph = Graph()
    _, node = stylize_from_images(graph, seams="2 grids")
    scale = graph.add("ImageScaleBy", (780, 160), inputs=[("image", "IMAGE")], outputs=[("IMAGE", "IMAGE")],
                      widgets=["lanczos", 2.0], size=(260, 90), title="Upscale 2x (to 1024 px)")
    graph.connect(node, 0, scale, "image")
    diffusion_refine(graph, scale, SDXL, 780, denoise=0.3, steps=25, cfg=6.0, prefix="mambast/hires",
                     note="Stylize at 512 px (the model's training size), upscale, then SDXL adds the detail the "
                          "larger size needs. Keep denoise at 0.25-0.4 so the strokes stay Mamba-ST's; an upscale "
                          "model (see the upscale template) instead of Upscale Image By gives a sharper start.",
                     note_title="Hires fix")
    return graph


def masked() -> Graph:
    """A square in the middle as the mask, made by core nodes so the template runs as shipped; a
    note says how to paint one's own instead (LoadImage's MASK output, after the MaskEditor)."""
    graph = Graph()
    _, node = stylize_from_images(graph, "Content", strength=0.8, colour="keep content", feather=24)
    canvas = graph.add("SolidMask", (780, 0), outputs=[("MASK", "MASK")], widgets=[0.0, 512, 512],
                       size=(270, 110), title="Mask canvas (black: keep the content)")
    square = graph.add("SolidMask", (780, 160), outputs=[("MASK", "MASK")], widgets=[1.0, 256, 256],
                       size=(270, 110), title="Stylized area (white)")
    mask = graph.add("MaskComposite", (1100, 0), inputs=[("destination", "MASK"), ("source", "MASK")],
                     outputs=[("MASK", "MASK")], widgets=[128, 128, "add"], size=(270, 130))
    graph.add("Note", (780, 760), widgets=["Your own mask: right-click the Content image > Open in MaskEditor, "
                                           "paint the area to stylize, then connect the Content node's MASK "
                                           "output to the mask input of MambaST Stylize. The mask is resized "
                                           "to the picture."], size=(380, 110), title="Paint your own mask")
    out = save(graph, (780, 320), "mambast/masked")
    graph.connect(canvas, 0, mask, "destination")
    graph.connect(square, 0, mask, "source")
    graph.connect(mask, 0, node, "mask")
    graph.connect(node, 0, out, "images")
    return graph


def style_blend() -> Graph:
    graph = Graph()
    # Three pictures in the first column, a little shorter, so that the graph opens with its text drawn.
    content = load_image(graph, (0, 0), CONTENT, "Content", height=290)
    style_a = load_image(graph, (0, 340), STYLE, "Style A", height=290)
    style_b = load_image(graph, (0, 680), SECOND_STYLE, "Style B", height=290)
    model = loader(graph, (340, 0), width=320)
    encode_content = graph.add("MambaSTEncodeContent", (340, 320), inputs=[MODEL, ("image", "IMAGE")],
                               outputs=[("content", "MAMBAST_CONTENT")], widgets=["off"], size=(280, 100))
    encoded_a = encode_style(graph, (340, 500))
    encoded_b = encode_style(graph, (340, 680), scale=2.0)
    blend = graph.add("MambaSTStyleBlend", (700, 680), inputs=[("style_a", "MAMBAST_STYLE"),
                                                              ("style_b", "MAMBAST_STYLE")],
                      outputs=[("style", "MAMBAST_STYLE")], widgets=[0.4, 42, "fixed"], size=(280, 130))
    fuse_node = fuse(graph, (700, 320), strength=0.9)
    decode = graph.add("MambaSTDecode", (1020, 320), inputs=[MODEL, ("features", "MAMBAST_FEATURES")],
                       outputs=[("image", "IMAGE")], size=(260, 80))
    keep = graph.add("MambaSTKeepContentColour", (1020, 450), inputs=[("content", "IMAGE"), ("stylized", "IMAGE")],
                     outputs=[("image", "IMAGE")], size=(280, 80))
    out = save(graph, (1340, 320), "mambast/blend", width=340)
    for target in (encode_content, encoded_a, encoded_b, fuse_node, decode):
        graph.connect(model, 0, target, "model")
    graph.connect(content, 0, encode_content, "image")
    graph.connect(style_a, 0, encoded_a, "image")
    graph.connect(style_b, 0, encoded_b, "image")
    graph.connect(encoded_a, 0, blend, "style_a")
    graph.connect(encoded_b, 0, blend, "style_b")
    graph.connect(encode_content, 0, fuse_node, "content")
    graph.connect(blend, 0, fuse_node, "style")
    graph.connect(fuse_node, 0, decode, "features")
    graph.connect(content, 0, keep, "content")
    graph.connect(decode, 0, keep, "stylized")
    graph.connect(keep, 0, out, "images")
    return graph


# File name (the template's title in ComfyUI) -> graph.
WORKFLOWS = {
    "Stylize a picture (all in one)": all_in_one,
    "Stylize step by step (staged nodes)": staged,
    "Stylize a video with one style": video_frames,
    "Stylize then upscale 4x": upscale,
    "Stylize inside a mask, keeping the colours": masked,
    "Blend two styles": style_blend,
    "Stylize then refine with SD 1.5": refine,
    "Stylize, upscale and refine with SDXL (hires fix)": hires_fix,
}


def main() -> None:
    OUT.mkdir(exist_ok=True)
    for stale in set(OUT.glob("*.json")) - {OUT / f"{name}.json" for name in WORKFLOWS}:
        stale.unlink()
        print(f"removed {stale.name}")
    for name, build in WORKFLOWS.items():
        (OUT / f"{name}.json").write_text(json.dumps(build().as_json(), indent=1) + "\n")
        print(f"wrote {name}.json")


if __name__ == "__main__":
    main()
