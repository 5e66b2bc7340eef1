"""One base error per layer: every exception class transport defines derives from TransportError."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import transport
from transport.errors import TransportError


def test_every_error_class_in_transport_derives_from_transport_error() -> None:
    strays = []
    for info in pkgutil.walk_packages(transport.__path__, "transport."):
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if (inspect.isclass(obj) and issubclass(obj, BaseException) and obj.__module__ == info.name
                    and not issubclass(obj, TransportError)):
                strays.append(f"{info.name}.{name}")
    assert strays == []
