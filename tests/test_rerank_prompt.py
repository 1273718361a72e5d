"""The request (rerank/prompt.py): images as sent, re-encoded only when needed, and an unreadable one named."""
import pytest
from PIL import Image

from tests.rerank_runs import config, rerank
from vici_utils.u1652 import DatasetError


def test_an_unreadable_image_is_named(tiny, server):
    """Issue 12 (5): an unreadable image is named."""
    bad = tiny / "t_images" / "street0000_0.jpg"
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(DatasetError, match="street0000_0.jpg: cannot read this image"):
        rerank(config("gemini", server.url))


def test_original_images_with_an_unusual_format_are_sent_as_jpeg(tiny, server):
    """Issue 12: vlm_image_size None sends the file's own bytes; a format a VLM may not take is re-encoded at full
    size."""
    from vici_utils.rerank.prompt import image_bytes

    png, bmp = tiny / "a.png", tiny / "a.bmp"
    Image.new("RGB", (40, 30), (10, 200, 30)).save(png)
    Image.new("RGB", (40, 30), (10, 200, 30)).save(bmp)
    assert image_bytes(str(png), None).data == png.read_bytes() and image_bytes(str(png), None).mime == "image/png"
    converted = image_bytes(str(bmp), None)
    assert converted.mime == "image/jpeg" and Image.open(__import__("io").BytesIO(converted.data)).size == (40, 30)
    small = image_bytes(str(png), 20)
    assert small.mime == "image/jpeg" and Image.open(__import__("io").BytesIO(small.data)).size == (20, 15)
