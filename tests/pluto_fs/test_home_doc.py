"""docs/FORMATS.md stays true for the home's config.json: the documented file is what `pluto init` writes.

Regenerate the block after a deliberate change:

    .venv/bin/python -m tests.pluto_fs.test_home_doc
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import asdict
from pathlib import Path

from pluto_fs.home import Config, Home
from tests.formats_doc import block, text_examples

CONFIG = Config(coordinator="127.0.0.1:7000")


def _written(config: Config) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        Home(Path(tmp)).save_config(config)
        return (Path(tmp) / "config.json").read_text()


def build() -> dict[str, tuple[str, str, str]]:
    """Every example: name -> (block kind, value, body as the doc shows it)."""
    text = _written(CONFIG)
    return {"home-config": ("json", text, text)}


def render() -> str:
    """The blocks as the doc holds them."""
    return "\n\n".join(block(kind, name, shown) for name, (kind, _, shown) in build().items())


DOC_TEXT = text_examples()


def test_the_doc_holds_exactly_the_config_the_code_writes() -> None:
    for name, (_, value, _) in build().items():
        assert DOC_TEXT.get(name) == value, f"docs/FORMATS.md example {name!r} differs from what the code writes"


def test_the_documented_config_reads_back_to_its_values(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(DOC_TEXT["home-config"])
    config = Home(tmp_path).config()
    assert config == CONFIG and (config.k, config.n, config.happy, config.slot_replicas) == (3, 5, 4, 5)
    assert set(json.loads(DOC_TEXT["home-config"])) == set(asdict(Config()))


if __name__ == "__main__":
    print(render())
