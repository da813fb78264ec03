"""Contact sheets: grid layout and dots drawn at the paired pixels in the point's colour."""

from __future__ import annotations

import numpy as np
from PIL import Image

from selfsup_pcd.render.contact_sheet import contact_sheet, point_colors, save_png


def test_grid_and_dots(tmp_path):
    rgb = np.zeros((5, 8, 8, 3), dtype=np.uint8)
    rgb[3] = 50
    pairs = np.array([[0, 2, 5, 7], [3, 6, 1, 11]], dtype=np.int32)
    sheet = contact_sheet(rgb, pairs, columns=3, tile=80, dot_radius=0, gap=2)
    scale, cell = 10, 8 * 10 + 2
    assert sheet.shape == (2 * cell - 2, 3 * cell - 2, 3)
    assert (sheet[0, 80] == 255).all()  # white gap between tiles
    assert (sheet[cell + 10, 10] == 50).all()  # view 3 starts the second row
    colours = point_colors(np.array([7, 11]))
    assert (sheet[int(2.5 * scale), int(5.5 * scale)] == colours[0]).all()  # pixel centre of view 0
    assert (sheet[cell + int(6.5 * scale), int(1.5 * scale)] == colours[1]).all()
    assert not (colours[0] == colours[1]).all()
    path = save_png(tmp_path / "sub" / "sheet.png", sheet)
    assert np.array_equal(np.asarray(Image.open(path)), sheet)


def test_dots_at_exact_projections():
    rgb = np.zeros((1, 4, 4, 3), dtype=np.uint8)
    uv = np.zeros((1, 3, 2))
    uv[0, 2] = [3.25, 0.75]
    sheet = contact_sheet(rgb, np.array([[0, 0, 3, 2]]), points_uv=uv, tile=40, dot_radius=0)
    assert (sheet[7, 32] == point_colors(np.array([2]))[0]).all()
