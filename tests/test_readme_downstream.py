"""The README's downstream-task example runs as written (tiny prior, step counts capped for speed)."""

import functools
import re
from pathlib import Path

import torch

import my3dgen_hf.personalization as personalization
from my3dgen_hf.personalization.editing import EditDirection
from test_personalization_helpers import identity_images, tiny_prior

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_block(heading: str) -> str:
    text = README.read_text()
    section = text[text.index(heading) :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def capped(fn, **caps):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return fn(*args, **{**kwargs, **caps})

    return wrapper


def test_readme_downstream_example_runs(tmp_path, monkeypatch):
    code = readme_block("## What a personalized prior is for")
    pipe = tiny_prior(0)
    pipe.add_identity_adapter("me", rank=1)
    images, labels = identity_images(3)
    anchors = pipe.get_ws(seed=[1, 2, 3], truncation_psi=1.0)
    EditDirection(direction=torch.nn.functional.normalize(torch.randn(pipe.generator.w_dim), dim=0), name="smile").save(tmp_path / "smile.safetensors")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(personalization, "pti_invert", capped(personalization.pti_invert, w_steps=2, tune_steps=2, progress=False))
    for name in ("inpaint", "super_resolve", "project_to_hull"):
        monkeypatch.setattr(personalization, name, capped(getattr(personalization, name), steps=2, progress=False))
    before = {k: v.clone() for k, v in pipe.generator.state_dict().items()}
    namespace = {"pipe": pipe, "images": images, "labels": labels, "anchors": anchors}
    exec(compile(code, "README.md", "exec"), namespace)
    R = pipe.generator.img_resolution
    assert (tmp_path / "pti_novel_view.png").is_file() and (tmp_path / "pti.mp4").stat().st_size > 0
    assert namespace["strip"].shape == (5, 3, 3, R, R)
    assert namespace["samples"].images.shape == (8, 3, R, R)
    assert namespace["filled"].shape == namespace["sharp"].shape == (1, 3, R, R)
    assert len(namespace["edited"]) == 3 and namespace["edits"].magnitudes[1] == 0.0
    after = pipe.generator.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # no task changed the personalized model
