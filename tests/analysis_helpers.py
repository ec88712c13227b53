"""Shared by the analysis tests: a digits study to analyse and checks on the figures drawn."""

import struct

from lottery_kd.study import lottery
from tests.conftest import make_tiny_config


def _study(root, seed, variants="lt,weight_rewind,kd"):
    config = make_tiny_config()
    config.seed = seed
    config.lottery.variants = variants
    config.log.tensorboard = True  # the report's learning curves read these events
    workdir = root / f"seed{seed}"
    lottery.run(config, workdir, log=lambda *_: None)
    return workdir


def _png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path.name} is not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def _captured(monkeypatch):
    """The figures the plotting functions close, kept open for inspection (plt.close("all")
    still closes everything)."""
    import matplotlib.pyplot as plt
    figures, close = [], plt.close
    monkeypatch.setattr(plt, "close", lambda figure=None: close(figure)
                        if isinstance(figure, str) else figures.append(figure))
    return figures


def _beside(inner, outer):
    """Whether window extent `outer` lies wholly right of `inner` or wholly below it."""
    return outer.x0 >= inner.x1 or outer.y1 <= inner.y0
