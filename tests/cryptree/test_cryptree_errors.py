"""One base error per layer: every exception class cryptree defines derives from CryptreeError."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import cryptree
from cryptree.errors import CryptreeError


def test_every_error_class_in_cryptree_derives_from_cryptree_error() -> None:
    strays = []
    for info in pkgutil.walk_packages(cryptree.__path__, "cryptree."):
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if (inspect.isclass(obj) and issubclass(obj, BaseException) and obj.__module__ == info.name
                    and not issubclass(obj, CryptreeError)):
                strays.append(f"{info.name}.{name}")
    assert strays == []
