"""Atlases: template, tissue maps, labels and the region table."""

from mambacontrol.atlas.atlas import (
    DEFAULT_ATLAS,
    DEFAULT_GRID,
    Atlas,
    Region,
    atlas_search_path,
    list_atlases,
    load_atlas,
)

__all__ = ["DEFAULT_ATLAS", "DEFAULT_GRID", "Atlas", "Region", "atlas_search_path", "list_atlases",
           "load_atlas"]
