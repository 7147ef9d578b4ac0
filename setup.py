"""Build hook (everything else is in pyproject.toml): the preset cards in the top-level
``presets/`` folder are the single source; the wheel ships a copy as
``keras_ssl/presets/cards/*.json``, which ``keras_ssl.presets.registry`` reads when
installed (a source checkout reads ``presets/`` directly)."""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildPyWithPresetCards(build_py):
    def run(self):
        super().run()
        source = Path(__file__).resolve().parent / "presets"
        target = Path(self.build_lib) / "keras_ssl" / "presets" / "cards"
        target.mkdir(parents=True, exist_ok=True)
        for card in sorted(source.glob("*.json")):
            shutil.copyfile(card, target / card.name)


setup(cmdclass={"build_py": BuildPyWithPresetCards})
