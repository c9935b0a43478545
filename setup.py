"""Only what pyproject.toml cannot say: a built wheel carries the repository's conf/ as tcx/conf, so
`pip install tcx-*.whl` works from any directory (an editable install reads conf/ in place)."""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildWithConf(build_py):
    def run(self):
        super().run()
        if not self.editable_mode:
            shutil.copytree(Path(__file__).parent / "conf", Path(self.build_lib) / "tcx" / "conf", dirs_exist_ok=True)


setup(cmdclass={"build_py": BuildWithConf})
