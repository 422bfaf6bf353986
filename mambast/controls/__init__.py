"""What artists turn, as arithmetic on pictures, tokens and seeds: style scale and mixing, the style
shuffle, style strength, temporal smoothing, colour, masks, seam smoothing and tiles.

Below the network: the functions that drive a model take it as an argument (type hints only), so
that the network can offer these controls itself (``MambaST.stylize``'s seam smoothing, styles at a
scale, mixes of styles)."""
