"""Prompts that name the palette colour: a built-in style or the user's own prompt."""
from __future__ import annotations

from ..errors import UsageError

# {colour} is the nearest named colour of the palette entry. Built-in styles fill the frame
# edge to edge so the tile's mean colour is the subject's colour, not a background's.
STYLES = {
    "flowers": "a close-up photograph of {colour} flowers filling the whole frame, {colour} petals, "
               "{colour} colour palette, soft natural light, highly detailed",
    "fish": "a photograph of {colour} tropical fish filling the frame, {colour} scales, "
            "{colour} water, {colour} colour palette, sharp focus",
    "anime": "anime illustration, a character in {colour} clothes against a {colour} background, "
             "{colour} colour palette, clean line art, vibrant",
}
DEFAULT_NEGATIVE = "text, watermark, signature, frame, border, collage, blurry, low quality, jpeg artifacts"
CUSTOM_SUFFIX = ", {colour} colour palette, predominantly {colour}"


def template(style: str) -> str:
    """The prompt template of a style name, or the user's own prompt (which may place
    `{colour}` itself; otherwise the colour is appended)."""
    style = (style or "").strip()
    if not style:
        raise UsageError(f"--style must be one of {', '.join(STYLES)} or a prompt of your own")
    if style in STYLES:
        return STYLES[style]
    if "{" in style.replace("{colour}", "").replace("{color}", ""):
        raise UsageError("a custom --style prompt may only contain the placeholder {colour}")
    style = style.replace("{color}", "{colour}")
    return style if "{colour}" in style else style + CUSTOM_SUFFIX


def prompt_for(style: str, colour_name: str) -> str:
    return template(style).format(colour=colour_name)
