"""The compiled part of the project (everything else is in pyproject.toml).

`inference._clipped_box` makes a radiograph's preparation about a third faster; it is optional: where
no C compiler is found the install goes on and `inference.letterbox` does the same work in numpy."""

from setuptools import Extension, setup

setup(ext_modules=[Extension("inference._clipped_box", ["inference/_clipped_box.c"],
                             extra_compile_args=["-O3"], optional=True)])
