"""The browser's COCO RLE codec (frontend/static/js/rle.js) against pycocotools, run in real Chromium."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from tests.e2e.conftest import shot, sign_in

pytestmark = [pytest.mark.browser]


def _cases() -> list[dict]:
    rng = np.random.default_rng(7)
    cases = []
    for height, width, kind in [
        (1, 1, "full"),
        (7, 5, "noise"),
        (64, 48, "noise"),
        (300, 420, "blob"),
        (33, 17, "empty"),
    ]:
        if kind == "full":
            mask = np.ones((height, width), np.uint8)
        elif kind == "noise":
            mask = (rng.random((height, width)) > 0.55).astype(np.uint8)
        elif kind == "empty":
            mask = np.zeros((height, width), np.uint8)
        else:
            yy, xx = np.mgrid[:height, :width]
            mask = (((yy - 150) ** 2 + (xx - 200) ** 2) < 120**2).astype(np.uint8)
            mask[10:20, 400:] = 1
        rle = mask_utils.encode(np.asfortranarray(mask))
        cases.append(
            {"size": [height, width], "counts": rle["counts"].decode(), "mask": mask.ravel().tolist()}
        )
    return cases


def test_rle_codec_matches_pycocotools(page, live_server, user):
    sign_in(page, live_server)
    cases = _cases()
    result = page.evaluate(
        """async (cases) => {
            const rle = await import('/static/js/rle.js');
            return cases.map((c) => {
                const decoded = rle.decodeRle({size: c.size, counts: c.counts});
                const same = decoded.data.every((v, i) => v === c.mask[i]);
                const encoded = rle.encodeMask(Uint8Array.from(c.mask), c.size[0], c.size[1]);
                return {same, counts: encoded.counts, size: encoded.size};
            });
        }""",
        cases,
    )
    for case, got in zip(cases, result, strict=True):
        assert got["same"], case["size"]
        assert got["counts"] == case["counts"], case["size"]
        back = mask_utils.decode({"size": got["size"], "counts": got["counts"].encode()})
        assert np.array_equal(back.ravel(), np.asarray(case["mask"], np.uint8))
    page.goto(f"{live_server.url}/shortcuts/")
    shot(page, "shortcut-page")
    assert page.locator("main dl.keys").count() == 3
    assert not page.js_errors, json.dumps(page.js_errors)
