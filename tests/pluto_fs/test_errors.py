"""The error policy of pluto_fs/errors.py: every error class pluto_fs defines derives from PlutoError."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pluto_fs
from pluto_fs.errors import PlutoError


def test_every_error_class_in_pluto_fs_derives_from_pluto_error() -> None:
    strays = []
    for info in pkgutil.walk_packages(pluto_fs.__path__, "pluto_fs."):
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if (inspect.isclass(obj) and issubclass(obj, BaseException) and obj.__module__ == info.name
                    and not issubclass(obj, PlutoError)):
                strays.append(f"{info.name}.{name}")
    assert strays == []
