"""Every shipped model folder carries its model card (README.md, as a Hub repo would), the same text as in hub_cards/."""

from pathlib import Path

import pytest

from my3dgen_hf.assets import ASSETS, SHIPPED_MODELS

ROOT = Path(__file__).resolve().parents[1]
CARDS = {  # shipped folder -> its card in hub_cards/ (the identity encoder's card is its folder's own README)
    "demo-synthheads": "demo_synthheads.md",
    "demo-synthobjects": "demo_synthobjects.md",
    "synthobjects-clip": "synthobjects_clip.md",
}


@pytest.mark.parametrize("name", sorted(SHIPPED_MODELS))
def test_shipped_folder_has_a_card(name):
    readme = ASSETS / SHIPPED_MODELS[name] / "README.md"
    assert readme.is_file(), f"{readme} is missing"
    text = readme.read_text()
    assert len(text) > 500 and text.count("\n") > 10
    card = CARDS.get(SHIPPED_MODELS[name])
    if card is not None:
        assert text == (ROOT / "hub_cards" / card).read_text(), f"{readme} differs from hub_cards/{card}: copy it over"
