"""One module per architecture; importing this package registers every model
(each module in this folder is imported, so a new architecture is one new file)."""

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")
