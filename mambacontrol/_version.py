import platform

__version__ = "0.1.0"

PACKAGES = ("mambacontrol", "torch", "monai", "numpy", "scipy", "nibabel", "diffusers",
            "torch-geometric", "antspyx", "matplotlib", "jinja2")


def package_versions(packages=PACKAGES) -> dict[str, str]:
    """Installed version of each package (``"not installed"`` when absent), plus Python's."""
    import importlib.metadata  # lazy: ~80 ms, and `import mambacontrol` never needs it

    out = {"python": platform.python_version()}
    for name in packages:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out
