"""Import every public module of a sub-package so its fairseq registrations run."""
import importlib
import os


def import_submodules(package_name: str, package_file: str) -> None:
    """Import ``package_name.<module>`` for each ``*.py`` beside ``package_file`` not starting with ``_``."""
    for file_name in sorted(os.listdir(os.path.dirname(package_file))):
        if file_name.endswith(".py") and not file_name.startswith("_"):
            importlib.import_module(f"{package_name}.{file_name[:-3]}")
